"""Argument groups and helpers shared by several subcommands."""

from __future__ import annotations

import argparse
import os
import sys


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")


def show_progress() -> bool:
    """Progress bars only on an interactive terminal, never in CI or logs."""
    return sys.stderr.isatty() and not os.environ.get("CI")
