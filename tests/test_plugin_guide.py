"""docs/plugins.md, followed in a temporary folder: its files make a plugin that
builds, installs, registers, passes its own tests (corenet's conformance kit
among them), and runs the guide's example; the outputs it shows are the real ones."""
import pathlib
import re
import textwrap

import pytest

from plugin_install import install_plugin, run

GUIDE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
# A fenced block and the HTML comment just above it, if any: "file: PATH", "run",
# or "output: WHAT".
BLOCK = re.compile(r"^(?:<!-- (?P<mark>[^>]*?) -->\n)?(?P<indent>[ ]*)```(?P<language>\w*)\n"
                   r"(?P<body>.*?)^(?P=indent)```$", re.S | re.M)
# The languages of code that the test writes or runs: each such block must be marked.
CODE = {"python", "toml", "cython"}

pytestmark = pytest.mark.skipif(not GUIDE.exists(), reason="needs the source checkout")


def blocks() -> list:
    """(mark, language, body) of every fenced block of the guide, in order."""
    return [(match["mark"], match["language"],
             textwrap.dedent(match["body"]) if match["indent"] else match["body"])
            for match in BLOCK.finditer(GUIDE.read_text())]


def marked(kind: str) -> dict:
    return {mark[len(kind):].strip(): body for mark, _, body in blocks()
            if mark and mark.startswith(kind)}


def test_every_code_block_is_a_file_or_runs():
    unmarked = [body[:60] for mark, language, body in blocks()
                if language in CODE and not (mark and mark.split(":")[0] in ("file", "run"))]
    assert not unmarked, f"code blocks the guide test would not check: {unmarked}"
    assert {"corenet-scale/pyproject.toml", "corenet-scale/setup.py"} <= set(marked("file:"))


def test_the_guide_builds_a_plugin_that_registers_and_conforms(tmp_path):
    pytest.importorskip("Cython")
    for path, body in marked("file:").items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(body)
    project = tmp_path / "corenet-scale"
    env = install_plugin(project, tmp_path / "site")
    outputs = marked("output:")

    listing = run(["-m", "corenet.cli", "plugins"], tmp_path, env)
    assert outputs["corenet plugins"] in listing.stdout, listing.stdout + listing.stderr

    # From the project's folder, as the guide says: the src layout keeps the source
    # package (without its compiled kernel) from shadowing the installed one.
    tests = run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], project, env)
    assert tests.returncode == 0 and re.search(r"\b\d+ passed", tests.stdout), \
        tests.stdout[-3000:] + tests.stderr[-3000:]
    assert "skipped" not in tests.stdout and "warning" not in tests.stdout, tests.stdout

    for index, source in enumerate(block for mark, _, block in blocks() if mark == "run"):
        (tmp_path / f"run_{index}.py").write_text(source)
        example = run([f"run_{index}.py"], tmp_path, env)
        assert example.returncode == 0, example.stderr[-3000:]

    # The config check's message that the guide shows, from the guide's layer with a
    # get_config that forgets `init`.
    forgets_init = run(["-c", textwrap.dedent("""
        from corenet import testing
        from corenet_scale import layer

        class FeatureScale(layer.FeatureScale):
            def get_config(self):
                return {"features": self.features, "dtype": self.dtype.name}

        try:
            testing.check_config_round_trip(FeatureScale, {"features": 4, "init": 2.0}, [(4,)])
        except AssertionError as error:
            print(error)
        """)], tmp_path, env)
    assert forgets_init.stdout.strip() == outputs["config check"].strip(), forgets_init.stderr
