"""The cost estimate (robustbench_dml.plan): what it counts must equal what a training step does; no timings are
asserted (they depend on the machine)."""

from __future__ import annotations

import pytest

from robustbench_dml.config import TrainConfig
from robustbench_dml.plan import plan_training

BATCH = 256  # the 28x28 preset's 128 pairs


def _plan(defense: str, **kw):
    return plan_training(TrainConfig(defense=defense, dataset="digits", epochs=2, threads=1,
                                     defense_params={} if defense == "vanilla" else {"steps": 2}), **kw)[0]


@pytest.mark.parametrize("defense", ["vanilla", "est"])
def test_counted_images_are_the_passes_times_the_batch(defense):
    # every pass of these defenses runs on the whole batch, so the images counted through the model's hooks on a
    # two-pair batch, scaled to the full batch, equal passes x batch size
    plan = _plan(defense, measure_steps_below=0)
    assert plan.method == "passes" and plan.seconds_per_step > 0
    assert plan.train_images == (plan.train_passes[0] * BATCH, plan.train_passes[1] * BATCH)
    if defense == "vanilla":  # one forward and one backward per step, by hand
        assert plan.train_passes == (plan.train_steps, plan.train_steps)


def test_both_methods_count_the_same_work_and_the_threshold_picks_one():
    priced, timed = _plan("ca_tride", measure_steps_below=0), _plan("ca_tride", measure_steps_below=1e9)
    assert (priced.method, timed.method) == ("passes", "steps")
    assert priced.train_passes == timed.train_passes and priced.train_images == timed.train_images
    assert priced.train_steps == timed.train_steps and timed.seconds_per_step > 0 and priced.train_images[1] > 0
