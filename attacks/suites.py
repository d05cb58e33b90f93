"""Frozen, versioned attack suites: the published ERS protocols of RobRank.

A :class:`Suite` fixes everything that changes the numbers: the L-infinity budget ``eps`` (in [0,1] pixel
units), the PGD step ``alpha`` and ``steps``, the attacks in order with their parameters (W = M = 1), and the
query batch size (128 for 28x28, 112 for 224x224, as RobRank's ``valbatchsize``; the batch partition fixes which
random generator each query's selection comes from). The decimals are RobRank's truncated literals, not k/255.

``hash`` is the sha256 of the suite's canonical JSON (sorted keys, no whitespace); it goes into every result.
A published suite never changes: a new protocol is a new ``version`` (and a new hash). ``tests/test_suites.py``
pins the published hashes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from robustbench_dml.registry import Registry

SUITES: Registry = Registry("suite")


@dataclass(frozen=True)
class SuiteAttack:
    """One entry of a suite: a registered attack id and its parameters (W for CA, M for QA, none otherwise)."""

    id: str
    params: tuple[tuple[str, Any], ...] = ()

    def kwargs(self) -> dict[str, Any]:
        return dict(self.params)


@dataclass(frozen=True)
class Suite:
    """A frozen attack protocol. ``attacks`` run in order, each with ``eps``, ``alpha``, ``steps``."""

    id: str
    version: int
    eps: float
    alpha: float
    steps: int
    batch_size: int
    attacks: tuple[SuiteAttack, ...]
    description: str = field(default="", compare=False)

    @property
    def params(self) -> dict[str, Any]:
        """The JSON-able content that defines the protocol (description excluded)."""
        return {
            "eps": self.eps,
            "alpha": self.alpha,
            "steps": self.steps,
            "batch_size": self.batch_size,
            "attacks": [{"id": a.id, "params": dict(a.params)} for a in self.attacks],
        }

    def canonical_json(self) -> str:
        return json.dumps({"id": self.id, "version": self.version, "params": self.params},
                          sort_keys=True, separators=(",", ":"))

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    @property
    def attack_ids(self) -> list[str]:
        return [a.id for a in self.attacks]

    def attack(self, attack_id: str) -> SuiteAttack:
        for a in self.attacks:
            if a.id == attack_id:
                return a
        raise KeyError(attack_id)


def _rob_attacks() -> tuple[SuiteAttack, ...]:
    """The 9 attacks of RobRank's ERS protocol in order: CA+ W=1, CA- W=1, QA+ M=1, QA- M=1, TMA, ES, LTM, GTM, GTT."""
    return (
        SuiteAttack("CA+", (("W", 1),)),
        SuiteAttack("CA-", (("W", 1),)),
        SuiteAttack("QA+", (("M", 1),)),
        SuiteAttack("QA-", (("M", 1),)),
        SuiteAttack("TMA"),
        SuiteAttack("ES"),
        SuiteAttack("LTM"),
        SuiteAttack("GTM"),
        SuiteAttack("GTT"),
    )


ROB28 = Suite(
    id="rob28", version=1, eps=0.30196, alpha=0.011764, steps=32, batch_size=128, attacks=_rob_attacks(),
    description="RobRank rob28 (MNIST/Fashion 28x28): eps 77/255, alpha 3/255, 32 PGD steps, W=M=1",
)
ROB224 = Suite(
    id="rob224", version=1, eps=0.03137, alpha=0.011764, steps=32, batch_size=112, attacks=_rob_attacks(),
    description="RobRank rob224 (CUB/CARS/SOP 224x224): eps 8/255, alpha 3/255, 32 PGD steps, W=M=1",
)



@SUITES.register("rob28")
def rob28() -> Suite:
    return ROB28


@SUITES.register("rob224")
def rob224() -> Suite:
    return ROB224


def get_suite(suite: str | Suite) -> Suite:
    """The registered suite ``suite`` (an id) or ``suite`` itself."""
    return suite if isinstance(suite, Suite) else SUITES.create(suite)


def list_suites(pattern: str = "*") -> list[str]:
    return SUITES.list(pattern)
