"""The ranking-attack zoo (RobRank's suite), one algorithm per file, registered under paper acronyms.

``create(id, model=model, eps=, alpha=, steps=, **params)`` builds an attack (``W`` for CA+/CA-, ``M`` for
QA+/QA-, ``robrank_compat`` for all); ``list_attacks()`` lists the ids. Third-party attacks register through the
entry-point group ``dmlbench.attacks``. The call shape and result units are described in :mod:`attacks.base`.
"""

from __future__ import annotations

from attacks.base import ATTACKS, AttackOutput, RankingAttack


def create(name: str, **cfg) -> RankingAttack:
    """Build registered attack ``name`` (e.g. ``create("CA+", model=m, eps=0.3, alpha=0.01, steps=32, W=1)``)."""
    return ATTACKS.create(name, **cfg)


def list_attacks(pattern: str = "*") -> list[str]:
    return ATTACKS.list(pattern)


__all__ = ["ATTACKS", "AttackOutput", "RankingAttack", "create", "list_attacks"]
