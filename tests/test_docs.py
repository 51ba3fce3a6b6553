"""The examples in the README and in the docstrings run and print what they say."""
import doctest
import importlib
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
MODULES = ["corenet.arguments", "corenet.graph", "corenet.layer", "corenet.layers",
           "corenet.losses", "corenet.memory", "corenet.optim", "corenet.data", "corenet.train",
           "corenet.testing", "corenet.gradients", "corenet.init", "corenet.random",
           "corenet.schedules"]


@pytest.mark.skipif(not README.exists(), reason="needs the source checkout")
def test_readme_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks
    namespace = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert namespace["value"] < 2.3  # the hand-written loop trained


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_progress_draws_a_bar_with_the_live_loss_on_a_terminal():
    import io

    from corenet.progress import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    progress = Progress(epochs=2, stream=screen)
    progress.on_batch(0, 9, 10, 0.1234)
    progress.on_epoch(0, 0.2)
    assert "\repoch 1/2 [" + "#" * 30 + "] loss 0.1234" in screen.getvalue()
    plain = io.StringIO()
    Progress(epochs=2, stream=plain).on_batch(0, 9, 10, 0.1234)
    assert plain.getvalue() == ""  # no bar when not on a terminal
