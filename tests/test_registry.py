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


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """A real installed distribution (dist-info with entry points) whose module sits on sys.path."""
    (tmp_path / "dml_plugin_demo.py").write_text("def make(scale=1):\n    return ('plugin widget', scale)\n")
    info = tmp_path / "dml_plugin_demo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dml-plugin-demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[dmlbench.widgets]\nplugged = dml_plugin_demo:make\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_an_entry_point_plugin_is_listed_and_created(installed_plugin):
    reg = Registry("widget")
    reg.register("builtin")(lambda: "b")
    assert reg.list() == ["builtin", "plugged"]
    assert reg.create("plugged", scale=3) == ("plugin widget", 3)


def test_a_plugin_reusing_a_builtin_id_is_a_clear_error(installed_plugin):
    reg = Registry("widget")
    reg.register("plugged")(lambda: "the built-in one")
    for _ in range(2):  # every lookup says so, not just the first
        with pytest.raises(UserError) as e:
            reg.list()
        assert "dml_plugin_demo:make" in str(e.value) and "'plugged'" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("kind", ["datasets", "backbones", "defenses", "attacks", "suites"])
def test_every_registry_lists_under_one_name(kind):
    import importlib

    module = {"datasets": "robustbench_dml.datasets", "backbones": "robustbench_dml.backbones",
              "defenses": "defenses", "attacks": "attacks", "suites": "attacks.suites"}[kind]
    lister = getattr(importlib.import_module(module), f"list_{kind}")
    assert lister() and lister() == sorted(lister()) and lister("*") == lister()


@pytest.mark.parametrize("aid", __import__("attacks").list_attacks())
def test_each_attack_registers_under_its_own_id(aid):
    # the decorator id and the class's id (what results, suites and state files are keyed by) are the same string
    import attacks

    assert attacks.ATTACKS.get(aid).id == aid


def test_a_foreign_attacks_package_first_on_the_path_is_a_one_line_error(tmp_path):
    # a real process whose working directory holds another project's ``attacks`` package (first on sys.path)
    import subprocess
    import sys

    (tmp_path / "attacks").mkdir()
    (tmp_path / "attacks" / "__init__.py").write_text("NOT_OURS = True\n")
    import robustbench_dml

    home = str(__import__("pathlib").Path(robustbench_dml.__file__).resolve().parent.parent)
    proc = subprocess.run([sys.executable, "-c", "import sys; sys.path.append(sys.argv[1]); import robustbench_dml",
                           home], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: the import name 'attacks' resolves to") and str(tmp_path) in last
    ok = subprocess.run([sys.executable, "-c", "import sys; sys.path.append(sys.argv[1]); import robustbench_dml",
                         home], cwd=tmp_path.parent, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
