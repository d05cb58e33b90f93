"""One line for any PyTorch embedding model: ``benchmark(model, dataset="digits")`` attacks it with a suite and
returns the scored result, as RobustBench's ``benchmark(model, dataset, threat_model)`` does for classifiers.

The input contract (checked before any attack, each breach a one-line :class:`UserError`):

- the model receives a float32 batch ``(B, C, H, W)`` of the dataset's test images in ``[0, 1]``, on ``device``: the
  dataset's channels and size (28x28, one channel, for digits, MNIST and Fashion-MNIST; 224x224, three channels, for
  CUB, Cars and SOP). **No normalisation is applied**: a model trained on standardised inputs must standardise in
  its own ``forward`` (the attacks' eps is in these [0, 1] pixel units);
- it returns a ``(B, D)`` float tensor of finite embeddings, ``D >= 2``, differentiable with respect to the input;
  the harness L2-normalises them (the metric is the Euclidean distance of normalised embeddings, RobRank's ``N``);
- it is put in eval mode for the evaluation (each submodule's mode is restored afterwards); its weights are never
  changed.

The result is an :class:`~robustbench_dml.results.EvaluationResult` (``result.ers``, ``result.ars``,
``result.to_json(path)``, ``result.publish(leaderboard_dir)``), identical to what ``dmlbench evaluate`` gives for
the same weights saved as a checkpoint.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn

from robustbench_dml.errors import UserError

__all__ = ["benchmark", "check_model"]


def check_model(model: nn.Module, dataset, device: torch.device) -> int:
    """Run the input contract (module docstring) on two test images; return the embedding size."""
    from attacks.pgd import eval_mode

    info = dataset.info
    x = torch.stack([torch.as_tensor(dataset[i][0]) for i in range(2)]).to(device).requires_grad_(True)
    shape = f"(2, {info.channels}, {info.image_size}, {info.image_size})"
    with eval_mode(model):
        try:
            z = model(x)
        except Exception as exc:  # noqa: BLE001 - any failure of user code is reported in one line
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(f"the model failed on a {shape} batch of {info.id} images in [0, 1] ({first}); it must "
                            f"take (B, {info.channels}, {info.image_size}, {info.image_size}) images in [0, 1] and "
                            "normalise them itself") from None
    if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[0] != 2 or not z.is_floating_point():
        got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise UserError(f"the model must return a (B, D) float tensor of embeddings; on a {shape} batch it returned "
                        f"{got}")
    if z.shape[1] < 2:
        raise UserError(f"the model's embeddings have {z.shape[1]} dimension; a ranking needs at least 2")
    if not torch.isfinite(z).all():
        raise UserError(f"the model returned non-finite embeddings on a {shape} batch of {info.id} test images")
    if not z.requires_grad:
        raise UserError("the model's embeddings do not depend differentiably on its input (no gradient reaches "
                        "the images); the attacks need the input gradient: do not detach or run it under no_grad")
    return int(z.shape[1])


def benchmark(model: nn.Module, dataset: str = "digits", *, suite: str | None = None, n_queries: int | None = None,
              attacks: list[str] | None = None, seed: int = 0, device: str = "auto", data_root: str | None = None,
              progress: bool | str | None = "auto", defense: str = "external", backbone: str | None = None,
              state_dir: str | None = None) -> Any:
    """Attack ``model`` (any ``nn.Module`` honouring the module docstring's contract) on ``dataset``'s test split with
    ``suite`` (default: the dataset's published one, ``rob28`` or ``rob224``) and return the
    :class:`~robustbench_dml.results.EvaluationResult`.

    ``n_queries``: attack only the first N test queries (the gallery stays whole); ``attacks``: a subset of the
    suite's attacks (both make the result a partial one, as on the command line). ``progress``: ``"auto"`` (a bar on
    a terminal, plain periodic lines otherwise), ``"bar"``, ``"log"`` or None (silent). ``defense`` and
    ``backbone`` name the model on a leaderboard (``backbone`` defaults to the class name). ``state_dir``: resume
    per attack, as ``dmlbench evaluate`` does.
    """
    from robustbench_dml import datasets
    from robustbench_dml.cli.evaluate import suite_for
    from robustbench_dml.evaluation import EvalConfig, evaluate, model_target
    from robustbench_dml.runtime import resolve_device

    if not isinstance(model, nn.Module):
        raise UserError(f"benchmark needs a torch.nn.Module, not {type(model).__name__}")
    if dataset not in datasets.DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; choose from {', '.join(datasets.list_datasets())}")
    suite = suite_for(dataset, suite)
    config = EvalConfig(suite, attacks=attacks, max_queries=n_queries, seed=seed)  # validated before any work
    dev = resolve_device(device)
    model = model.to(dev)
    test = datasets.create(dataset, root=data_root, split="test")
    dim = check_model(model, test, dev)
    if progress == "auto":
        progress = "bar" if sys.stderr.isatty() else "log"
    meta = {"dataset": dataset, "defense": defense, "backbone": backbone or type(model).__name__,
            "embedding_dim": dim, "defense_config": {}}
    return evaluate(model_target(model, meta, dataset=test), config, device=str(dev), state_dir=state_dir,
                    progress=progress or None)
