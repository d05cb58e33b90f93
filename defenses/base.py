"""The defense interface (``docs/training.md``).

The training harness (``robustbench_dml.training``) owns data, optimiser, schedule, devices, checkpoints and
logging. A defense owns model preparation (BN freezing, BN routes) and the per-batch loss, and keeps its
cross-step state (LGA's previous loss, CA-TRIDE's phase) in ``state_dict`` so that resumption is exact.

A defense is a class registered with ``@DEFENSES.register("id")`` whose nested frozen dataclass ``Config``
lists every hyper-parameter under its paper name; ``Config.for_preset(preset)`` gives the defaults for the
"28" (28x28, c2f2) and "224" (224x224, ResNet) presets. Defenses never open files, parse arguments or print.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from robustbench_dml.registry import Registry

DEFENSES: Registry = Registry(
    "defense",
    builtin_modules=tuple(f"defenses.{name}" for name in ("vanilla", "est", "act", "hm", "ca_tride", "mdprop")),
)


@dataclass(frozen=True)
class ThreatModel:
    """Training-time adversary budget in [0,1] pixel units (``docs/training.md``, Presets)."""

    eps: float
    alpha: float
    steps: int

    def __post_init__(self):
        if self.eps < 0 or self.alpha < 0 or self.steps < 0:
            raise ValueError(f"eps, alpha and steps must be >= 0, got {self}")


# Training-time adversaries of EST/ACT/HM per preset (``docs/training.md``, Presets).
TRAIN_THREATS = {
    "28": ThreatModel(eps=77 / 255, alpha=3 / 255, steps=32),
    "224": ThreatModel(eps=8 / 255, alpha=1 / 255, steps=32),
}


def preset_threat(preset: str) -> ThreatModel:
    """``TRAIN_THREATS[preset]``, or a ValueError naming the known presets."""
    try:
        return TRAIN_THREATS[str(preset)]
    except KeyError:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(TRAIN_THREATS)}") from None


@dataclass
class StepContext:
    """What the harness tells a defense about the current step. All randomness comes from ``generator``."""

    epoch: int
    max_epochs: int
    global_step: int
    generator: torch.Generator
    dataset: str
    log: Callable[[str, float], None] = lambda key, value: None


@dataclass
class StepResult:
    """``loss``: scalar with graph (the harness calls backward and steps); forward/backward counts for the
    training-cost accounting; ``stats``: numbers for the progress bar and logs (hardness, collapseness, ...)."""

    loss: torch.Tensor
    n_forward: int
    n_backward: int
    stats: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class DefenseConfig:
    """Base of every defense's ``Config``; subclasses add fields and override ``for_preset``."""

    @classmethod
    def for_preset(cls, preset: str, **overrides: Any) -> "DefenseConfig":
        return cls(**overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def check_types(cls, values: Mapping[str, Any]) -> None:
        """Every given field holds a value of its declared type (``float`` accepts integers, never booleans) and
        every number is finite; raises ValueError naming the field (unknown names are left to the constructor)."""
        kinds = {"float": (int, float), "int": (int,), "bool": (bool,), "str": (str,), "None": (type(None),)}
        for f in dataclasses.fields(cls):
            if f.name not in values:
                continue
            value = values[f.name]
            names = [t.strip() for t in str(f.type).split("|")]
            if not all(n in kinds for n in names):
                continue  # a type we do not check here
            allowed = tuple(t for n in names for t in kinds[n])
            if isinstance(value, bool) and "bool" not in names or not isinstance(value, allowed):
                raise ValueError(f"option {f.name} must be {' or '.join(names)}, got {value!r}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"option {f.name} must be finite, got {value!r}")


class Defense:
    """A defense: how a training batch becomes a loss. The contract a defense (built in or a plugin) keeps:

    - **Registration**: a subclass with a stable ``id``, registered with ``@DEFENSES.register(id)`` or, from
      another package, through the entry-point group ``dmlbench.defenses`` (``id = "module:Class"``).
    - **Configuration**: ``Config``, a frozen dataclass subclassing :class:`DefenseConfig`, lists every
      hyper-parameter; ``Config.for_preset(preset, **overrides)`` gives the defaults of the ``"28"`` and ``"224"``
      presets. The harness builds ``Defense(preset=..., **overrides)`` from ``--set KEY=VALUE`` (types checked) and
      records ``config.to_dict()`` in the checkpoint's ``meta.json`` and in every result.
    - **The step**: ``training_step(model, images, labels, ctx)`` gets the model in training mode (set by
      :meth:`train_mode`), an SPC-2 batch (``images`` (B, C, H, W) in [0, 1] on the model's device, ``labels``
      (B,) int64: two images per class) and a :class:`StepContext`; it returns a :class:`StepResult` whose
      ``loss`` is a scalar with its graph (the harness calls ``backward`` and steps the optimiser) and whose
      ``n_forward`` / ``n_backward`` count the model passes it made (the cost accounting of plans and logs).
      Training-time adversaries perturb only ``images``, in pixel units, with :func:`attacks.pgd.pgd`.
    - **Randomness**: only from ``ctx.generator`` (a CPU ``torch.Generator``): draw on the CPU, then move to the
      device, so one seed gives the same run on any device.
    - **Devices**: never move the model or choose a device; create tensors on ``images.device``.
    - **State**: anything kept across steps lives in :meth:`state_dict` / :meth:`load_state_dict`, so a resumed
      run continues exactly.
    - **Side effects**: none; a defense never opens files, parses arguments or prints (``ctx.log(key, value)``
      and ``StepResult.stats`` carry numbers to the logs).
    """

    id: ClassVar[str]
    Config: ClassVar[type[DefenseConfig]] = DefenseConfig
    batch_layout: ClassVar[str] = "spc2"  # or "class_random" (MDProp)
    # Backbone per preset when the user names none (e.g. MDProp needs BatchNorm: {"28": "c2f2bn"}).
    preferred_backbones: ClassVar[dict[str, str]] = {}

    def __init__(self, config: DefenseConfig | None = None, *, preset: str = "28", **overrides: Any):
        if config is not None and overrides:
            raise ValueError("pass either a config or keyword overrides, not both")
        if config is None:
            self.Config.check_types(overrides)
            config = self.Config.for_preset(preset, **overrides)
        self.config = config

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Adapt a fresh backbone before training (freeze BN, add BN routes...). Default: unchanged."""
        return model

    def train_mode(self, model: nn.Module) -> None:
        """Put ``model`` in the mode its training forward uses. Default: ``train()``, BN frozen in eval."""
        model.train()
        freeze_batchnorm(model)

    def training_step(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      ctx: StepContext) -> StepResult:
        raise NotImplementedError

    def export_model(self, model: nn.Module) -> nn.Module:
        """The plain backbone to checkpoint (same state-dict keys as a fresh one from ``backbones.create``).
        Default: the model itself (unwrapped from DDP); MDProp strips its auxiliary BN routes."""
        return unwrap(model)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got {sorted(state)}")


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a (Distributed)DataParallel wrapper, else ``model``: training-time attacks run on it
    (DDP's forward hooks must not run inside an attack), while the training forward uses the wrapper so gradients
    are synchronised."""
    return getattr(model, "module", model)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def freeze_batchnorm(model: nn.Module) -> None:
    """Keep every BatchNorm in eval mode (running statistics fixed; affine weights stay trainable)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
