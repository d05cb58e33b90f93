"""The numeric policy of an evaluation: the floating-point settings that change attack results, set in one place
and recorded in every result.

An attack runs 32 sign-gradient steps and ranks the perturbed embedding against the whole gallery, so a setting
that changes a gradient's last bits can flip a step's sign and, with it, whether a query is broken. The settings
that matter:

- TF32 tensor cores for float32 matrix products (``torch.backends.cuda.matmul.allow_tf32``, equivalently
  ``torch.set_float32_matmul_precision("high")``) and for cuDNN convolutions (``torch.backends.cudnn.allow_tf32``,
  on by default in PyTorch): a 10-bit mantissa inside the products on Ampere and later GPUs;
- cuDNN's autotuner (``torch.backends.cudnn.benchmark``), which picks convolution algorithms by timing them, so two
  runs may sum in different orders;
- deterministic algorithms (``torch.use_deterministic_algorithms``, ``torch.backends.cudnn.deterministic``): the
  same bits on every run of one machine (on the CPU they also fix the accumulation order of index backward);
- the gallery's kNN backend; every backend returns neighbours in the order (distance, gallery index)
  (:mod:`robustbench_dml.knn`), so it changes speed, never results;
- on the CPU, the thread count: MKL (PyTorch's BLAS on x86-64) splits a matrix product's sums among threads, so
  ``nn.Linear`` gives other last bits at 1 and 2 threads, hence other gallery embeddings, benign metrics and attack
  steps, and a torchrun evaluation (one thread per process) differed from a one-process one.
  :func:`reproducible_cpu_blas` asks MKL for products whose bits do not depend on the thread count (its
  conditional numerical reproducibility, ``AUTO,STRICT``: the CPU's fastest code path; no slower measured on
  c2f2), and the benign metrics sum in a fixed order (:mod:`robustbench_dml.metrics`).

:data:`EXACT` (the default) runs float32 without TF32 or autotuning and with deterministic algorithms: it is the
policy under which a GPU evaluation reproduces the CPU's numbers within :data:`TOLERANCE` (``benchmarks/
device_check.py`` measures the difference on a lent GPU). :data:`FAST` turns TF32 and the autotuner on and the
determinism off, and runs convolutions in the channels-last layout; its results are marked ineligible for the
leaderboards (recorded as the override ``numerics``). The TF32 and cuDNN switches act on CUDA kernels only; on a
CPU the layout is what differs (oneDNN's NHWC convolutions sum in another order: embeddings within ~1e-7, so a
query near a rank boundary may fall the other way).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from robustbench_dml.errors import UserError

__all__ = ["NumericPolicy", "EXACT", "FAST", "POLICIES", "TRAINING", "TOLERANCE", "TIE_ORDER", "CPU_BLAS_MODE",
           "get_policy", "applied", "reproducible_cpu_blas", "cpu_blas_mode"]

#: the order of equal distances in every ranking, on every backend
TIE_ORDER = "(distance, gallery index) ascending"
#: MKL's conditional numerical reproducibility mode for the CPU's matrix products: the CPU's own code path
#: (``AUTO``), results independent of the thread count (``STRICT``)
CPU_BLAS_MODE = "AUTO,STRICT"
#: how far (ERS / ARS points) a GPU evaluation under :data:`EXACT` may differ from the CPU's on the same queries
TOLERANCE = 0.5


@dataclass(frozen=True)
class NumericPolicy:
    """One set of float settings (module docstring); ``name`` is what results and the CLI call it."""

    name: str
    matmul_tf32: bool
    cudnn_tf32: bool
    cudnn_benchmark: bool
    deterministic: bool
    knn_backend: str = "torch"
    #: convolutions in the channels-last layout (models' 4-D weights converted for the evaluation): on a CPU
    #: oneDNN's NHWC kernels, 1.3-1.4x faster forward and input-gradient passes of c2f2, other last bits
    channels_last: bool = False


EXACT = NumericPolicy("exact", matmul_tf32=False, cudnn_tf32=False, cudnn_benchmark=False, deterministic=True)
FAST = NumericPolicy("fast", matmul_tf32=True, cudnn_tf32=True, cudnn_benchmark=True, deterministic=False,
                     knn_backend="auto", channels_last=True)
POLICIES: dict[str, NumericPolicy] = {p.name: p for p in (EXACT, FAST)}
#: training's settings (not an evaluation choice): PyTorch's default precision, with deterministic algorithms so
#: that one seed gives one set of weights per machine and thread count. On the CPU the one non-deterministic kernel
#: of our training was the accumulating index backward (``z[anc]`` with repeated indices, summed in thread-arrival
#: order): with two threads three seed-0 trainings gave three weight hashes; with this, one.
TRAINING = NumericPolicy("training", matmul_tf32=False, cudnn_tf32=True, cudnn_benchmark=False, deterministic=True)


def reproducible_cpu_blas() -> str | None:
    """Ask MKL for CPU matrix products whose bits do not depend on the thread count (:data:`CPU_BLAS_MODE`), and
    return the mode in force (None where torch has no MKL, e.g. aarch64 builds: their products are not covered).

    MKL reads its mode (the ``MKL_CBWR`` variable) once, at its first call, so this must run before the process's
    first matrix product: ``dmlbench`` calls it first thing, the test suite at start-up; a Python user calls it
    right after ``import robustbench_dml``. A mode already set for MKL is left as it is (and recorded)."""
    if not torch.backends.mkl.is_available():
        return None
    return os.environ.setdefault("MKL_CBWR", CPU_BLAS_MODE)


def cpu_blas_mode() -> str | None:
    """The MKL mode this process asked for (:func:`reproducible_cpu_blas`), "default" if none, None without MKL."""
    if not torch.backends.mkl.is_available():
        return None
    return os.environ.get("MKL_CBWR") or "default"


def get_policy(policy: str | NumericPolicy) -> NumericPolicy:
    if isinstance(policy, NumericPolicy):
        return policy
    if policy not in POLICIES:
        raise UserError(f"unknown numeric policy {policy!r}; choose {' or '.join(POLICIES)}")
    return POLICIES[policy]


def _observed(policy: NumericPolicy) -> dict[str, Any]:
    """The settings as torch reports them (what the result records), plus the kNN backend and tie order."""
    return {"policy": policy.name,
            "matmul_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cudnn_tf32": bool(torch.backends.cudnn.allow_tf32),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "deterministic": bool(torch.are_deterministic_algorithms_enabled()),
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
            "knn_backend": policy.knn_backend, "tie_order": TIE_ORDER, "cpu_blas": cpu_blas_mode(),
            "channels_last": policy.channels_last}


@contextlib.contextmanager
def applied(policy: str | NumericPolicy, device: torch.device) -> Iterator[dict[str, Any]]:
    """Set ``policy`` for the duration and yield what is in force (restored afterwards, whatever happens). On CUDA,
    kernels without a deterministic version only warn."""
    policy = get_policy(policy)
    before = (torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision(),
              torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
              torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        torch.backends.cuda.matmul.allow_tf32 = policy.matmul_tf32
        torch.set_float32_matmul_precision("high" if policy.matmul_tf32 else "highest")
        torch.backends.cudnn.allow_tf32 = policy.cudnn_tf32
        torch.backends.cudnn.benchmark = policy.cudnn_benchmark
        torch.backends.cudnn.deterministic = policy.deterministic
        torch.use_deterministic_algorithms(policy.deterministic, warn_only=device.type != "cpu")
        yield _observed(policy)
    finally:
        matmul_tf32, precision, cudnn_tf32, benchmark, cudnn_deterministic, det, warn = before
        torch.set_float32_matmul_precision(precision)
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32  # after the precision, which also moves it
        torch.backends.cudnn.allow_tf32 = cudnn_tf32
        torch.backends.cudnn.benchmark = benchmark
        torch.backends.cudnn.deterministic = cudnn_deterministic
        torch.use_deterministic_algorithms(det, warn_only=warn)
