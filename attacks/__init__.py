"""The ranking-attack zoo (RobRank's suite), one algorithm per file, registered under paper acronyms.

``create(id, model=model, eps=, alpha=, steps=, **params)`` builds an attack (``W`` for CA+/CA-, ``M`` for
QA+/QA-, ``robrank_compat`` for all); ``list_attacks()`` lists the ids. Third-party attacks register through the
entry-point group ``dmlbench.attacks``. The call shape and result units are described in :mod:`attacks.base`.
"""

from __future__ import annotations

from attacks.base import AttackOutput, RankingAttack
from robustbench_dml.registry import Registry

ATTACKS: Registry = Registry("attack")


def _register_builtin() -> None:
    from attacks.candidate import CandidateAttackMinus, CandidateAttackPlus
    from attacks.embedding_shift import EmbeddingShift
    from attacks.gtm import GreedyTop1Misranking
    from attacks.gtt import GreedyTop1Translocation
    from attacks.ltm import LearningToMisrank
    from attacks.query import QueryAttackMinus, QueryAttackPlus
    from attacks.tma import TargetedMismatch

    for cls in (CandidateAttackPlus, CandidateAttackMinus, QueryAttackPlus, QueryAttackMinus, TargetedMismatch,
                EmbeddingShift, LearningToMisrank, GreedyTop1Misranking, GreedyTop1Translocation):
        ATTACKS.register(cls.id)(cls)


_register_builtin()


def create(name: str, **cfg) -> RankingAttack:
    """Build registered attack ``name`` (e.g. ``create("CA+", model=m, eps=0.3, alpha=0.01, steps=32, W=1)``)."""
    return ATTACKS.create(name, **cfg)


def list_attacks(pattern: str = "*") -> list[str]:
    return ATTACKS.list(pattern)


__all__ = ["ATTACKS", "AttackOutput", "RankingAttack", "create", "list_attacks"]
