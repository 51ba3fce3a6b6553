"""bench/alternate.py runs and reports every implementation of every step it times."""
import re

import pytest

import alternate
from conftest import IMPLS
from test_cnn import BATCHES
from test_conv import CONV_CASES
from test_mlp import CONFIGS


def reported(report, impl):
    return re.findall(rf"^  {impl} +min +([0-9.]+) +median +([0-9.]+)", report, re.M)


def test_alternate_reports_each_implementation_in_turn(capsys):
    alternate.main(["--seconds", "0.01", "--threads", "1"])
    report = capsys.readouterr().out
    for sizes, batch in CONFIGS:
        assert f"mlp step {'-'.join(map(str, sizes))} batch {batch}" in report
    for batch in BATCHES:
        assert f"lenet-5 training step batch {batch}\n" in report
    assert "conv2d 64->64 3^2 56x56 b8 fwd+bwd\n" in report
    assert "conv3d 16->32 3^3 16x16x16 b4 fwd+bwd\n" in report
    steps = len(CONFIGS) + len(BATCHES) + len(CONV_CASES)
    for impl in IMPLS:
        # numpy has no LeNet step and no 3-D convolution
        three_d = sum(case[0] == 3 for case in CONV_CASES)
        expected = steps - (len(BATCHES) + three_d if impl == "numpy" else 0)
        times = reported(report, impl)
        assert len(times) == expected, impl
        assert all(0 < float(low) <= float(middle) for low, middle in times)
    peers = sum(len(reported(report, impl)) for impl in IMPLS if impl != "corenet")
    assert len(re.findall(r"speed-up [0-9.]+x \(min\), [0-9.]+x \(median\)", report)) == peers


def test_alternate_times_the_cases_asked_for(capsys):
    alternate.main(["--seconds", "0.01", "--threads", "1", "--cases", "lenet"])
    report = capsys.readouterr().out
    assert "lenet-5" in report and "mlp step" not in report and "conv2d" not in report
    with pytest.raises(SystemExit):
        alternate.main(["--cases", "mlp,gemm"])
    assert "--cases takes a comma-separated list of mlp, lenet, conv, got 'mlp,gemm'" in \
        capsys.readouterr().err
