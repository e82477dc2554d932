"""The scripts in examples/ run against the installed chainrule, as a user runs them after
`pip install .`: none of them puts the source tree on sys.path (which would shadow the
installed package, and its compiled _core, with python/chainrule), each one starts and
shows its help from an unrelated working folder, and the one that needs no data set runs
to the end."""

import ast
import os
import subprocess
import sys

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
SCRIPTS = sorted(f for f in os.listdir(EXAMPLES) if f.endswith(".py"))


def test_there_are_examples():
    assert {"mnist_mlp.py", "mnist_cnn.py", "backprop_by_hand.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_does_not_touch_sys_path(script):
    with open(os.path.join(EXAMPLES, script), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "path" and \
                isinstance(node.value, ast.Name) and node.value.id == "sys":
            pytest.fail(f"examples/{script} uses sys.path (line {node.lineno}); it must import the "
                        f"installed chainrule")


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_starts_with_the_installed_package(script, tmp_path):
    run = subprocess.run([sys.executable, os.path.join(EXAMPLES, script), "--help"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "usage:" in run.stdout


def test_backprop_by_hand_runs_to_the_end(tmp_path):
    env = dict(os.environ, MPLBACKEND="Agg")
    run = subprocess.run([sys.executable, os.path.join(EXAMPLES, "backprop_by_hand.py")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr
    assert "loss 0.298371," in run.stdout                  # Mazur's total error
    assert run.stdout.count("0.35891648") >= 2              # his w5 after the step, and chainrule's
