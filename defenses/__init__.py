"""Adversarial-training defenses for deep metric learning, one per file, registered under stable ids.

``defenses.create("hm", preset="224", steps=8)`` builds one; ``defenses.list("*")`` lists the ids.
"""

from defenses.base import DEFENSES, Defense, DefenseConfig, StepContext, StepResult, ThreatModel, TRAIN_THREATS


def create(name: str, **cfg) -> Defense:
    return DEFENSES.create(name, **cfg)


def list(pattern: str = "*") -> list[str]:  # noqa: A001 - timm-style name
    return DEFENSES.list(pattern)


__all__ = ["DEFENSES", "Defense", "DefenseConfig", "StepContext", "StepResult", "ThreatModel", "TRAIN_THREATS",
           "create", "list"]
