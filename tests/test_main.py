"""`python -m chainrule`, the main job: what it prints for a newcomer, that it reports (exit 0)
whatever accuracy a run reaches, that its defaults reach the documented accuracy, and that bad
options are refused with argparse's usage error (exit 2)."""

import re
import subprocess
import sys

import pytest

import chainrule as cr
from chainrule.__main__ import main


def test_default_run_reaches_97_percent_and_says_what_it_does(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"chainrule {cr.__version__} ")
    assert f"CPU kernel: {cr.cpu_info()['kernel']} " in out
    assert f"threads: {cr.get_num_threads()} " in out
    assert "data: UCI handwritten digits (bundled)" in out
    assert "1293 training, 144 validation and 360 test images" in out
    epochs = re.findall(r"^  epoch +(\d+)/30  loss [0-9.]+  accuracy [0-9.]+  val_accuracy ([0-9.]+)  ", out, re.M)
    assert [int(e) for e, _ in epochs] == list(range(1, 31))
    acc = float(re.search(r"^test accuracy: ([0-9.]+) ", out, re.M).group(1))
    assert acc >= 0.97
    assert "what to try next:" in out


def test_a_run_that_misses_the_target_still_reports_and_exits_0(capsys):
    # one epoch with a tiny step cannot learn the digits; the run still reports and succeeds
    before = cr.get_num_threads()
    try:
        assert main(["--epochs", "1", "--learning-rate", "1e-6", "--threads", "1"]) == 0
    finally:
        cr.set_num_threads(before)  # --threads sets the process-wide count
    out = capsys.readouterr().out
    assert re.search(r"^  epoch 1/1  loss ", out, re.M)
    acc = float(re.search(r"^test accuracy: ([0-9.]+) ", out, re.M).group(1))
    assert acc < 0.9
    assert "stopped short" in out
    assert "threads: 1 " in out


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "argument --epochs: expected a positive integer, got '0'"),
    (["--epochs", "two"], "argument --epochs: expected a positive integer, got 'two'"),
    (["--learning-rate", "-1"], "argument --learning-rate: expected a positive number, got '-1'"),
    (["--learning-rate", "nan"], "argument --learning-rate: expected a positive number, got 'nan'"),
    (["--batch-size", "1.5"], "argument --batch-size: expected a positive integer, got '1.5'"),
    (["--seed", "-3"], "argument --seed: expected an integer >= 0, got '-3'"),
    (["--threads", "100000"], "argument --threads: at most"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
])
def test_bad_options_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_help_and_version_as_a_user_runs_them():
    run = subprocess.run([sys.executable, "-m", "chainrule", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0
    for text in ("usage: python -m chainrule", "handwritten digits", "--epochs N", "--threads N",
                 "examples:", "CHAINRULE_CPU_TARGET=generic"):
        assert text in run.stdout
    run = subprocess.run([sys.executable, "-m", "chainrule", "--version"], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0 and run.stdout.startswith(f"chainrule {cr.__version__} ")
