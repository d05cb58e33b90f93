"""Cost before compute: the work of a job in forward/backward passes and an estimate of its time on this device.

The estimate is measured, not guessed, and takes well under a minute even where one training step takes minutes
(a 224x224 dataset on a CPU):

- the work: two training steps of the configured defense half-way through training (where ramped schedules are at
  work; CA-TRIDE alternates phases) on a batch of two pairs count the forward and backward passes of one step;
- the time per step: when one forward+backward of the model on a full training batch is quick (a step predicted
  under :data:`MEASURE_STEPS_BELOW` seconds), two full steps are timed after a warm-up (``method="steps"``: the
  defense's own overheads included); otherwise the step is priced from its passes (``method="passes"``): the
  images that went through the model's forward and backward during the counting steps (forward hooks; PGD on a
  sub-batch counts its own images), scaled to a full batch, at the per-image time of one measured forward+backward
  (and forward alone) on a full batch; mining and optimiser work, small beside a 224x224 ResNet's passes, are left
  out;
- the time per PGD iteration of an attack: one forward+backward of the model on a batch of the suite's query
  batch size, at the per-image time measured for training when the job trains, else measured on its own.

The whole job is then training: epochs x steps per epoch x seconds per step, and evaluation, per attack: query
batches x (suite steps + 1) x seconds per PGD iteration, GTM and LTM twice (their targets differ between the two
protocols). Gallery embedding, benign metrics and checkpoint writes are not counted (seconds to minutes, small
beside the attacks). The estimate assumes the rest of the machine stays as busy as it was while measuring.
"""

from __future__ import annotations

import statistics
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
    method: str = "steps"                    # how seconds_per_step was measured (module docstring)
    train_images: tuple[int, int] = (0, 0)   # images through the model's forward / backward, whole training
    seconds_per_image: float = 0.0           # one image's forward+backward (in training when planned; 0: not yet)
    #: the evaluation probe's timed forward+backward calls, in seconds per full query batch (empty: priced from
    #: training), and the seconds the probe took, warm-up included
    probe_seconds: tuple[float, ...] = ()
    probe_wall: float = 0.0
    #: the iterations are a strong engine's nominal work, which its pruning cuts on every query already broken
    pruned: bool = False

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
            how = "measured" if self.method == "steps" else "priced from its passes"
            out.append(f"training: {self.train_steps} steps, {self.train_passes[0]} forward and "
                       f"{self.train_passes[1]} backward passes; {self.seconds_per_step:.2f} s/step {how} on "
                       f"{self.device}: about {clock(self.train_seconds)}")
        if evaluation:
            per = ", ".join(f"{a} {clock(self.attack_seconds(a))}" for a in self.attacks)
            probe = f" (the probe took {self.probe_wall:.1f} s)" if self.probe_seconds else ""
            out.append(f"evaluation: {len(self.attacks)} attacks over {self.eval_batches} query batches, "
                       f"{sum(self.attacks.values())} PGD iterations; {self.seconds_per_iteration:.3f} s/iteration "
                       f"measured{probe}: about {clock(self.eval_seconds)} ({per})"
                       + ("; at most: the strong engine skips the queries already broken, often most of them"
                          if self.pruned else ""))
        total = (self.train_seconds if training else 0) + (self.eval_seconds if evaluation else 0)
        out.append(f"total: about {clock(total)} on {self.device}")
        return out


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


#: a training step predicted to take longer than this (seconds) is priced from its passes instead of being timed
MEASURE_STEPS_BELOW = 5.0
#: a warm-up call slower than this (seconds) is not repeated
SLOW_CALL = 12.0


