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


def dist_info() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) outside a torchrun process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_device(device: torch.device) -> torch.device:
    """The device this process computes on: under torchrun with several processes, a CUDA device is this rank's
    GPU (``LOCAL_RANK``; one GPU per process, as NCCL requires, whatever index was asked for); else ``device``."""
    if device.type == "cuda" and dist_info()[1] > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[bool]:
    """Join the process group for the duration when launched by torchrun (``WORLD_SIZE`` > 1; gloo on the CPU, NCCL
    on CUDA with this rank's GPU, ``LOCAL_RANK``), and leave it afterwards; inside a group that already exists (an
    outer call) do nothing. Yields whether several processes share the work. One group serves a whole command:
    joining a second time after leaving can reuse the launcher's stale rendezvous keys (gloo then fails to
    connect), so a command that trains and evaluates holds one group around both."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        yield dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        return
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield True
        dist.barrier()
    finally:
        dist.destroy_process_group()


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
