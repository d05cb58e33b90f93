"""``dmlbench convert``: bring a plain PyTorch state dict trained elsewhere into a checkpoint directory."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help="convert a plain state dict (.pt) into a checkpoint (safetensors + meta)",
                       description="Reads the file with torch.load(weights_only=True); nothing else is unpickled.")
    p.add_argument("state_dict", help="file written by torch.save(model.state_dict(), path), a RobRank or "
                                      "MDProp checkpoint, or a pytorch-metric-learning trunk's state dict")
    p.add_argument("--from", dest="layout", choices=("state_dict", "robrank", "mdprop", "pml"), default="state_dict",
                   help="state_dict (default: our keys), robrank (a RobRank / PyTorch Lightning checkpoint of "
                        "rc2f2, rres18 or rres50), mdprop (an MDProp checkpoint_*.pth.tar of its ResNet-50) or pml "
                        "(pytorch-metric-learning: the trunk's file here, the embedder's with --embedder); "
                        "backbone and embedding size are read from the file")
    p.add_argument("--embedder", help="with --from pml: the embedder's state dict (embedder_*.pth)")
    p.add_argument("--backbone", help="backbone id the weights belong to (needed for a plain state dict)")
    p.add_argument("--dataset", required=True, help="dataset id the model was trained for")
    p.add_argument("--embedding-dim", type=int, help="embedding size (default: the file's head, else 512)")
    p.add_argument("--key", help="entry of a nested dict holding the state dict (e.g. state_dict)")
    p.add_argument("--out", required=True, help="checkpoint directory to write (new or empty)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a checkpoint already in --out (a folder holding anything else is never touched)")
    p.set_defaults(func=run)


def run(args) -> int:
    from robustbench_dml import datasets
    from robustbench_dml.checkpoint import convert_state_dict

    out = convert_state_dict(args.state_dict, args.out, backbone=args.backbone, dataset=args.dataset,
                             channels=datasets.info(args.dataset).channels, embedding_dim=args.embedding_dim,
                             key=args.key, overwrite=args.overwrite,
                             layout=args.layout, embedder=args.embedder)
    print(out)
    return 0
