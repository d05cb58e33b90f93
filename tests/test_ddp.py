"""torchrun with two CPU processes (gloo): `dmlbench run` trains under DDP and shares the evaluation's query
batches among the ranks, and the result equals a one-process evaluation of the same checkpoint number for number."""

import json
import os
import socket
import subprocess
import sys

import pytest

from robustbench_dml import numerics
from robustbench_dml.checkpoint import load_checkpoint

TRAIN = ["--defense", "vanilla", "--dataset", "digits", "--epochs", "1", "--batch-size", "32", "--embedding-dim", "16",
         "--device", "cpu", "--threads", "1", "--seed", "3"]
# two query batches of rob28 (128 each), so each rank attacks one; GTM runs twice (its robrank variant too)
EVAL = ["--attacks", "GTM", "--max-queries", "256"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args, torchrun: bool = False, cwd=None) -> subprocess.CompletedProcess:
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
              f"--master_port={_free_port()}"] if torchrun else [sys.executable]
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}  # dmlbench must ask MKL itself (numerics)
    proc = subprocess.run([*launch, "-m", "robustbench_dml.cli.main", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.ddp
@pytest.mark.slow
@pytest.mark.timeout(1200)  # about 2 minutes on 2 idle cores; several processes share them
def test_torchrun_run_trains_under_ddp_and_evaluates_sharded_to_the_one_process_numbers(tmp_path):
    ddp_out, lb = tmp_path / "ddp", tmp_path / "lb"
    _cli("run", *TRAIN, *EVAL, "--out", str(ddp_out), "--leaderboard-dir", str(lb), "--name", "ddp", "--quiet",
         torchrun=True)

    # training: half of every global batch per rank, so half the steps of one process (898 // 32)
    _, meta = load_checkpoint(ddp_out / "checkpoint")
    assert meta["world_size"] == 2 and meta["steps"] == 898 // 64 and meta["defense"] == "vanilla"

    # evaluation: the sharded result (written once, by rank 0) equals one process on the same checkpoint
    sharded = sorted((ddp_out / "eval").glob("*.json"))
    assert len(sharded) == 1
    _cli("evaluate", "--checkpoint", str(ddp_out / "checkpoint"), *EVAL, "--device", "cpu", "--quiet",
         "--json", str(tmp_path / "one.json"))
    a, b = json.loads(sharded[0].read_text()), json.loads((tmp_path / "one.json").read_text())
    assert (a["extra"]["world_size"], b["extra"]["world_size"]) == (2, 1)  # it was shared, then not
    # every number, the benign ones included: one thread per rank there, all cores here
    assert a["protocols"] == b["protocols"] and a["benign"] == b["benign"] and a["num_queries"] == 256
    assert a["numerics"]["cpu_blas"] == b["numerics"]["cpu_blas"] == numerics.cpu_blas_mode()
    assert set(a["protocols"]["robrank"]["per_query"]) == {"R@1", "GTM"}

    # the leaderboard got the run's row once (both protocols), published by rank 0 alone
    from robustbench_dml.leaderboard import LeaderboardStore

    board = LeaderboardStore(lb).load("digits", "rob28")
    assert sorted(board["protocol"]) == ["corrected", "robrank"] and set(board["submitter"]) == {"ddp"}
