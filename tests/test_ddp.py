"""torchrun with two CPU processes (gloo) trains the same model shape and metadata as one process."""

import socket
import subprocess
import sys

import pytest

from robustbench_dml.checkpoint import load_checkpoint

ARGS = ["train", "--defense", "vanilla", "--dataset", "digits", "--epochs", "1", "--batch-size", "32",
        "--embedding-dim", "16", "--device", "cpu", "--threads", "1", "--seed", "3"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.ddp
def test_two_process_gloo_training_matches_single_process_layout(tmp_path):
    ddp_out, single_out = tmp_path / "ddp", tmp_path / "single"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "robustbench_dml.cli.main", *ARGS, "--out", str(ddp_out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1].endswith("checkpoint")
    single = subprocess.run([sys.executable, "-m", "robustbench_dml.cli.main", *ARGS, "--out", str(single_out)],
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    m_ddp, meta_ddp = load_checkpoint(ddp_out / "checkpoint")
    m_one, meta_one = load_checkpoint(single_out / "checkpoint")
    assert {k: v.shape for k, v in m_ddp.state_dict().items()} == {k: v.shape for k, v in m_one.state_dict().items()}
    volatile = {"weights_sha256", "created", "steps", "forward_passes", "backward_passes", "world_size", "benign"}
    assert {k: v for k, v in meta_ddp.items() if k not in volatile} == \
        {k: v for k, v in meta_one.items() if k not in volatile}
    assert meta_ddp["world_size"] == 2 and meta_one["world_size"] == 1
    # each process takes half of every global batch: half as many steps per epoch
    assert meta_ddp["steps"] == 898 // 64 and meta_one["steps"] == 898 // 32
