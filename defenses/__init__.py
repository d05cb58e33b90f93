"""Adversarial-training defenses for deep metric learning, one per file, registered under stable ids.

``defenses.create("hm", preset="224", steps=8)`` builds one; ``defenses.list_defenses("*")`` lists the ids (the
same ``list_<kind>s`` name as ``datasets``, ``backbones``, ``attacks`` and ``attacks.suites``).
"""

from defenses.base import DEFENSES, Defense, DefenseConfig, StepContext, StepResult, ThreatModel, TRAIN_THREATS


def create(name: str, **cfg) -> Defense:
    return DEFENSES.create(name, **cfg)


def list_defenses(pattern: str = "*") -> list[str]:
    return DEFENSES.list(pattern)


__all__ = ["DEFENSES", "Defense", "DefenseConfig", "StepContext", "StepResult", "ThreatModel", "TRAIN_THREATS",
           "create", "list_defenses"]
