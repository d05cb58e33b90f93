"""The attacks clearly work on a small undefended model trained on digits."""

import pytest

from attacks.suites import ROB28
from robustbench_dml.config import TrainConfig
from robustbench_dml.evaluation import EvalConfig, evaluate
from robustbench_dml.training import train


@pytest.mark.slow
def test_rob28_breaks_an_undefended_digits_model(tmp_path):
    summary = train(TrainConfig(dataset="digits", epochs=2, embedding_dim=64, device="cpu", seed=0), tmp_path / "run")
    assert summary.benign_r1 > 90
    result = evaluate(summary.checkpoint, EvalConfig(ROB28, max_queries=128), device="cpu", benign_nmi=False)
    raw, clean = result.raw, result.clean
    # clean reference levels
    assert 40 < clean["CA+"] < 60 and 40 < clean["QA+"] < 60
    assert clean["CA-"] < 3 and clean["QA-"] < 3 and clean["GTT"] == 100 and clean["ES:D"] == 0
    assert clean["ES:R"] == clean["LTM"] == clean["GTM"] == raw["R@1"]
    # the suite's attacks move every result far in the attacker's direction
    assert raw["CA+"] < 10 and raw["QA+"] < 10
    assert raw["CA-"] > 50 and raw["QA-"] > 50
    assert raw["TMA"] > clean["TMA"] + 0.3 and raw["ES:D"] > 0.5
    for key in ("ES:R", "LTM", "GTM"):
        assert raw[key] < raw["R@1"] - 50
    assert raw["GTT"] < 50
    assert result.scores["ERS"] < 25 and result.scores["worst_case"] > 90
