"""Frozen, versioned attack suites: the published ERS protocols of RobRank and the stronger ``rankaa`` suites.

A :class:`Suite` fixes everything that changes the numbers: the L-infinity budget ``eps`` (in [0,1] pixel
units), the PGD step ``alpha`` and ``steps``, the attacks in order with their parameters (W = M = 1), and the
query batch size (128 for 28x28, 112 for 224x224, as RobRank's ``valbatchsize``; the batch partition fixes which
random generator each query's selection comes from). The decimals are RobRank's truncated literals, not k/255.

``hash`` is the sha256 of the suite's canonical JSON (sorted keys, no whitespace); it goes into every result.
A published suite never changes: a new protocol is a new ``version`` (and a new hash). A bare id names the current
version, ``id.vN`` (:attr:`Suite.name`) pins one; superseded versions stay loadable (:data:`SUPERSEDED`), so their
results reproduce, and each version has its own leaderboard (:attr:`Suite.board`). ``tests/test_suites.py`` pins
the published hashes.

``rankaa28`` / ``rankaa224`` (ours): the same attacks, targets, eps and batches as rob28 / rob224, each attack run
by the strong :class:`attacks.engine.Engine`. Threat model: white box, L-infinity ``eps``, as the published suite.
They measure the corrected protocol only (the reference never ran them) and get their own leaderboards. Version 3
(current), frozen at the knee of the convergence study: the published PGD, a 100-step APGD run from the clean image
and a targeted one (the paper's schedule), then a 5,000-query random search, the best point per query kept.
Version 2: the same gradient runs with the search as a check on 8 queries per batch only. Version 1: the published
PGD and two 24-step APGD runs with the reference code's checkpoints.

``rankaa28plus`` / ``rankaa224plus`` (ours): the same, at AutoAttack's scale (:data:`PLUS_ENGINE`: the published PGD,
ten 100-step APGD runs with the paper's schedule, five of them targeted where the attack has alternatives, and a
5,000-query random search whose points join the worst case): the reference budget of the convergence study
(``benchmarks/rankaa_budget.py``) and the suite for final numbers.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from typing import Any

from attacks.engine import Engine
from robustbench_dml import protocols as P
from robustbench_dml.errors import UserError
from robustbench_dml.leaderboard.records import board_name
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
    """A frozen attack protocol. ``attacks`` run in order, each with ``eps``, ``alpha``, ``steps`` (sign-PGD), or,
    with an ``engine``, each run by :func:`attacks.engine.run_engine` (that PGD among its candidates)."""

    id: str
    version: int
    eps: float
    alpha: float
    steps: int
    batch_size: int
    attacks: tuple[SuiteAttack, ...]
    description: str = field(default="", compare=False)
    engine: Engine | None = None
    #: the published suite whose attacks, eps and inputs this one shares ("" = itself)
    base: str = field(default="", compare=False)

    @property
    def params(self) -> dict[str, Any]:
        """The JSON-able content that defines the protocol (description excluded; ``engine`` only when set, so the
        published suites' hashes are unchanged)."""
        out = {
            "eps": self.eps,
            "alpha": self.alpha,
            "steps": self.steps,
            "batch_size": self.batch_size,
            "attacks": [{"id": a.id, "params": dict(a.params)} for a in self.attacks],
        }
        if self.engine is not None:
            out["engine"] = self.engine.params
        return out

    @property
    def name(self) -> str:
        """The id with the version, ``rankaa28.v2``: what pins this version where a bare id means the current one."""
        return f"{self.id}.v{self.version}"

    @property
    def board(self) -> str:
        """The leaderboard this suite's records go to: one per suite version (version 1's keeps the bare id it had
        before suites had a second version)."""
        return board_name(self.id, self.version)

    @property
    def base_id(self) -> str:
        return self.base or self.id

    @property
    def iterations(self) -> float:
        """Work per query and attack run in forward+backward passes of the model: the PGD steps plus the final
        forward; with an engine, its APGD runs, a forward per kept point and the check's forwards (a third of a
        pass each) spread over the batch."""
        work = float(self.steps + 1)
        if self.engine is not None:
            e = self.engine
            checked = 0 if e.search_steps else e.check_queries * e.check_steps / self.batch_size
            # the PGD, the APGD runs, the diagnosis (a gradient, two forwards), the kept points' forwards, the
            # searches' forwards
            work = (work if e.with_pgd else 0.0) + e.gradients + 1 + 2 / 3 + 2 + (e.search_steps + checked) / 3
        return work

    @property
    def protocols(self) -> tuple[str, ...]:
        """The protocols an evaluation under this suite measures (:mod:`robustbench_dml.protocols`)."""
        return P.PROTOCOLS if self.engine is None else (P.CORRECTED,)

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

def _strong(base: Suite, suite_id: str, version: int, engine: Engine, how: str) -> Suite:
    """A strong suite on the published suite ``base``: its threat, attacks, targets and batches, each attack run by
    ``engine`` (``how`` says how, for the description)."""
    return Suite(id=suite_id, version=version, eps=base.eps, alpha=base.alpha, steps=base.steps,
                 batch_size=base.batch_size, attacks=base.attacks, engine=engine, base=base.id,
                 description=f"{base.id}'s attacks and targets, each run as {how}")


#: version 1 of the strong suites (PGD + 2 x 24-step APGD with the reference code's integer checkpoints): superseded
#: by version 2, kept so that its results reproduce and load under their hash
_V1 = "PGD + 2 x 24-step APGD, best point kept, random-search check"
RANKAA28_V1 = _strong(ROB28, "rankaa28", 1, Engine(), _V1)
RANKAA224_V1 = _strong(ROB224, "rankaa224", 1, Engine(), _V1)

#: version 2 of the strong suites (the published PGD, a 100-step APGD run from the clean image with the paper's
#: schedule, then one targeted 100-step run, a random restart where the attack has no alternative target: 232
#: gradient evaluations per image; the gradient-free check on 8 queries per batch with Square Attack's window (0.8)
#: for 1,000 proposals): superseded by version 3 once Fashion-MNIST's HM showed the search finding what the
#: gradients miss, kept so that its results reproduce and load under their hash
V2_ENGINE = Engine(schedule="apgd-paper", steps=100, restarts=1, targets=1, check_queries=8, check_steps=1000,
                   check_p_init=0.8)
_V2 = ("PGD + 2 x 100-step APGD (the second targeted where the attack has alternatives), best point kept, "
       "random-search check: 232 gradients per image")
RANKAA28_V2 = _strong(ROB28, "rankaa28", 2, V2_ENGINE, _V2)
RANKAA224_V2 = _strong(ROB224, "rankaa224", 2, V2_ENGINE, _V2)

#: the largest budget of the convergence study (``benchmarks/rankaa_budget.py``): AutoAttack's scale, >= 1,000
#: gradient evaluations and a 5,000-query random search per image and attack
PLUS_ENGINE = Engine(schedule="apgd-paper", steps=100, restarts=5, targets=5, check_queries=0, check_steps=0,
                     search_steps=5000, search_p_init=0.8)
_PLUS = ("PGD + 10 x 100-step APGD (5 targeted where the attack has alternatives) + a 5,000-query random search, "
         "best point kept: 1,032 gradients per image")
RANKAA28PLUS = _strong(ROB28, "rankaa28plus", 1, PLUS_ENGINE, _PLUS)
RANKAA224PLUS = _strong(ROB224, "rankaa224plus", 1, PLUS_ENGINE, _PLUS)

#: version 3 of the strong suites, frozen at the knee of the convergence study (``benchmarks/rankaa_budget.py``:
#: the smallest budget within 0.5 ARS of the largest on every study model): version 2's gradient runs, then the
#: largest budget's random search (5,000 proposals with Square Attack's settings on every query still standing),
#: whose points join the worst case: the largest budget's engine with its first two gradient runs
V3_ENGINE = replace(PLUS_ENGINE, restarts=1, targets=1)
_V3 = ("PGD + 2 x 100-step APGD (the second targeted where the attack has alternatives) + a 5,000-query random "
       "search, best point kept: 232 gradients per image")
RANKAA28 = _strong(ROB28, "rankaa28", 3, V3_ENGINE, _V3)
RANKAA224 = _strong(ROB224, "rankaa224", 3, V3_ENGINE, _V3)


@SUITES.register("rob28")
def rob28() -> Suite:
    return ROB28


@SUITES.register("rob224")
def rob224() -> Suite:
    return ROB224


@SUITES.register("rankaa28")
def rankaa28() -> Suite:
    return RANKAA28


@SUITES.register("rankaa224")
def rankaa224() -> Suite:
    return RANKAA224


@SUITES.register("rankaa28plus")
def rankaa28plus() -> Suite:
    return RANKAA28PLUS


@SUITES.register("rankaa224plus")
def rankaa224plus() -> Suite:
    return RANKAA224PLUS


#: the superseded versions of the built-in suites, by id (the registry holds each suite's current version)
SUPERSEDED: dict[str, tuple[Suite, ...]] = {"rankaa28": (RANKAA28_V1, RANKAA28_V2),
                                             "rankaa224": (RANKAA224_V1, RANKAA224_V2)}

_PINNED = re.compile(r"(?P<id>.+)\.v(?P<version>[1-9][0-9]*)")


def get_suite(suite: str | Suite) -> Suite:
    """The suite ``suite`` names: a registered id (its current version), an id with a version (``rankaa28.v1``,
    as :attr:`Suite.name` writes it), or a :class:`Suite` itself."""
    if isinstance(suite, Suite):
        return suite
    m = _PINNED.fullmatch(suite)
    return SUITES.create(suite) if m is None else suite_version(m["id"], int(m["version"]))


def suite_version(suite_id: str, version: int) -> Suite:
    """Version ``version`` of the registered suite ``suite_id`` (a one-line UserError naming the versions there
    are)."""
    versions = suite_versions(suite_id)
    for s in versions:
        if s.version == version:
            return s
    raise UserError(f"suite {suite_id} has version(s) {', '.join(str(s.version) for s in versions)}, not "
                    f"{version}; `dmlbench list suites` lists them")


def suite_versions(suite_id: str) -> list[Suite]:
    """Every published version of the suite ``suite_id``, oldest first (the last is the current one)."""
    current = SUITES.create(suite_id)
    return sorted({*SUPERSEDED.get(suite_id, ()), current}, key=lambda s: s.version)


def spec_of(suite_id: str, version: int) -> str:
    """The name that selects version ``version`` of ``suite_id`` in a command: ``id.vN`` where the suite has several
    versions, else the bare id (as commands wrote it before a second version existed)."""
    if suite_id in SUITES and len(suite_versions(suite_id)) > 1:
        return f"{suite_id}.v{version}"
    return suite_id


def board_of(spec: str) -> str:
    """The leaderboard a ``--suite`` argument names: a bare id the current version's (:attr:`Suite.board`), ``id.vN``
    version N's, whether or not this installation has it (a store may hold boards of suites, or versions, that are
    not installed here); a bare id that is no installed suite is taken as it is."""
    m = _PINNED.fullmatch(spec)
    if m is not None:
        return board_name(m["id"], int(m["version"]))
    return get_suite(spec).board if spec in SUITES else spec


def superseded(board: str) -> bool:
    """Whether the leaderboard ``board`` is an earlier version's of an installed suite (its rows stay loadable; the
    current version's board is the one that ranks)."""
    m = _PINNED.fullmatch(board)
    suite_id, version = (m["id"], int(m["version"])) if m is not None else (board, 1)  # version 1's is the bare id
    return suite_id in SUITES and version < get_suite(suite_id).version


def find_suite(suite_id: str, version: int | None, suite_hash: str) -> Suite | None:
    """The published suite ``suite_id`` version ``version`` if its hash is ``suite_hash`` (a result made under it
    without overrides), else None."""
    if suite_id not in SUITES or version is None:
        return None
    try:
        suite = suite_version(suite_id, version)
    except UserError:
        return None
    return suite if suite.hash == suite_hash else None


def list_suites(pattern: str = "*") -> list[str]:
    return SUITES.list(pattern)


#: the strong suite of each published suite: what boards rank by by default (as RobustBench ranks by AutoAttack)
STRONG = {"rob28": "rankaa28", "rob224": "rankaa224"}


def base_of(board: str) -> str:
    """The published suite whose attacks the suite of ``board`` (a suite id, or a board name such as ``rankaa28.v3``)
    strengthens: ``rob28`` for every ``rankaa28`` version; "" for a published suite or one not installed here."""
    m = _PINNED.fullmatch(board)
    suite_id = board if m is None else m["id"]
    return SUITES.create(suite_id).base if suite_id in SUITES else ""
