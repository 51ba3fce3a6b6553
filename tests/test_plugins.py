"""Plugin discovery through entry points, failures, conflicts, disabling, the API version."""
import json
import re
import os
import subprocess
import sys
import textwrap

import pytest

import corenet
from corenet import hookspecs
from corenet.errors import PluginError
from corenet.registry import Registry, registry


def make_distribution(folder, name, module, source, entry_point=None):
    """A minimal installed distribution (dist-info + module) that importlib.metadata finds."""
    (folder / f"{module}.py").write_text(textwrap.dedent(source))
    info = folder / f"{name.replace('-', '_')}-1.2.dist-info"  # as pip names it
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2\n")
    (info / "entry_points.txt").write_text(f"[corenet]\n{entry_point or module} = {module}\n")


def run_python(code, folder, **env):
    environment = dict(os.environ, PYTHONPATH=str(folder), **env)
    # cwd: the folder, not the checkout, so that the installed corenet is imported.
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=environment, timeout=120, cwd=folder)


GOOD_PLUGIN = """
    import corenet

    class Double(corenet.Layer):
        name = "double"
        def forward(self, x):
            return 2 * x
        def backward(self, grad):
            return 2 * grad

    @corenet.hookimpl
    def corenet_layers():
        return [Double]
"""


def test_builtins_come_from_entry_points():
    plugins = registry.load().plugins
    assert {"dense", "activations", "losses"} <= set(plugins)
    assert plugins["dense"].distribution == "corenet"
    assert set(plugins["dense"].layers) == {"linear", "maxout", "add", "concat", "dropout",
                                            "batch_norm1d", "batch_norm2d", "layer_norm"}
    assert registry.provider("layers", "relu").name == "activations"


def test_import_corenet_loads_no_plugin(tmp_path):
    result = run_python("""
        import sys, corenet
        print(sorted(m for m in sys.modules if m.startswith("corenet_")))
        corenet.layers.ReLU
        print(sorted(m for m in sys.modules if m.startswith("corenet_")))
    """, tmp_path)
    lines = result.stdout.splitlines()
    assert lines[0] == "[]", result.stderr
    assert "corenet_activations" in lines[1]


