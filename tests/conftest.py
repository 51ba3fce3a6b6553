import numpy as np
import pytest

import corenet
from corenet.registry import registry


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def threads():
    """Restores the thread count a test changes."""
    before = corenet.get_num_threads()
    yield
    corenet.set_num_threads(before)


@pytest.fixture
def register_plugin():
    """Register plugin objects for one test, unregistered in finally (as llm's tests do)."""
    names = []

    def register(plugin, name, distribution="test-plugin", version="0.0"):
        names.append(name)
        return registry.register(plugin, name, distribution, version)

    registry.load()
    try:
        yield register
    finally:
        for name in names:
            if name in registry.plugins:
                registry.unregister(name)


def pytest_terminal_summary(terminalreporter):
    """The fuzz suite's table of outcomes, when it ran (tests/test_fuzz.py)."""
    import sys

    harness = sys.modules.get("fuzz_harness")
    if harness is not None and harness.TALLY:
        terminalreporter.write_sep("-", "fuzz outcomes (tests/test_fuzz.py)")
        terminalreporter.write_line(harness.table())
        strategies = sys.modules["fuzz_strategies"]
        for kind, names in (("layers", strategies.skipped_layers()),
                            ("losses", strategies.skipped_losses())):
            if names:
                terminalreporter.write_line(f"{kind} with no valid baseline, not fuzzed: "
                                            f"{', '.join(names)}")
