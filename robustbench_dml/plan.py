"""Cost before compute: the work of a job in forward/backward passes and an estimate of its time on this device.

The estimate is measured, not guessed: one training step of the configured defense on one real batch (after a
warm-up, two steps half-way through training, where ramped schedules are at work) gives the seconds per step, and one forward+backward of the model on a batch of the suite's query
batch size gives the seconds per PGD iteration of an attack. The whole job is then

- training: epochs x steps per epoch x seconds per step;
- evaluation, per attack: query batches x (suite steps + 1) x seconds per PGD iteration, GTM and LTM twice (their
  targets differ between the two protocols).

Gallery embedding, benign metrics and checkpoint writes are not counted (seconds to minutes, small beside the
attacks). The estimate is as good as the two measurements: it assumes the rest of the machine stays as busy as
it was while measuring.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from robustbench_dml.config import TrainConfig


@dataclass
class Plan:
    """The work and estimated seconds of training and of each attack."""

    device: str
    train_steps: int
    train_passes: tuple[int, int]            # (forward, backward) passes of the whole training, batch-sized
    seconds_per_step: float
    eval_batches: int
    attacks: dict[str, int] = field(default_factory=dict)   # attack id -> PGD iterations (all batches, all runs)
    seconds_per_iteration: float = 0.0

    @property
    def train_seconds(self) -> float:
        return self.train_steps * self.seconds_per_step

    def attack_seconds(self, attack: str) -> float:
        return self.attacks[attack] * self.seconds_per_iteration

    @property
    def eval_seconds(self) -> float:
        return sum(self.attack_seconds(a) for a in self.attacks)

    def lines(self, *, training: bool = True, evaluation: bool = True) -> list[str]:
        out = []
        if training:
            out.append(f"training: {self.train_steps} steps, {self.train_passes[0]} forward and "
                       f"{self.train_passes[1]} backward passes; {self.seconds_per_step:.2f} s/step measured on "
                       f"{self.device}: about {clock(self.train_seconds)}")
        if evaluation:
            per = ", ".join(f"{a} {clock(self.attack_seconds(a))}" for a in self.attacks)
            out.append(f"evaluation: {len(self.attacks)} attacks over {self.eval_batches} query batches, "
                       f"{sum(self.attacks.values())} PGD iterations; {self.seconds_per_iteration:.3f} s/iteration "
                       f"measured: about {clock(self.eval_seconds)} ({per})")
        total = (self.train_seconds if training else 0) + (self.eval_seconds if evaluation else 0)
        out.append(f"total: about {clock(total)} on {self.device}")
        return out


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _time(fn, repeats: int = 1) -> float:
    fn()  # warm-up (allocations, kernel selection)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def plan_training(cfg: TrainConfig) -> tuple[Plan, torch.nn.Module, TrainConfig]:
    """Measure training steps of ``cfg`` (nothing is written); the Plan has no attacks yet."""
    from robustbench_dml.runtime import deterministic, generator, resolve_device, set_threads
    from robustbench_dml.training import prepare, training_step

    device = resolve_device(cfg.device)
    set_threads(cfg.threads)
    setup = prepare(cfg)
    cfg, train_set, sampler = setup.cfg, setup.train_set, setup.sampler
    model = setup.model.to(device)
    batch = next(iter(sampler))
    images = torch.stack([torch.as_tensor(train_set[i][0]) for i in batch]).to(device)
    labels = torch.tensor([int(train_set[i][1]) for i in batch], device=device)
    counts = [0, 0]

    def steps_at_mid_training() -> None:
        """Two consecutive steps half-way through training (schedules ramp up; CA-TRIDE alternates phases)."""
        counts[:] = [0, 0]
        for k in (0, 1):
            result = training_step(setup, model, images, labels, epoch=cfg.epochs // 2, step=k,
                                   gen=generator(cfg.seed, "plan", k))
            result.loss.backward()
            model.zero_grad(set_to_none=True)
            counts[0] += result.n_forward
            counts[1] += result.n_backward

    with deterministic(device):
        seconds_per_step = _time(steps_at_mid_training) / 2
    steps = cfg.epochs * len(sampler)
    result = Plan(device=str(device), train_steps=steps,
                  train_passes=(round(steps * counts[0] / 2), round(steps * counts[1] / 2)),
                  seconds_per_step=seconds_per_step, eval_batches=0)
    return result, model, cfg


def plan_evaluation(result: Plan, model: torch.nn.Module, *, dataset: str, data_root: str | None, device,
                    suite: str | None = None, max_queries: int | None = None, attacks: list[str] | None = None,
                    robrank_compat: bool = False) -> Plan:
    """Add the evaluation's work and estimate to ``result`` (one measured forward+backward of ``model``)."""
    from attacks import ATTACKS
    from attacks.suites import get_suite
    from robustbench_dml import datasets

    info = datasets.info(dataset)
    test_len = len(datasets.create(dataset, root=data_root, split="test"))
    suite_obj = get_suite(suite or info.suite)
    n_queries = test_len if max_queries is None else min(test_len, max_queries)
    q = min(suite_obj.batch_size, n_queries)
    batches = -(-n_queries // suite_obj.batch_size)
    x = torch.rand(q, info.channels, info.image_size, info.image_size, generator=torch.Generator().manual_seed(0))
    x = x.to(device)
    model.eval()

    def iteration() -> None:
        xi = x.clone().requires_grad_(True)
        model(xi).sum().backward()

    result.seconds_per_iteration = _time(iteration, repeats=3)
    result.eval_batches = batches
    result.attacks = {}
    for a in suite_obj.attack_ids:
        if attacks is None or a in attacks:
            runs = 2 if not robrank_compat and ATTACKS.get(a).robrank_quirk == "targets" else 1
            result.attacks[a] = runs * batches * (suite_obj.steps + 1)
    return result


def gpu_note(result: Plan, dataset: str) -> str | None:
    """On a CPU with 224x224 data, the plain statement that a GPU is expected."""
    from robustbench_dml import datasets

    if result.device.startswith("cpu") and datasets.info(dataset).image_size >= 224:
        return (f"note: {dataset} is a 224x224 dataset and a GPU is expected; on this CPU the job takes about "
                f"{clock(result.train_seconds + result.eval_seconds)}")
    return None