def test_third_party_plugin_is_found_and_listed(tmp_path):
    make_distribution(tmp_path, "corenet-double", "corenet_double", GOOD_PLUGIN)
    result = run_python("""
        import numpy as np, corenet.layers as L
        print(L.Double().forward(np.ones(2)).tolist())
    """, tmp_path)
    assert result.stdout.strip() == "[2.0, 2.0]", result.stderr
    listing = subprocess.run([sys.executable, "-m", "corenet.cli", "plugins", "--json"],
                             capture_output=True, text=True, timeout=120, cwd=tmp_path,
                             env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    plugins = {p["name"]: p for p in json.loads(listing.stdout)["plugins"]}
    assert plugins["corenet_double"] == {"name": "corenet_double",
                                         "distribution": "corenet-double", "version": "1.2",
                                         "layers": ["double"], "losses": [], "error": None,
                                         "disabled": False}


def test_broken_plugin_is_skipped_with_a_warning_naming_its_distribution(tmp_path):
    make_distribution(tmp_path, "corenet-broken", "corenet_broken",
                      "raise ImportError('undefined symbol: __pyx_abi_mismatch')\n")
    result = run_python("""
        import corenet.layers as L
        print(len(L.names()))
    """, tmp_path)
    assert result.returncode == 0
    assert "skipping plugin 'corenet_broken' from distribution 'corenet-broken'" in result.stderr
    assert "undefined symbol" in result.stderr
    listing = subprocess.run([sys.executable, "-m", "corenet.cli", "plugins"], text=True,
                             capture_output=True, cwd=tmp_path,
                             env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    assert "FAILED: ImportError: undefined symbol" in listing.stdout
    missing = run_python("import corenet.layers as L; L.Broken", tmp_path)
    assert "MissingClassError: corenet.layers has no layer class 'Broken'" in missing.stderr
    assert "plugin 'corenet_broken' (distribution 'corenet-broken'), which may provide it, " \
        "failed to load (ImportError: undefined symbol" in missing.stderr
    strict = run_python("import corenet.layers as L; L.names()", tmp_path,
                        CORENET_STRICT_PLUGINS="1")
    assert strict.returncode != 0
    assert "PluginError: CORENET_STRICT_PLUGINS is on and a plugin failed: plugin " \
        "'corenet_broken' from distribution 'corenet-broken'" in strict.stderr


def test_two_plugins_with_one_layer_name_is_an_error_naming_both(tmp_path):
    make_distribution(tmp_path, "corenet-relu-again", "corenet_relu_again", """
        import corenet
        class ReLU(corenet.Layer):
            name = "relu"
        @corenet.hookimpl
        def corenet_layers():
            return [ReLU]
    """)
    result = run_python("import corenet.layers as L; L.names()", tmp_path)
    assert "layer 'relu' is provided by two plugins" in result.stderr
    assert "'corenet'" in result.stderr and "'corenet-relu-again'" in result.stderr
    disabled = run_python("import corenet.layers as L; print(L.names())", tmp_path,
                          CORENET_DISABLE_PLUGINS="corenet_relu_again")
    assert "'relu'" in disabled.stdout, disabled.stderr


def test_disabling_plugins_and_unknown_names(tmp_path):
    result = run_python("import corenet.layers as L; print(L.names())", tmp_path,
                        CORENET_DISABLE_PLUGINS="activations")
    assert "'relu'" not in result.stdout and "'linear'" in result.stdout
    unknown = run_python("import corenet.layers as L; L.names()", tmp_path,
                         CORENET_DISABLE_PLUGINS="nope")
    assert "CORENET_DISABLE_PLUGINS names unknown plugins ['nope']" in unknown.stderr


def test_plugin_api_mismatch_is_reported_with_the_distribution(register_plugin):
    class OldPlugin:
        CORENET_PLUGIN_API = corenet.PLUGIN_API + 1

        @corenet.hookimpl
        def corenet_layers(self):
            return []

    with pytest.warns(RuntimeWarning, match="from distribution 'corenet-old'.*plugin API"):
        info = register_plugin(OldPlugin(), "old", distribution="corenet-old")
    assert "built for corenet plugin API" in info.error


def test_registered_object_provides_layers_and_losses(register_plugin):
    class Identity(corenet.Layer):
        name = "identity_for_test"

    class Zero(corenet.Loss):
        name = "zero_for_test"

    class Plugin:
        @corenet.hookimpl
        def corenet_layers(self):
            return [Identity]

        @corenet.hookimpl
        def corenet_losses(self):
            return [Zero]

    register_plugin(Plugin(), "in-test")
    assert corenet.layers.create("identity_for_test").name == "identity_for_test"
    assert type(corenet.losses.create("zero_for_test")) is Zero


def test_a_misspelt_hook_fails_the_plugin_with_the_right_name(register_plugin):
    class Plugin:
        @corenet.hookimpl
        def corenet_layer(self):  # corenet_layers
            return []

    with pytest.warns(RuntimeWarning, match="corenet_layer is not a corenet hook "
                                            r"\(did you mean 'corenet_layers'"):
        info = register_plugin(Plugin(), "misspelt")
    assert "the hooks are corenet_layers, corenet_losses, corenet_onnx_exporters" in info.error
    assert not registry.plugin_manager.has_plugin("misspelt")


def test_a_hook_without_its_marker_fails_the_plugin(register_plugin):
    class Identity(corenet.Layer):
        name = "identity_unmarked"

    class Plugin:
        def corenet_layers(self):
            return [Identity]

    with pytest.warns(RuntimeWarning, match="corenet_layers is not marked @corenet.hookimpl"):
        info = register_plugin(Plugin(), "unmarked")
    assert info.error and "identity_unmarked" not in registry.layers


@pytest.mark.parametrize("make_plugin, message", [
    (lambda: type("ListPlugin", (), {"corenet_layers": []})(),
     "corenet_layers must be a function marked @corenet.hookimpl, got list"),
    (lambda: type("ClassPlugin", (), {"corenet_layers": corenet.hookimpl(lambda self: [])}),
     r"is the class ClassPlugin: register an instance of it \(ClassPlugin\(\)\)"),
], ids=["a list", "a class"])
def test_a_hook_that_is_not_a_function_or_a_plugin_that_is_a_class_fails(
        make_plugin, message, register_plugin):
    with pytest.warns(RuntimeWarning, match=message):
        info = register_plugin(make_plugin(), "not-a-function")
    assert info.error


def test_the_listing_says_when_a_plugin_provides_no_layer(register_plugin, capsys):
    from corenet.cli import main

    class Plugin:
        @corenet.hookimpl
        def corenet_layers(self):
            return []

    register_plugin(Plugin(), "empty", distribution="corenet-empty")
    assert main(["plugins"]) == 0
    listing = capsys.readouterr().out
    assert "empty  (corenet-empty 0.0)\n  provides no layers or losses\n" in listing


def test_conflict_inside_registry_names_both_distributions(register_plugin):
    class Linear(corenet.Layer):
        name = "linear"

    class Plugin:
        @corenet.hookimpl
        def corenet_layers(self):
            return [Linear]

    with pytest.raises(PluginError, match="'corenet' and distribution 'other-dist'"):
        register_plugin(Plugin(), "clash", distribution="other-dist")
    assert registry.layer("linear").__module__ == "corenet_dense.linear"


def test_every_hook_is_documented_and_exercised():
    hooks = [name for name in dir(hookspecs) if name.startswith("corenet_")]
    assert hooks == ["corenet_layers", "corenet_losses", "corenet_onnx_exporters"]
    for name in hooks:
        assert getattr(hookspecs, name).__doc__.strip()
    # The first two are exercised by test_registered_object_provides_layers_and_losses,
    # corenet_onnx_exporters by tests/test_onnx.py::test_a_plugin_exports_its_layer.
    fresh = Registry()
    fresh.load()
    assert fresh.layers and fresh.losses


# -- plugins that end the process, strictness, what a plugin may register ------------------

@pytest.mark.parametrize("source, error", [
    ("import sys\nsys.exit(3)\n", "SystemExit: 3"),
    ("class Abort(BaseException):\n    pass\nraise Abort('gave up')\n", "Abort: gave up"),
    ("import corenet, sys\n@corenet.hookimpl\ndef corenet_layers():\n    sys.exit('no')\n",
     "SystemExit: no"),
], ids=["sys.exit at import", "BaseException at import", "sys.exit in a hook"])
def test_a_plugin_raising_a_base_exception_is_isolated(tmp_path, source, error):
    make_distribution(tmp_path, "corenet-quits", "corenet_quits", source)
    result = run_python("""
        import corenet.layers as L
        print("still running", "relu" in L.names())
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "still running True"
    assert f"skipping plugin 'corenet_quits' from distribution 'corenet-quits': {error}" \
        in result.stderr
    listing = subprocess.run([sys.executable, "-m", "corenet.cli", "plugins"], text=True,
                             capture_output=True, cwd=tmp_path,
                             env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    assert f"FAILED: {error}" in listing.stdout, listing.stderr


def test_keyboard_interrupt_while_importing_a_plugin_is_not_swallowed(tmp_path):
    # Ctrl-C during plugin loading is the user stopping the program, not a broken plugin.
    make_distribution(tmp_path, "corenet-slow", "corenet_slow", "raise KeyboardInterrupt\n")
    result = run_python("""
        import corenet.layers as L
        try:
            L.names()
        except KeyboardInterrupt:
            print("interrupted")
    """, tmp_path)
    assert result.stdout.strip() == "interrupted", result.stderr


STRICT_TWICE = """
    import corenet.layers as L
    for attempt in (1, 2):
        try:
            L.names()
            print(attempt, "loaded")
        except corenet.PluginError as error:
            print(attempt, "raised", error)
"""


@pytest.mark.parametrize("value", ["1", "true", "YES", " yes "])
def test_strict_plugins_raises_on_every_use(tmp_path, value):
    make_distribution(tmp_path, "corenet-broken", "corenet_broken", "raise ImportError('x')\n")
    result = run_python("import corenet\n" + textwrap.dedent(STRICT_TWICE), tmp_path,
                        CORENET_STRICT_PLUGINS=value)
    expected = ("raised CORENET_STRICT_PLUGINS is on and a plugin failed: plugin "
                "'corenet_broken' from distribution 'corenet-broken' failed to load: "
                "ImportError: x")
    assert result.stdout.splitlines() == [f"1 {expected}", f"2 {expected}"], result.stderr


@pytest.mark.parametrize("value", ["0", "false", "No", ""])
def test_strict_plugins_off_warns_and_goes_on(tmp_path, value):
    make_distribution(tmp_path, "corenet-broken", "corenet_broken", "raise ImportError('x')\n")
    result = run_python("import corenet\n" + textwrap.dedent(STRICT_TWICE), tmp_path,
                        CORENET_STRICT_PLUGINS=value)
    assert result.stdout.splitlines() == ["1 loaded", "2 loaded"], result.stderr
    assert "skipping plugin 'corenet_broken'" in result.stderr


def test_strict_plugins_with_another_value_is_an_error(tmp_path):
    result = run_python("import corenet\n" + textwrap.dedent(STRICT_TWICE), tmp_path,
                        CORENET_STRICT_PLUGINS="maybe")
    expected = "raised CORENET_STRICT_PLUGINS must be one of 0, 1, true, false, yes, no; " \
        "got 'maybe'"
    assert result.stdout.splitlines() == [f"1 {expected}", f"2 {expected}"], result.stderr


class Good(corenet.Layer):
    name = "good_layer"


def named(name):
    return type("Named", (corenet.Layer,), {"name": name})


@pytest.mark.parametrize("provided, error", [
    (named("Double"), "must have a snake_case identifier as its 'name'.*got 'Double'"),
    (named("my-layer"), "got 'my-layer'"),
    (named("2x"), "got '2x'"),
    (named("double_"), "got 'double_'"),
    (named(""), "got ''"),
    (named(7), "got 7"),
    (type("NoBase", (), {"name": "no_base"}), "which is not a subclass of corenet.Layer"),
    (Good(), "returned Good\\(\\), which is not a subclass of corenet.Layer"),
    (type("Lossy", (corenet.Loss,), {"name": "lossy"}), "not a subclass of corenet.Layer"),
], ids=["CamelCase", "hyphen", "digit first", "trailing underscore", "empty", "int",
        "not a Layer", "an instance", "a Loss as a layer"])
def test_a_plugin_registering_a_bad_name_or_class_fails(register_plugin, provided, error):
    class Plugin:
        @corenet.hookimpl
        def corenet_layers(self):
            return [Good, provided]

    with pytest.warns(RuntimeWarning, match="skipping plugin 'bad'"):
        info = register_plugin(Plugin(), "bad", distribution="corenet-bad")
    assert info.error.startswith("PluginError: ")
    assert re.search(error, info.error), info.error
    assert "good_layer" not in registry.layers  # nothing of a failed plugin is registered


def test_a_layer_class_in_the_losses_hook_fails(register_plugin):
    class Plugin:
        @corenet.hookimpl
        def corenet_losses(self):
            return [Good]

    with pytest.warns(RuntimeWarning, match="not a subclass of corenet.Loss"):
        register_plugin(Plugin(), "bad-losses")


def plugin_providing(*layers):
    """A plugin object whose corenet_layers returns ``layers`` as a tuple."""
    class Plugin:
        @corenet.hookimpl
        def corenet_layers(self):
            return layers

    return Plugin()


def test_a_name_or_object_already_registered_is_refused_leaving_the_first_intact(
        register_plugin):
    # Before: pluggy's ValueError (dumping every plugin) replaced the first plugin's record,
    # whose layer then stayed registered after unregister and clashed with a new provider.
    first = plugin_providing(Good)
    register_plugin(first, "first", distribution="corenet-first")
    with pytest.raises(PluginError, match="a plugin named 'first' \\(distribution "
                                          "'corenet-first'\\) is already registered"):
        register_plugin(plugin_providing(named("other_layer")), "first", "corenet-second")
    with pytest.raises(PluginError, match="is already registered as plugin 'first'"):
        register_plugin(first, "first_again", "corenet-first")
    assert registry.plugins["first"].layers == ["good_layer"]
    assert registry.plugins["first"].error is None
    assert "first_again" not in registry.plugins and "other_layer" not in registry.layers
    registry.unregister("first")
    assert "good_layer" not in registry.layers
    assert registry.provider("layers", "good_layer") is None
    register_plugin(plugin_providing(Good), "replacement")
    assert registry.provider("layers", "good_layer").name == "replacement"


@pytest.mark.parametrize("provided, received", [
    (Good, "the class Good itself; return \\[Good\\]"),
    (42, "int 42"),
    ("relu", "str 'relu'"),
    ({"good_layer": Good}, "dict \\{'good_layer'"),
    (None, "NoneType None"),
], ids=["a class", "an int", "a string", "a dict", "None"])
def test_a_hook_must_return_a_list_or_tuple(register_plugin, provided, received):
    # Before: "'type' object is not iterable", a complaint about the letter 'r' or the
    # dict's key, or (None) a plugin that silently provided nothing.
    class Plugin:
        @corenet.hookimpl
        def corenet_layers(self):
            return provided

    with pytest.warns(RuntimeWarning, match="skipping plugin 'odd'"):
        info = register_plugin(Plugin(), "odd")
    assert re.fullmatch("PluginError: plugin 'odd': corenet_layers must return a list or "
                        "tuple of classes \\(such as \\[MyLayer\\], or \\[\\] for none\\), "
                        f"got {received}.*", info.error), info.error
    assert register_plugin(plugin_providing(Good), "a_tuple").layers == ["good_layer"]


@pytest.mark.parametrize("second, classes", [
    (Good, "class Good both times"), (named("good_layer"), "classes Good and Named")])
def test_a_plugin_listing_a_name_twice_says_so(register_plugin, second, classes):
    # Before: "provided by two plugins: distribution 'x' and distribution 'x'".
    with pytest.raises(PluginError) as raised:
        register_plugin(plugin_providing(Good, second), "twice", distribution="corenet-twice")
    assert str(raised.value) == (f"plugin 'twice' (distribution 'corenet-twice') lists layer "
                                 f"'good_layer' twice in corenet_layers ({classes}); list "
                                 f"each name once")
    assert "good_layer" not in registry.layers and "twice" not in registry.plugins
