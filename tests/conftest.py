import os
from pathlib import Path

import pytest
import torch

from robustbench_dml import numerics

numerics.reproducible_cpu_blas()  # before this process's first matrix product, as dmlbench does

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _small_threads():
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data (genuine MNIST / Fashion-MNIST) is not beside this checkout")
    return SHARED_DATA
