"""Devices, threads, seeds and version provenance: the process-level facts every result records."""

from __future__ import annotations

import contextlib
import os
import platform
import random
from collections.abc import Iterator

import numpy as np
import torch

from robustbench_dml.errors import UserError


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cuda`` without a GPU is a user error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices). Code paths still take explicit generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic(device: torch.device) -> Iterator[None]:
    """Deterministic kernels for the duration (restored afterwards). On the CPU the one non-deterministic
    kernel of our training was the accumulating index backward (``z[anc]`` with repeated indices, summed in
    thread-arrival order): with two threads three seed-0 trainings gave three weight hashes; with this, one.
    On CUDA kernels without a deterministic version only warn (``warn_only``)."""
    before, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn)


def generator(seed: int, *keys: int | str, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator seeded from ``seed`` and ``keys`` (e.g. attack id, batch index): independent of order."""
    import hashlib

    digest = hashlib.sha256(repr((seed, *keys)).encode()).digest()
    g = torch.Generator(device=device)
    g.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return g


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def set_threads(n: int | None = None) -> int:
    """One thread count for torch and faiss together (faiss shares the OpenMP runtime); never above the cores."""
    n = min(n or available_cores(), available_cores())
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except ImportError:  # pragma: no cover
        pass
    torch.set_num_threads(n)
    return n


def versions() -> dict[str, str]:
    from robustbench_dml import __version__

    out = {"robustbench_dml": __version__, "torch": torch.__version__, "numpy": np.__version__,
           "python": platform.python_version()}
    try:
        import faiss

        out["faiss"] = faiss.__version__
    except ImportError:  # pragma: no cover
        out["faiss"] = "absent"
    if torch.version.cuda:
        out["cuda"] = torch.version.cuda
    return out
