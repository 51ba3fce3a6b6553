"""Reliability: a seeded fuzz of every registered layer, loss, model, optimizer and of model
files. Each case mutates one thing of a valid baseline (an input's shape, ndim, dtype,
layout or values; a gradient; a parameter's value or grad; a constructor argument; a
loss's targets; a Model's inputs or arguments; an optimizer's settings or parameters;
a saved file's config, headers or bytes) and must give the right result (the same as
the plain C-contiguous call, and the numpy reference's) or a clean error naming what
failed: never a crash, a hang, a bare IndexError/KeyError/MemoryError or a wrong
answer. Cases run in worker processes (fuzz_harness.py), so that a crash is reported
instead of ending the session.

The table of outcomes is printed at the end of the session; ``python
tests/fuzz_harness.py`` prints it alone, CORENET_FUZZ_SCALE=10 searches ten times longer.
A failure lists each bad case with the command that reproduces it.

Crafted model files: tests/test_model_files.py holds the targeted cases and the seeded
byte damage; here the config's values, the .npy headers and whole-file bytes are drawn.
"""
import pytest

import fuzz_harness
import fuzz_strategies
from layer_table import builtin_names


@pytest.mark.parametrize("group", list(fuzz_strategies.GROUPS))
def test_fuzz(group):
    cases = fuzz_harness.generated_cases(fuzz_strategies.SCALE)[group]
    outcomes = fuzz_harness.run_cases(cases, group)
    bad = fuzz_harness.failures(cases, outcomes)
    assert not bad, f"{len(bad)} of {len(cases)} {group} cases went wrong:\n" + "\n".join(
        bad[:12])


def test_every_builtin_layer_and_loss_has_a_baseline():
    # Other plugins' layers without one are skipped, and named at the end of the session.
    assert {row[0] for row in fuzz_strategies.layer_rows()} >= builtin_names()
    assert not set(fuzz_strategies.skipped_layers()) & builtin_names()
    assert not set(fuzz_strategies.skipped_losses()) & builtin_names("losses")
    cases = fuzz_harness.generated_cases(fuzz_strategies.SCALE)["layer_input"]
    layers = {case["layer"] for case in cases}
    assert layers == {row[0] for row in fuzz_strategies.layer_rows()}


def test_a_third_party_plugin_layer_is_fuzzed_too(register_plugin, monkeypatch):
    import fuzz_toy_plugin

    register_plugin(fuzz_toy_plugin, "fuzz_toy_plugin")
    monkeypatch.setenv("CORENET_FUZZ_PLUGINS", "fuzz_toy_plugin")  # the workers' registry
    assert fuzz_strategies.skipped_layers() == ["fuzz_needy"]
    rows = [row for row in fuzz_strategies.layer_rows() if row[0] == "fuzz_cube"]
    assert rows == [("fuzz_cube", {}, [(6,)])]
    cases = fuzz_strategies.draw(fuzz_strategies.layer_input_cases(rows), 40)
    outcomes = fuzz_harness.run_cases(cases)
    assert not fuzz_harness.failures(cases, outcomes)
    kinds = {result["outcome"] for result in outcomes}
    assert {"correct", "clean_error"} <= kinds, kinds  # layouts compared, bad dtypes refused


def test_the_harness_reports_crashes_hangs_and_unclear_errors():
    actions = ["ok", "segfault", "ok", "unclear", "clean", "sleep", "ok"]
    cases = [{"group": "selftest", "action": action} for action in actions]
    outcomes = fuzz_harness.run_cases(cases, timeout=2)
    assert [result["outcome"] for result in outcomes] == [
        "correct", "crash", "correct", "unclear_error", "clean_error", "hang", "correct"]
    assert "killed by SIGSEGV" in outcomes[1]["detail"]
    assert "Fatal Python error" in outcomes[1]["detail"]  # faulthandler's traceback
    assert "IndexError" in outcomes[3]["detail"]
