"""bench/alternate.py runs and reports every implementation of every MLP step."""
import re

import alternate
from conftest import IMPLS
from test_mlp import CONFIGS


def test_alternate_reports_each_implementation_in_turn(capsys):
    alternate.main(["--seconds", "0.01", "--threads", "1"])
    report = capsys.readouterr().out
    for sizes, batch in CONFIGS:
        assert f"mlp step {'-'.join(map(str, sizes))} batch {batch}" in report
    for impl in IMPLS:
        times = re.findall(rf"^  {impl} +min +([0-9.]+) +median +([0-9.]+)", report, re.M)
        assert len(times) == len(CONFIGS)
        assert all(0 < float(low) <= float(middle) for low, middle in times)
    ratios = re.findall(r"speed-up [0-9.]+x \(min\)", report)
    assert len(ratios) == len(CONFIGS) * (len(IMPLS) - 1)
