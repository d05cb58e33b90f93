"""The result vocabulary, defined once: every metric's key (the papers' column name), record field, unit, direction
and display decimals. Records, leaderboard frames, tables, the terminal report, plots and the reference rows read
their column lists from here; the score formulas and their inverses live in :mod:`robustbench_dml.scoring`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Metric", "BENIGN", "SPACE", "ATTACKS", "SCORES", "WORST", "ALL", "BY_KEY", "BENIGN_KEYS", "SPACE_KEYS",
           "ATTACK_KEYS", "SCORE_KEYS", "WORST_KEYS", "LOWER_IS_BETTER", "DEFENSE_TITLES", "UNIT_BOUNDS",
           "defense_title", "defense_variant", "field_name", "out_of_range"]


@dataclass(frozen=True)
class Metric:
    key: str                 # the papers' column name, e.g. "CA+"
    field: str               # the record's attribute / JSON key, e.g. "ca_plus"
    unit: str
    higher_is_better: bool
    decimals: int = 1        # in tables and reports

    @property
    def bounds(self) -> tuple[float, float]:
        """The closed range every value of this metric lies in (its unit's: :data:`UNIT_BOUNDS`)."""
        return UNIT_BOUNDS[self.unit]


def _m(key: str, field: str, unit: str, higher: bool = True, decimals: int = 1) -> Metric:
    return Metric(key, field, unit, higher, decimals)


_PCT = "percent"
#: the range of each unit; a value outside it (beyond rounding, :data:`BOUNDS_SLACK`) is a damaged or edited result
UNIT_BOUNDS: dict[str, tuple[float, float]] = {
    _PCT: (0.0, 100.0), "percent of the gallery": (0.0, 100.0), "score": (0.0, 100.0), "cosine": (-1.0, 1.0),
    "distance (0-2)": (0.0, 2.0), "ratio": (0.0, float("inf"))}
BOUNDS_SLACK = 1e-6
#: benign retrieval over the whole test split
BENIGN: tuple[Metric, ...] = (
    _m("R@1", "r1", _PCT), _m("R@2", "r2", _PCT), _m("mAP", "map", _PCT), _m("MAP@R", "map_at_r", _PCT),
    _m("mAP@10", "map_at_10", _PCT), _m("NMI", "nmi", _PCT))
#: the collapse diagnostic of the test embeddings (normalised): mean intra- and inter-class distance and their ratio,
#: CA-TRIDE's entanglement (``docs/training.md``, Collapse); the result's benign block names them by the field
SPACE: tuple[Metric, ...] = (
    _m("intra_class_distance", "intra_class_distance", "distance (0-2)", False, 3),
    _m("inter_class_distance", "inter_class_distance", "distance (0-2)", True, 3),
    _m("entanglement", "entanglement", "ratio", False, 3))
#: the raw result of every attack of the suites, in the papers' order (``docs/protocol.md``, The attacks)
ATTACKS: tuple[Metric, ...] = (
    _m("CA+", "ca_plus", "percent of the gallery"), _m("CA-", "ca_minus", "percent of the gallery", False),
    _m("QA+", "qa_plus", "percent of the gallery"), _m("QA-", "qa_minus", "percent of the gallery", False),
    _m("TMA", "tma", "cosine", False, 3), _m("ES:D", "es_d", "distance (0-2)", False, 3),
    _m("ES:R", "es_r", _PCT), _m("LTM", "ltm", _PCT), _m("GTM", "gtm", _PCT), _m("GTT", "gtt", _PCT))
#: the scores and their bootstrap interval bounds (0-100, higher is more robust)
SCORES: tuple[Metric, ...] = (
    _m("ERS", "ers", "score"), _m("ARS", "ars", "score"), _m("ERS_lo", "ers_lo", "score"),
    _m("ERS_hi", "ers_hi", "score"), _m("ARS_lo", "ars_lo", "score"), _m("ARS_hi", "ars_hi", "score"))
#: worst cases: percent of queries broken by any attack of the suite, or of one threat (``scoring.THREATS``)
WORST: tuple[Metric, ...] = (
    _m("worst_case", "worst_case", _PCT, False), _m("WC:candidate", "wc_candidate", _PCT, False),
    _m("WC:query", "wc_query", _PCT, False), _m("WC:recall", "wc_recall", _PCT, False))

ALL: tuple[Metric, ...] = BENIGN + SPACE + ATTACKS + SCORES + WORST
BY_KEY: dict[str, Metric] = {m.key: m for m in ALL}
BENIGN_KEYS = tuple(m.key for m in BENIGN)
SPACE_KEYS = tuple(m.key for m in SPACE)
ATTACK_KEYS = tuple(m.key for m in ATTACKS)
SCORE_KEYS = tuple(m.key for m in SCORES)
WORST_KEYS = tuple(m.key for m in WORST)
LOWER_IS_BETTER = frozenset(m.key for m in ALL if not m.higher_is_better)


#: how tables name the built-in defenses (the papers' acronyms); a defense not listed (a plugin) shows its id
DEFENSE_TITLES: dict[str, str] = {"vanilla": "Vanilla", "est": "EST", "act": "ACT", "hm": "HM",
                                  "ca_tride": "CA-TRIDE", "mdprop": "MDProp"}


def defense_title(defense_id: str, config: str | None = None) -> str:
    """The name a table gives a measured row's defense (:data:`DEFENSE_TITLES`, else the id), followed by its
    variant when ``config`` (the record's ``defense_config`` JSON) sets a categorical option away from the
    defense's default: ``CA-TRIDE (weighting=released)``, ``CA-TRIDE (mode=anp)``. Numbers (steps, eps, alpha) are
    budget, shown in their own columns, not variants."""
    title = DEFENSE_TITLES.get(defense_id, defense_id)
    variant = defense_variant(defense_id, config) if config else ""
    return f"{title} ({variant})" if variant else title


def defense_variant(defense_id: str, config: str) -> str:
    """``name=value`` of every option of a defense's configuration whose type is a string or a boolean and whose
    value is not the default (an ``*_alias`` field records an old name, not a variant); "" for an unknown defense
    or unreadable configuration."""
    import dataclasses
    import json

    import defenses
    from robustbench_dml.errors import UserError

    try:
        cls = defenses.DEFENSES.get(defense_id).Config
        values = json.loads(config)
    except (UserError, AttributeError, ValueError):  # a plugin not installed here, unreadable JSON: no variant
        return ""
    parts = []
    for f in dataclasses.fields(cls):
        if f.name.endswith("_alias") or f.name not in values or f.default is dataclasses.MISSING:
            continue
        value = values[f.name]
        if isinstance(value, (str, bool)) and value != f.default:
            parts.append(f"{f.name}={value}")
    return ", ".join(parts)


def out_of_range(key: str, value: float) -> str | None:
    """None when ``value`` lies in metric ``key``'s range, else the range as text (``"[0, 100]"``)."""
    lo, hi = BY_KEY[key].bounds
    if lo - BOUNDS_SLACK <= value <= hi + BOUNDS_SLACK:
        return None
    return f"[{lo:g}, {hi:g}]"


def field_name(key: str) -> str:
    """The record field of a column key (``"CA+"`` -> ``"ca_plus"``)."""
    return BY_KEY[key].field
