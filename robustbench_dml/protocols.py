"""The two measurement protocols every evaluation reports: ``corrected`` (the default) and ``robrank``.

RobRank's reference code, with which every published number of this field was measured, has four quirks
(``docs/protocol.md``, Quirks): ES:D is measured one PGD step early (Q1), GTM attacks the wrong target (Q2), LTM
keeps the query's own gallery copy among its positives (Q3) and the reported values are means of per-batch means
(Q4). ``corrected`` fixes all four; ``robrank`` reproduces them, so its numbers sit beside the papers' rows.

The two differ by several ERS/ARS points on the same model, so a number is never shown without its protocol and a
table never mixes them. Q1 and Q4 cost nothing to report both ways (the same PGD run, measured or averaged
differently); Q2 and Q3 change the targets, so an evaluation runs GTM and LTM once per protocol.
"""

from __future__ import annotations

from robustbench_dml.errors import UserError

CORRECTED = "corrected"
ROBRANK = "robrank"
#: every protocol, the default first
PROTOCOLS: tuple[str, ...] = (CORRECTED, ROBRANK)
DEFAULT = CORRECTED
DESCRIPTIONS = {
    CORRECTED: "RobRank's attacks with its quirks Q1-Q4 fixed",
    ROBRANK: "RobRank's attacks as its reference code measures them (quirks Q1-Q4), as in the papers",
}


def check(protocol: str) -> str:
    """``protocol`` if it is one of :data:`PROTOCOLS`, else a one-line UserError."""
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol {protocol!r}; choose {' or '.join(PROTOCOLS)}")
    return protocol


def add_argument(parser, *, help_suffix: str = "") -> None:
    """``--protocol`` for the commands that show numbers."""
    parser.add_argument("--protocol", choices=PROTOCOLS, default=DEFAULT,
                        help=f"which measurement protocol to show (default {DEFAULT}; {ROBRANK}: as the papers "
                             f"measured, the only one shown beside their rows){help_suffix}")
