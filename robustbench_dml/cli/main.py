"""Entry point of ``dmlbench``. Subcommand modules register themselves with ``add_parser(subparsers)``.

Errors a user can fix (:class:`~robustbench_dml.errors.UserError`) are printed as one line, exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from robustbench_dml import __version__, numerics
from robustbench_dml.errors import UserError

SUBCOMMANDS = ("list", "train", "evaluate", "run", "submit", "leaderboard", "compare", "plot", "convert",
               "reproduce")


class OneLineParser(argparse.ArgumentParser):
    """argparse's usage errors as one line (what is wrong, where help is), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="dmlbench",
        description="Train, attack and rank adversarial-training defenses for deep metric learning.",
    )
    parser.add_argument("--version", action="version", version=f"dmlbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"robustbench_dml.cli.{name}").add_parser(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (what a batch scheduler sends before it kills a job), raised where the process is so that it unwinds
    as an interrupt does: state saved per epoch or attack, temporary files removed, nothing half-written."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    numerics.reproducible_cpu_blas()  # before any matrix product: MKL reads its mode once
    parser = build_parser()
    args = parser.parse_args(argv)
    import signal

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args.func(args) or 0)
    except Terminated:
        print("dmlbench: terminated (SIGTERM); run the same command again to resume", file=sys.stderr)
        return 143
    except UserError as e:
        print(f"dmlbench: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # unwritable, full or missing paths the user named
        where = f" {e.filename}" if e.filename else ""
        print(f"dmlbench: error: cannot access{where}: {e.strerror or e}; {_remedy(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dmlbench: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _remedy(e: OSError) -> str:
    """What to do about an operating-system error on a path the user named, by its cause."""
    import errno

    return {errno.ENOSPC: "free space or choose another path", errno.EDQUOT: "free space or choose another path",
            errno.EACCES: "choose a path you may write to", errno.EPERM: "choose a path you may write to",
            errno.EROFS: "choose a path on a writable file system",
            errno.EISDIR: "a folder is where a file is expected; rename that folder or choose another path",
            errno.ENOTDIR: "a file is where a folder is expected; rename that file or choose another path",
            errno.ENOENT: "create the missing folder or choose another path"}.get(e.errno, "choose another path")


if __name__ == "__main__":
    sys.exit(main())
