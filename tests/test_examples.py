"""The examples run as a user runs them (fresh processes, CPU) and say what they claim."""
import os
import re
import signal
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


def test_tensor_parallel_two_processes():
    """examples/tensor_parallel.py as its docstring runs it, two CPU processes (gloo):
    DeepSeek-V3 with the attention-sharding plan, every rank fused with H/TP heads."""
    pytest.importorskip("transformers")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(ROOT / "examples" / "tensor_parallel.py")]
    env = {**os.environ, "TRITON_INTERPRET": "0", "OMP_NUM_THREADS": "1"}
    # own session: a timeout kills the launcher and both ranks, nothing else
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"timed out; output tail:\n{out[-3000:]}")
    assert proc.returncode == 0, out[-3000:]
    ranks = re.findall(r"rank (\d)/2: 2 graphs, attention\.mla x (\d+) with heads \[(\d+)\] \(H=(\d+)\), "
                       r"near misses (\d+), prefill max relative error vs eager (\S+), greedy tokens identical: (\w+)",
                       out)
    assert sorted(r[0] for r in ranks) == ["0", "1"], out[-3000:]
    for rank, fused, heads, H, misses, error, same in ranks:
        # two graphs (prefill, decode step) x two layers, each with half the heads
        assert (fused, heads, H, misses, same) == ("4", "2", "4", "0", "True"), (rank, out[-3000:])
        assert float(error) < 1e-4
