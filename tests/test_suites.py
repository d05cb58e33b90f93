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
    ("rankaa28plus", 1): "a2a6ac7ca18f2b4a347e02b90137f3d32d4aa2856d1aacd82716f56df9bf1d2f",
    ("rankaa224plus", 1): "161b5ed623fb1668be430c73d290f25970828d63ba4963459bf6a5b8538ee57c",
}
ORDER = ["CA+", "CA-", "QA+", "QA-", "TMA", "ES", "LTM", "GTM", "GTT"]


@pytest.mark.parametrize("suite_id", ["rob28", "rob224", "rankaa28", "rankaa224", "rankaa28plus", "rankaa224plus"])
def test_published_hash_is_pinned(suite_id):
    suite = get_suite(suite_id)
    assert suite.hash == PUBLISHED[(suite.id, suite.version)]
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
    custom = Suite("t", 1, 0.1, 0.01, 2, 8, (SuiteAttack("TMA"),))
    assert custom.attack_ids == ["TMA"] and custom.params["attacks"] == [{"id": "TMA", "params": {}}]
