"""Plugin discovery through entry points, failures, conflicts, disabling, the API version."""
import json
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
    assert set(plugins["dense"].layers) == {"linear", "add", "concat"}
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
                                         "layers": ["double"], "losses": [], "error": None}


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
    strict = run_python("import corenet.layers as L; L.names()", tmp_path,
                        CORENET_STRICT_PLUGINS="1")
    assert strict.returncode != 0
    assert "PluginError: plugin 'corenet_broken' from distribution 'corenet-broken'" \
        in strict.stderr


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
    assert hooks == ["corenet_layers", "corenet_losses"]
    for name in hooks:
        assert getattr(hookspecs, name).__doc__.strip()
    # Both hooks are exercised by test_registered_object_provides_layers_and_losses.
    fresh = Registry()
    fresh.load()
    assert fresh.layers and fresh.losses
