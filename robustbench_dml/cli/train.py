"""Placeholder for `dmlbench train` (being written)."""


def add_parser(sub):
    p = sub.add_parser("train", help="(not yet available)")
    p.set_defaults(func=lambda args: print("not yet available") or 1)
