"""``robustbench_dml.benchmark``: any embedding module in one line, its input contract checked in one line, the
same scores as ``dmlbench evaluate`` of the same weights saved as a checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

import robustbench_dml
from robustbench_dml import datasets
from robustbench_dml.benchmarking import check_model
from robustbench_dml.errors import UserError


class Flat(nn.Module):
    """Flatten, then a linear map: a model defined by the user, not a registered backbone."""

    def __init__(self, inputs: int = 28 * 28, dim: int = 16, out=None):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(inputs, dim)
        self.out = out

    def forward(self, x):
        z = self.lin(x.flatten(1))
        return self.out(z) if self.out is not None else z


@pytest.mark.parametrize("model, match", [
    (Flat(inputs=3 * 28 * 28), r"failed on a \(2, 1, 28, 28\) batch of digits images in \[0, 1\]"),
    (Flat(out=lambda z: z[:, 0]), r"must return a \(B, D\) float tensor .* returned \(2,\)"),
    (Flat(out=lambda z: z[:, :1]), "at least 2"),
    (Flat(out=lambda z: z / 0.0), "non-finite"),
    (Flat(out=lambda z: z.detach()), "no gradient reaches the images"),
])
def test_a_model_breaking_the_input_contract_is_refused_in_one_line(model, match):
    test = datasets.create("digits", split="test")
    with pytest.raises(UserError, match=match) as err:
        check_model(model, test, torch.device("cpu"))
    assert "\n" not in str(err.value)
    assert check_model(Flat(), test, torch.device("cpu")) == 16
    with pytest.raises(UserError, match="unknown dataset"):
        robustbench_dml.benchmark(Flat(), "mnist-typo")
    with pytest.raises(UserError, match="nn.Module"):
        robustbench_dml.benchmark(lambda x: x, "digits")


@pytest.mark.slow
def test_benchmark_gives_what_evaluate_gives_for_the_same_weights_and_publishes(tmp_path):
    from robustbench_dml.backbones import create
    from robustbench_dml.checkpoint import save_checkpoint

    torch.manual_seed(3)
    model = create("c2f2", embedding_dim=32)
    result = robustbench_dml.benchmark(model, "digits", n_queries=4, progress=None)
    save_checkpoint(tmp_path / "ck", model, {"dataset": "digits", "defense": "vanilla", "defense_config": {}})
    out = subprocess.run([sys.executable, "-m", "robustbench_dml.cli.main", "evaluate", "--checkpoint",
                          str(tmp_path / "ck"), "--max-queries", "4", "--json", str(tmp_path / "e.json"), "--quiet"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    cli = json.loads((tmp_path / "e.json").read_text())
    for protocol, block in cli["protocols"].items():
        mine = result.block(protocol)
        assert mine["scores"]["ERS"] == block["scores"]["ERS"] and mine["scores"]["ARS"] == block["scores"]["ARS"]
        assert mine["per_query"] == block["per_query"]
    assert result.ers == cli["protocols"]["corrected"]["scores"]["ERS"] and result.ars is not None
    assert result.checkpoint["meta"]["backbone"] == "EmbeddingNet" and result.num_queries == 4
    record, version, added = result.publish(tmp_path / "store", name="ann", partial_ok=True)
    assert added and version == 1 and record.submitter == "ann" and record.defense == "external"
    with pytest.raises(UserError):  # a partial result is not published unless asked
        result.publish(tmp_path / "store2")
