"""Published suites are frozen: their literal parameters and content hashes are pinned."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

import attacks
from attacks.suites import ROB28, ROB224, SUITES, Suite, SuiteAttack, get_suite, list_suites
from robustbench_dml.errors import UserError

# Changing a published suite must fail here: publish a new suite version (a new hash) instead.
PUBLISHED = {
    ("rob28", 1): "d1c66682f6808362e27ab34cbeea4022a070a330749d14cc378be27ea2b67965",
    ("rob224", 1): "8093a82f2f5d156a4916bb68361653f5ca6267cd678e021ad5581b01c7a3f54b",
    ("rankaa28", 1): "630d9fa8845d90a02d849a3dcdcf10758438eb7e85038c763e72adcd09a1a123",
    ("rankaa224", 1): "1c574df4b6317bd4f89c6ac398debdfc40b5f5bb1d11b7d543a2c3b3ce471996",
    ("rankaa28", 2): "2bc7e0e98a22c00e6a7c903e003f5cd73b160efddf88814b8c1fa9e698c7ae22",
    ("rankaa224", 2): "910445880544fda23a88e1141b0d073dc3453462ee602d45a9d6f029dfbe2f0d",
    ("rankaa28", 3): "329abc946f49c35a970c865614e27106c6a424e6843d59f3913602462286687e",
    ("rankaa224", 3): "33065985d8c8dbcbbc9da26edc7425925a42be0627928a15cedeea82387613aa",
    ("rankaa28plus", 1): "a2a6ac7ca18f2b4a347e02b90137f3d32d4aa2856d1aacd82716f56df9bf1d2f",
    ("rankaa224plus", 1): "161b5ed623fb1668be430c73d290f25970828d63ba4963459bf6a5b8538ee57c",
}
ORDER = ["CA+", "CA-", "QA+", "QA-", "TMA", "ES", "LTM", "GTM", "GTT"]


@pytest.mark.parametrize("key", sorted(PUBLISHED))
def test_published_hash_is_pinned(key):
    suite = get_suite(f"{key[0]}.v{key[1]}")
    assert (suite.id, suite.version) == key and suite.hash == PUBLISHED[key]
    # the hash is the sha256 of the canonical JSON, recomputed here independently
    canonical = json.dumps({"id": suite.id, "version": suite.version, "params": suite.params}, sort_keys=True,
                           separators=(",", ":"))
    assert hashlib.sha256(canonical.encode()).hexdigest() == suite.hash


def test_literal_parameters_of_attacks_md():
    assert (ROB28.eps, ROB28.alpha, ROB28.steps, ROB28.batch_size) == (0.30196, 0.011764, 32, 128)
    assert (ROB224.eps, ROB224.alpha, ROB224.steps, ROB224.batch_size) == (0.03137, 0.011764, 32, 112)
    for s in (ROB28, ROB224):
        assert s.attack_ids == ORDER
        assert s.attack("CA+").kwargs() == {"W": 1} and s.attack("CA-").kwargs() == {"W": 1}
        assert s.attack("QA+").kwargs() == {"M": 1} and s.attack("QA-").kwargs() == {"M": 1}
        assert all(s.attack(a).kwargs() == {} for a in ORDER[4:])
        assert set(s.attack_ids) <= set(attacks.list_attacks())


def test_suites_are_frozen_and_any_change_changes_the_hash():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ROB28.eps = 0.3
    changed = dataclasses.replace(ROB28, steps=31)
    assert changed.hash != ROB28.hash
    assert dataclasses.replace(ROB28, version=2).hash != ROB28.hash
    assert dataclasses.replace(ROB28, description="other words").hash == ROB28.hash


def test_registry():
    assert list_suites() == ["rankaa224", "rankaa224plus", "rankaa28", "rankaa28plus", "rob224", "rob28"]
    assert list_suites("*plus") == ["rankaa224plus", "rankaa28plus"]
    assert SUITES.create("rob28") is ROB28
    assert get_suite(ROB224) is ROB224
    with pytest.raises(UserError, match="unknown suite"):
        get_suite("rob32")
    assert get_suite("rankaa28") is get_suite("rankaa28.v3") and get_suite("rankaa28.v1").version == 1
    with pytest.raises(UserError, match="rankaa28 has version"):
        get_suite("rankaa28.v4")
    with pytest.raises(UserError, match="unknown suite"):
        get_suite("rob32.v1")
    custom = Suite("t", 1, 0.1, 0.01, 2, 8, (SuiteAttack("TMA"),))
    assert custom.attack_ids == ["TMA"] and custom.params["attacks"] == [{"id": "TMA", "params": {}}]


def test_version_3_is_the_knee_of_the_budget_study_and_earlier_versions_load_unchanged():
    """rankaa28 v3 runs the first two gradient runs of rankaa28plus and then that suite's search, so its gradient
    part is the study's ``g232`` step; versions 1 and 2 keep their engines (and hashes) and each version has its
    own board."""
    from attacks.suites import base_of, board_of, find_suite, spec_of, superseded

    v1, v2, v3 = get_suite("rankaa28.v1"), get_suite("rankaa28.v2"), get_suite("rankaa28")
    plus = get_suite("rankaa28plus")
    assert (v1.engine.schedule, v1.engine.steps, v1.engine.restarts, v1.engine.check_p_init) == ("apgd", 24, 2, 0.05)
    for strong in (v2, v3):
        assert (strong.engine.schedule, strong.engine.steps, strong.engine.restarts + strong.engine.targets) == \
            ("apgd-paper", 100, 2)
        assert strong.engine.ladder(strong.steps)[:3] == plus.engine.ladder(plus.steps)[:3] == ["g32", "g132", "g232"]
        assert strong.engine.targets == 1 and plus.engine.targets >= 1  # the second run: the plus run's first target
    # version 2 checks 8 queries per batch; version 3 joins the plus suite's search on every query
    assert (v2.engine.check_queries, v2.engine.search_steps) == (8, 0)
    assert (v3.engine.check_queries, v3.engine.search_steps, v3.engine.search_p_init) == \
        (0, plus.engine.search_steps, plus.engine.search_p_init) == (0, 5000, 0.8)
    assert v3.engine.ladder(v3.steps)[-1] == "g232+s5000"
    assert (v1.board, v2.board, v3.board, plus.board) == ("rankaa28", "rankaa28.v2", "rankaa28.v3", "rankaa28plus")
    assert find_suite("rankaa28", 1, v1.hash) is v1 and find_suite("rankaa28", 2, v1.hash) is None
    assert find_suite("rankaa28", 2, v2.hash) is v2 and find_suite("nope", 1, v1.hash) is None
    # the names a command uses: a bare id is the current version's board, id.vN version N's (installed or not),
    # and a recorded command pins the version wherever a suite has several
    assert [board_of(s) for s in ("rankaa28", "rankaa28.v1", "rankaa28.v2", "rankaa28.v9", "rob28", "mine")] == \
        ["rankaa28.v3", "rankaa28", "rankaa28.v2", "rankaa28.v9", "rob28", "mine"]
    # the boards of earlier versions (version 1's under the bare id), not the current one, a later one or another's
    assert [superseded(b) for b in ("rankaa28", "rankaa28.v2", "rankaa28.v3", "rankaa28.v9", "rob28", "rankaa28plus",
                                    "mine", "mine.v1")] == [True, True, False, False, False, False, False, False]
    # the published suite each board's suite strengthens, by id or board name (none for a published or unknown one)
    assert [base_of(b) for b in ("rankaa28", "rankaa28.v2", "rankaa224.v3", "rankaa28plus", "rob28", "mine")] == \
        ["rob28", "rob28", "rob224", "rob28", "", ""]
    assert (spec_of("rankaa28", 1), spec_of("rankaa28", 3), spec_of("rob28", 1)) == ("rankaa28.v1", "rankaa28.v3",
                                                                                     "rob28")
