"""`mla-compile dump`: the command line, end to end.

Each compile in a fresh process costs 15-20 s on a small CPU machine, so the
three end-to-end runs start together (one module-scoped fixture) and every test
that needs one reads its output. Help, bad targets and the formatting run in
this process: they compile nothing.
"""
from __future__ import annotations

import difflib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mla_compile import GraphReport, Match, NearMiss, PassRecord, cli

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "dump_target.py"
CONSOLE_SCRIPT = Path(sys.executable).parent / "mla-compile"
FLAGS = ("--function", "--no-rope", "--no-attention", "--kernel", "--full", "--json", "--seed", "--mode")
EXPECTED_COUNTS = "matches: 3 (rope.neox=2, rope.one_launch=1)"
TIMEOUT_S = 600
# Under pytest-xdist the module fixture `runs` (three dump subprocesses) would run once
# per worker that gets one of its tests: keep the module on one worker.
pytestmark = pytest.mark.xdist_group("cli")


def _start(argv: list, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([str(a) for a in argv], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """text: `python -m mla_compile dump FILE`; again: the same through the console
    script (or `-m` once more where there is none), for determinism; module:
    `dump_target:example --no-rope --no-attention --json` from a directory holding that module."""
    plain = tmp_path_factory.mktemp("cwd")
    with_module = tmp_path_factory.mktemp("module_cwd")
    shutil.copy(EXAMPLE, with_module / "dump_target.py")
    dump_m = [sys.executable, "-m", "mla_compile", "dump"]
    again = [CONSOLE_SCRIPT, "dump"] if CONSOLE_SCRIPT.exists() else dump_m
    procs = {
        "text": _start([*dump_m, EXAMPLE], plain),
        "again": _start([*again, EXAMPLE], plain),
        "module": _start([*dump_m, "dump_target:example", "--no-rope", "--no-attention", "--json"], with_module),
    }
    try:
        results = {name: _finish(p) for name, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.communicate()
    for name, r in results.items():
        assert r.returncode == 0, f"{name}: {r.args}\n{r.stderr}"
    return results


# ------------------------------------------------------------------ end to end

def test_dump_file_target(runs):
    out = runs["text"].stdout
    assert out.startswith("mla-compile dump dump_target.py:example\n")
    assert "options: rope=True, attention=True, kernel=auto, mode=none, seed=0" in out
    assert "=== graph 0 ===" in out and "=== graph 1 ===" not in out
    # the diff: the decomposed neox RoPE goes, one mla.rope launch for q_pe and k_pe comes
    assert "--- before rope\n+++ after rope\n@@ " in out
    assert re.search(r"^-%\w+ : f32\[2, 4, 8, 64\] = aten\.cat\.default", out, re.M)
    rope_lines = re.findall(r"^\+.*mla\.rope\.default.*$", out, re.M)
    assert len(rope_lines) == 1, rope_lines
    assert "([%" in rope_lines[0] and "False, False, 'auto')" in rope_lines[0]
    assert not re.search(r"^[- ].*mla\.rope", out, re.M)  # not there before the pass
    # the match report
    assert "pass rope: 3 rewrite(s), 0 near miss(es)" in out
    assert ("  matched rope.neox: form=neox, style=neox, rotary_dim=64, heads=4, "
            "shape=(2, 4, 8, 64), dtype=float32, cos_width=64") in out
    assert ("  matched rope.neox: form=neox, style=neox, rotary_dim=64, heads=1, "
            "shape=(2, 1, 8, 64), dtype=float32, cos_width=64") in out
    assert "  matched rope.one_launch: tensors=2, shapes=[(2, 4, 8, 64), (2, 1, 8, 64)]" in out
    # the summary
    assert "=== summary ===\ngraphs: 1\n" + EXPECTED_COUNTS + "\n" in out
    rel = float(re.search(r"^max relative error vs eager: (\S+)$", out, re.M).group(1))
    assert rel < 1e-4
    # nothing that changes from run to run
    assert not re.search(r"0x[0-9a-f]{6,}|/tmp/|torchinductor", out)


def test_dump_is_deterministic(runs):
    assert runs["again"].stdout == runs["text"].stdout


def test_console_script(runs):
    if not CONSOLE_SCRIPT.exists():
        pytest.skip(f"no console script at {CONSOLE_SCRIPT} (package not installed with scripts)")
    # `runs` ran the full dump through it ("again"), with the output of `python -m`
    assert runs["again"].args[0] == str(CONSOLE_SCRIPT)
    assert runs["again"].stdout == runs["text"].stdout


def test_dump_module_target_no_rope_json(runs):
    doc = json.loads(runs["module"].stdout)
    assert doc["target"] == "dump_target:example"
    assert doc["options"] == {"attention": False, "kernel": "auto", "mode": "none", "rope": False, "seed": 0}
    assert doc["counts"] == {}
    assert len(doc["graphs"]) == 1
    assert doc["graphs"][0] == {"counts": {}, "passes": []}  # no pass ran
    assert "mla.rope" not in runs["module"].stdout
    assert doc["max_rel_error"] < 1e-4
    assert runs["module"].stdout == json.dumps(doc, sort_keys=True, indent=2) + "\n"


# ------------------------------------------------------------------ help and errors

def test_help_mentions_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["dump", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for flag in FLAGS:
        assert flag in text, flag
    assert "TARGET" in text and "module:function" in text and "examples:" in text
    for kernel in ("auto", "triton", "reference"):
        assert kernel in text

    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "dump" in text and "mla-compile dump --help" in text


def _write(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


@pytest.mark.parametrize("case", [
    "missing_file", "missing_function", "not_a_pair", "inputs_not_a_tuple", "needs_arguments",
    "missing_module", "module_missing_function", "function_flag_with_module",
])
def test_bad_target(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    good = _write(tmp_path / "good_target.py", "import torch\n"
                  "def example():\n    return torch.nn.Identity(), (torch.ones(2),)\n"
                  "def takes_args(n):\n    return torch.nn.Identity(), (torch.ones(n),)\n")
    three = _write(tmp_path / "three.py", "def example():\n    return 1, 2, 3\n")
    bare = _write(tmp_path / "bare.py", "import torch\n"
                  "def example():\n    return torch.nn.Identity(), torch.ones(2)\n")
    argv, message = {
        "missing_file": ([str(tmp_path / "nope.py")], "no such file"),
        "missing_function": ([str(good), "--function", "nope"], "defines no function 'nope'"),
        "not_a_pair": ([str(three)], "must return a (model, example_inputs) pair, got a tuple of length 3"),
        "inputs_not_a_tuple": ([str(bare)], "example_inputs as a tuple or list"),
        "needs_arguments": ([str(good), "--function", "takes_args"], "callable with no arguments"),
        "missing_module": (["no_such_module_xyz:example"], "no module named 'no_such_module_xyz'"),
        "module_missing_function": (["good_target:nope"], "has no function 'nope'"),
        "function_flag_with_module": (["good_target:example", "--function", "example"],
                                      "--function applies to a file TARGET only"),
    }[case]
    try:
        assert cli.main(["dump", *argv]) == 2
    finally:
        sys.modules.pop("good_target", None)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("mla-compile dump: error: ")
    assert message in captured.err
    assert "Traceback" not in captured.err


def test_triton_kernel_where_it_cannot_run(tmp_path, capsys, monkeypatch):
    def no_triton(device, kernel):
        raise RuntimeError(f"kernel={kernel!r} cannot run on {device}")

    monkeypatch.setattr(cli, "select_backend", no_triton)
    monkeypatch.setattr(sys, "path", list(sys.path))
    target = _write(tmp_path / "t.py", "import torch\n"
                    "def example():\n    return torch.nn.Identity(), (torch.ones(2),)\n")
    assert cli.main(["dump", str(target), "--kernel", "triton"]) == 2
    err = capsys.readouterr().err
    assert err == "mla-compile dump: error: --kernel triton: kernel='triton' cannot run on cpu\n"


def test_bad_flag_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["dump", str(EXAMPLE), "--kernel", "cuda"])
    assert exit_.value.code == 2
    assert "invalid choice: 'cuda'" in capsys.readouterr().err


# ------------------------------------------------------------------ formatting (no compile)

def _report() -> GraphReport:
    before = "%0 : f32[2] = input\n%1 : f32[2] = aten.neg.default(%0)\nreturn (%1)\n"
    after = "%0 : f32[2] = input\n%1 : f32[2] = mla.x.default(%0)\nreturn (%1)\n"
    changes = "".join(difflib.unified_diff(before.splitlines(True), after.splitlines(True),
                                           "before rope", "after rope"))
    record = PassRecord("rope", [Match("rope.neox", {"style": "neox", "shape": (2, 4, 8, 64)})],
                        [NearMiss("rope.pairs", "aten.cat.default", "cat is not along the last dim")],
                        before=before, after=after, changes=changes)
    return GraphReport([record])


def test_text_format_diff_and_full():
    from collections import Counter

    reports = [_report(), GraphReport([PassRecord("rope", before="x\n", after="x\n")])]
    counts = Counter({"rope.neox": 1})
    text = cli._format_text("t.py:example", "rope=True", reports, counts, 0.0, full=False)
    assert "=== graph 0 ===" in text and "=== graph 1 ===" in text
    assert "-%1 : f32[2] = aten.neg.default(%0)\n+%1 : f32[2] = mla.x.default(%0)\n" in text
    assert "  matched rope.neox: style=neox, shape=(2, 4, 8, 64)" in text
    assert "  left alone rope.pairs at aten.cat.default: cat is not along the last dim" in text
    assert "(graph unchanged)" in text
    assert text.endswith("graphs: 2\nmatches: 1 (rope.neox=1)\nmax relative error vs eager: 0.00e+00\n")

    full = cli._format_text("t.py:example", "rope=True", reports, counts, 0.0, full=True)
    assert ("--- pass rope: canonical graph before ---\n%0 : f32[2] = input\n"
            "%1 : f32[2] = aten.neg.default(%0)\nreturn (%1)\n"
            "--- pass rope: canonical graph after ---\n") in full
    assert "+++ after rope" not in full


def test_json_format():
    from collections import Counter

    text = cli._format_json("t.py:example", {"rope": True}, [_report()], Counter({"rope.neox": 1}), float("inf"))
    doc = json.loads(text)
    assert doc["counts"] == {"rope.neox": 1}
    assert doc["max_rel_error"] == "inf"
    match = doc["graphs"][0]["passes"][0]["matches"][0]
    assert match == {"pattern": "rope.neox", "params": {"style": "neox", "shape": [2, 4, 8, 64]}}
    assert doc["graphs"][0]["passes"][0]["near_misses"][0]["reason"] == "cat is not along the last dim"


def test_max_rel_error_flattens_outputs():
    import torch

    eager = {"a": torch.tensor([1.0, -4.0]), "b": [torch.tensor([2.0]), (torch.tensor([float("nan")]),)]}
    same = {"a": torch.tensor([1.0, -4.0]), "b": [torch.tensor([2.0]), (torch.tensor([float("nan")]),)]}
    assert cli.max_rel_error(same, eager) == 0.0
    off = {"a": torch.tensor([1.0, -4.0]), "b": [torch.tensor([2.5]), (torch.tensor([float("nan")]),)]}
    assert cli.max_rel_error(off, eager) == pytest.approx(0.25)
    assert cli.max_rel_error((torch.ones(2),), (torch.zeros(2),)) == float("inf")
    inf = float("inf")
    assert cli.max_rel_error(torch.tensor([inf, 2.0]), torch.tensor([inf, 2.0])) == 0.0
    assert cli.max_rel_error(torch.tensor([inf, 2.0]), torch.tensor([1.0, 2.0])) == inf
