"""The examples run as a user runs them (fresh processes, CPU) and say what they claim."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(script: str) -> str:
    env = {**os.environ, "TRITON_INTERPRET": "0"}  # a user's CPU run: the PyTorch reference
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / script)], capture_output=True, text=True,
                          timeout=900, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_quickstart():
    out = run("quickstart.py")
    assert "'attention.mla': 1" in out and "'rope.one_launch': 1" in out
    error = float(out.rsplit("max relative error vs eager:", 1)[1].split()[0])
    assert error < 1e-4


def test_generate_transformers():
    pytest.importorskip("transformers")
    out = run("generate_transformers.py")
    assert "greedy tokens identical: True" in out
    assert "matched attention.mla: form=absorbed" in out