def _time(fn, repeats: int = 1) -> float:
    """Seconds per call of ``fn``, timed after one warm-up call (allocations, kernel selection: a first call on a
    CPU measured up to ~1.6x slower); a warm-up slower than :data:`SLOW_CALL` seconds is itself the measurement, so
    planning a 224x224 job on a CPU stays within a minute, and one slower than a second is followed by a single
    timed call."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    if first > SLOW_CALL:
        return first
    if first > 1.0:
        repeats = 1
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def plan_training(cfg: TrainConfig, *, measure_steps_below: float = MEASURE_STEPS_BELOW
                  ) -> tuple[Plan, torch.nn.Module, TrainConfig]:
    """Measure the training of ``cfg`` (nothing is written); the Plan has no attacks yet."""
    from robustbench_dml.numerics import TRAINING, applied
    from robustbench_dml.runtime import generator, resolve_device, seed_everything, set_threads
    from robustbench_dml.training import prepare, training_step

    device = resolve_device(cfg.device)
    set_threads(cfg.threads)
    seed_everything(cfg.seed)  # the model training starts from, so the counted passes are the run's
    setup = prepare(cfg)
    cfg, train_set, sampler = setup.cfg, setup.train_set, setup.sampler
    model = setup.model.to(device)
    batch = next(iter(sampler))
    images = torch.stack([torch.as_tensor(train_set[i][0]) for i in batch]).to(device)
    labels = torch.tensor([int(train_set[i][1]) for i in batch], device=device)
    counts = [0, 0]
    images_seen = [0, 0]  # images through the model's forward, and through its backward, while counting

    def steps_at_mid_training(n: int) -> None:
        """Two consecutive steps half-way through training on the first ``n`` images of the batch."""
        counts[:] = [0, 0]
        for k in (0, 1):
            result = training_step(setup, model, images[:n], labels[:n], epoch=cfg.epochs // 2, step=k,
                                   gen=generator(cfg.seed, "plan", k))
            result.loss.backward()
            model.zero_grad(set_to_none=True)
            counts[0] += result.n_forward
            counts[1] += result.n_backward

    def count_images(module, args, output) -> None:
        images_seen[0] += args[0].shape[0]
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(lambda grad: images_seen.__setitem__(1, images_seen[1] + grad.shape[0]))

    def forward_backward() -> None:
        model(images).sum().backward()
        model.zero_grad(set_to_none=True)

    def forward() -> None:
        with torch.no_grad():
            model(images)

    with applied(TRAINING, device):
        small = min(4, len(batch))  # two pairs: the passes of one step, quick at any image size
        hook = model.register_forward_hook(count_images)
        try:
            steps_at_mid_training(small)
        finally:
            hook.remove()
        fwd, bwd = counts[0] / 2, counts[1] / 2
        scale = len(batch) / small / 2  # images per full-batch step, per image counted over the two small steps
        setup.defense.train_mode(model)
        t_fb = _time(forward_backward) / len(batch)
        t_f = _time(forward) / len(batch)
        priced = scale * (images_seen[1] * t_fb + max(0, images_seen[0] - images_seen[1]) * t_f)
        if priced < measure_steps_below:
            seconds_per_step, method = _time(lambda: steps_at_mid_training(len(batch))) / 2, "steps"
        else:
            seconds_per_step, method = priced, "passes"
    steps = cfg.epochs * len(sampler)
    result = Plan(device=str(device), train_steps=steps, train_passes=(round(steps * fwd), round(steps * bwd)),
                  seconds_per_step=seconds_per_step, eval_batches=0, method=method,
                  train_images=(round(steps * scale * images_seen[0]), round(steps * scale * images_seen[1])),
                  seconds_per_image=t_fb)
    return result, model, cfg


def plan_evaluation(result: Plan, model: torch.nn.Module, *, dataset: str, data_root: str | None, device,
                    suite: str | None = None, max_queries: int | None = None, attacks: list[str] | None = None,
                    robrank_compat: bool = False) -> Plan:
    """Add the evaluation's work and estimate to ``result``: a PGD iteration costs one forward+backward of ``model``
    on a query batch, priced from the training measurement when ``result`` has one, else measured here."""
    from attacks.pgd import iteration_seconds
    from robustbench_dml import datasets
    from robustbench_dml.evaluation import EvalConfig

    info = datasets.info(dataset)
    test_len = len(datasets.create(dataset, root=data_root, split="test"))
    config = EvalConfig(suite or info.suite, attacks=attacks, max_queries=max_queries, robrank_compat=robrank_compat)
    suite_obj = config.suite_obj
    n_queries = test_len if max_queries is None else min(test_len, max_queries)
    q = min(suite_obj.batch_size, n_queries)
    batches = -(-n_queries // suite_obj.batch_size)
    if result.seconds_per_image <= 0:  # no training measurement to price the iteration from
        x = torch.rand(q, info.channels, info.image_size, info.image_size,
                       generator=torch.Generator().manual_seed(0)).to(device)
        t0 = time.perf_counter()
        times = iteration_seconds(model, x, repeats=3, slow=SLOW_CALL)
        result.probe_wall = time.perf_counter() - t0
        result.seconds_per_image = statistics.median(times) / q
        result.probe_seconds = tuple(t * suite_obj.batch_size / q for t in times)
    result.seconds_per_iteration = q * result.seconds_per_image
    result.eval_batches = batches
    result.attacks = {a: round(config.runs(a) * batches * suite_obj.iterations) for a in config.attack_ids}
    result.pruned = suite_obj.engine is not None and suite_obj.engine.prune
    return result


def gpu_note(result: Plan, dataset: str) -> str | None:
    """On a CPU with 224x224 data, the plain statement that a GPU is expected."""
    from robustbench_dml import datasets

    if result.device.startswith("cpu") and datasets.info(dataset).image_size >= 224:
        return (f"note: {dataset} is a 224x224 dataset and a GPU is expected; on this CPU the job takes about "
                f"{clock(result.train_seconds + result.eval_seconds)}")
    return None
