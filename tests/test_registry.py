import pytest

from robustbench_dml.errors import UserError
from robustbench_dml.registry import Registry


def test_register_list_create_and_glob():
    reg = Registry("widget")

    @reg.register("alpha_one")
    def make(x=1):
        return ("alpha", x)

    reg.register("beta")(lambda: "b")
    assert reg.list() == ["alpha_one", "beta"]
    assert reg.list("*one") == ["alpha_one"]
    assert reg.create("alpha_one", x=5) == ("alpha", 5)
    assert "beta" in reg and "gamma" not in reg


def test_unknown_id_suggests_close_match_in_one_line():
    reg = Registry("widget")
    reg.register("ca_tride")(lambda: 0)
    with pytest.raises(UserError) as e:
        reg.get("ca-tride")
    assert "did you mean ca_tride" in str(e.value) and "\n" not in str(e.value)


def test_double_registration_of_a_different_factory_fails():
    reg = Registry("widget")
    reg.register("x")(lambda: 1)
    with pytest.raises(ValueError):
        reg.register("x")(lambda: 2)


@pytest.mark.parametrize("kind", ["datasets", "backbones", "defenses"])
def test_builtin_registries_are_populated(kind):
    from robustbench_dml.cli.list import _registry

    names = _registry(kind).list()
    expected = {"datasets": {"digits", "mnist", "fashion", "cub", "cars", "sop"},
                "backbones": {"c2f2", "c2f2bn", "resnet18", "resnet50"},
                "defenses": {"vanilla", "est", "act", "hm", "ca_tride", "mdprop"}}[kind]
    assert expected <= set(names)
