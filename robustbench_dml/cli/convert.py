"""Placeholder for `dmlbench convert` (being written)."""


def add_parser(sub):
    p = sub.add_parser("convert", help="(not yet available)")
    p.set_defaults(func=lambda args: print("not yet available") or 1)
