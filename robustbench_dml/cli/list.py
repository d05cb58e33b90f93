"""``dmlbench list {datasets,backbones,defenses,attacks,suites}``: the registered ids (a suite also with its version,
the first 12 digits of its hash and what it is)."""

from __future__ import annotations

KINDS = ("datasets", "backbones", "defenses", "attacks", "suites")


def add_parser(sub) -> None:
    p = sub.add_parser("list", help="list registered datasets, backbones, defenses, attacks or suites")
    p.add_argument("kind", choices=KINDS)
    p.add_argument("pattern", nargs="?", default="*", help="glob filter, e.g. '*res*'")
    p.set_defaults(func=run)


def _registry(kind: str):
    if kind == "datasets":
        from robustbench_dml.datasets import DATASETS as reg
    elif kind == "backbones":
        from robustbench_dml.backbones import BACKBONES as reg
    elif kind == "defenses":
        from defenses import DEFENSES as reg
    elif kind == "attacks":
        from attacks import ATTACKS as reg
    else:
        from attacks.suites import SUITES as reg
    return reg


def run(args) -> int:
    reg = _registry(args.kind)
    if args.kind == "suites":  # the current version under its id, then the superseded ones, pinned
        from attacks.suites import suite_versions

        rows = []
        for name in reg.list(args.pattern):
            versions = suite_versions(name)
            rows += [(name if s is versions[-1] else s.name, s, s is not versions[-1]) for s in reversed(versions)]
        width = max((len(label) for label, _, _ in rows), default=0)
        for label, suite, old in rows:
            state = " (superseded)" if old else ""
            print(f"{label:<{width}}  version {suite.version}{state:<13}  {suite.hash[:12]}  {suite.description}")
        return 0
    for name in reg.list(args.pattern):
        print(name)
    return 0
