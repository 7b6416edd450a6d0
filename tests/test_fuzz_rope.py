"""Fuzzing the RoPE pass with generated model code (tests/rope_codegen.py).

Each example draws a RoPE program (real Python source), compiles it with
backend="mla" and checks, against eager on fresh random inputs:
  * every output equal to eager (fp32 1e-5, bf16 1e-2, scaled; NaN/inf never pass),
    also on a second set of inputs through the same compiled code;
  * the inputs unchanged;
  * the report: a fusable program has each of its RoPEs matched (exact count, form,
    rotary dim, heads; one launch for q_pe and k_pe) and no near miss; a look-alike
    has nothing matched and (unless it has no candidate at all) a near miss.
A failure prints the generated source and the report. A wrong result where the
report says it matched is labelled MISCOMPILE.

Knobs (environment):
  MLA_FUZZ_EXAMPLES=2000   examples per run (default 16: the CI run, ~40 s);
                           derandomized, so a count always runs the same programs
  MLA_FUZZ_SUMMARY=path    also write the summary counters as JSON there

The summary (examples run, matched by pattern, left alone by look-alike and
near-miss reason, "either" outcomes) is printed at the end of the module by the
terminal reporter, even without -s; `--hypothesis-show-statistics` shows the
same outcomes as hypothesis events.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, note, settings

sys.path.insert(0, os.path.dirname(__file__))
from rope_codegen import Program, programs  # noqa: E402

EXAMPLES = int(os.environ.get("MLA_FUZZ_EXAMPLES", "16"))
SUMMARY: Counter = Counter()
# Sources that passed: hypothesis often draws a program again (its generator splices
# earlier draws), and a compile costs ~1 s, so a repeat is skipped (assume), which
# keeps the examples distinct. A failing source is never added, so shrinking and the
# final replay of a failure run it again.
PASSED_SOURCES: set = set()


@pytest.fixture(scope="module", autouse=True)
def _fuzz_summary(request):
    yield
    if not SUMMARY:
        return
    lines = ["", "RoPE fuzz summary (tests/test_fuzz_rope.py):"]
    for key in sorted(SUMMARY, key=lambda k: (k.split(":")[0] != "run", k)):
        lines.append(f"  {SUMMARY[key]:6d}  {key}")
    text = "\n".join(lines)
    # past pytest's output capture, so that it shows without -s
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(text)
    else:
        print(text)
    path = os.environ.get("MLA_FUZZ_SUMMARY")
    if path:
        with open(path, "w") as f:
            json.dump(dict(SUMMARY), f, indent=1, sort_keys=True)


def _flat(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _reason_key(reason: str) -> str:
    """A near-miss reason with sizes and node names blanked, for counting."""
    return re.sub(r"\d+", "N", reason)[:90]


class FuzzFailure(AssertionError):
    pass


def _fail(program: Program, what: str, report=None) -> None:
    text = [what, f"program: {program.describe()}", "---- generated source ----", program.source]
    if report is not None:
        text += ["---- report ----", report.format()]
    raise FuzzFailure("\n".join(text))


def _compare(program: Program, out, ref, matched: bool, report, label: str) -> None:
    out, ref = _flat(out), _flat(ref)
    if len(out) != len(ref):
        _fail(program, f"{label}: {len(out)} outputs, eager has {len(ref)}", report)
    for i, (o, r) in enumerate(zip(out, ref)):
        problem = None
        if o.shape != r.shape or o.dtype != r.dtype:
            problem = f"shape/dtype {tuple(o.shape)}/{o.dtype}, eager {tuple(r.shape)}/{r.dtype}"
        elif not torch.isfinite(r).all():
            problem = "eager output is not finite (the generator should not make that)"
        elif not torch.isfinite(o).all():
            problem = "compiled output is not finite"
        else:
            tol = program.tol
            scale = max(1.0, r.abs().max().item())
            try:
                torch.testing.assert_close(o, r, rtol=tol, atol=tol * scale)
            except AssertionError as e:
                problem = str(e)
        if problem:
            kind = "MISCOMPILE (the report says it matched)" if matched else "wrong result (nothing matched)"
            _fail(program, f"{kind}: {label}, output {i}: {problem}", report)


def _check_report(program: Program, report) -> str:
    """Checks the report against what the program knows; returns the outcome for the summary."""
    counts = report.counts()
    launches = counts.get("rope.one_launch", 0)
    ropes = {k: v for k, v in counts.items() if k != "rope.one_launch"}
    matches = [m for m in report.matches if m.pattern != "rope.one_launch"]
    n, pattern = program.n_ropes, program.pattern
    want = program.expected_counts()
    fused = bool(ropes)

    if program.expect == "leave":
        if counts or "mla.rope" in report.final_graph:
            _fail(program, f"look-alike '{program.lookalike}' was rewritten: counts {counts}", report)
        if program.near_miss_required and not report.near_misses:
            _fail(program, f"look-alike '{program.lookalike}' left alone without a near miss", report)
        if report.near_misses:
            for nm in report.near_misses:
                SUMMARY[f"near miss: {program.lookalike} -> {nm.pattern}: {_reason_key(nm.reason)}"] += 1
            return f"left alone: {program.lookalike} (near miss)"
        return f"left alone: {program.lookalike} (no candidate)"

    if program.expect == "either" and not fused:
        if counts:
            _fail(program, f"one_launch without a rope match: {counts}", report)
        why = "gptj_stack" if program.style == "gptj_stack" else "conj"
        for nm in report.near_misses:
            SUMMARY[f"near miss: {why} -> {nm.pattern}: {_reason_key(nm.reason)}"] += 1
        return f"either: {why} left alone ({'near miss' if report.near_misses else 'no candidate'})"

    # every RoPE must be matched
    if ropes != want:
        _fail(program, f"expected {want} (+ one_launch), got {counts}", report)
    if launches not in program.one_launch:
        _fail(program, f"rope.one_launch={launches}, expected one of {sorted(program.one_launch)}", report)
    if report.near_misses:
        _fail(program, "matched, but the report also has near misses", report)
    calls = report.final_graph.count("mla.rope.default(")
    if calls != n - launches:
        _fail(program, f"{calls} mla.rope calls in the final graph, expected {n - launches}", report)
    heads = sorted([program.H, 1][:n])
    got_heads = []
    for m in matches:
        p = m.params
        if p["form"] not in program.forms:
            _fail(program, f"form {p['form']!r}, expected one of {sorted(program.forms)}", report)
        if p["rotary_dim"] != program.R:
            _fail(program, f"rotary_dim {p['rotary_dim']}, expected {program.R}", report)
        if p["cos_width"] != program.cos_width:
            _fail(program, f"cos_width {p['cos_width']}, expected {program.cos_width}", report)
        got_heads.append(p["heads"])
    if sorted(got_heads) != heads:
        _fail(program, f"heads {sorted(got_heads)}, expected {heads}", report)
    if program.one_launch == {0, 1}:
        why = "conj per call" if program.conj else "partial rotary sliced in apply_rope"
        SUMMARY[f"one launch for q and k ({why}): {'yes' if launches else 'no'}"] += 1
    if program.expect == "either":
        return f"either: {'gptj_stack' if program.style == 'gptj_stack' else 'conj'} matched {pattern}"
    return f"matched {pattern} x{n}" + (" (one launch)" if launches else "")


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(program=programs())
def test_fuzz_rope(program: Program):
    assume(program.source not in PASSED_SOURCES)
    torch._dynamo.reset()
    note(f"program: {program.describe()}\n---- generated source ----\n{program.source}")
    start = time.perf_counter()
    fn = program.build()
    inputs = program.make_inputs(program.seed)
    before = [t.clone() for t in inputs]
    reports = []
    with torch.no_grad():
        compiled = torch.compile(fn, backend="mla", options={"report": reports.append})
        try:
            out = compiled(*inputs)
        except Exception as e:  # noqa: BLE001 - show the program with any compile error
            _fail(program, f"compiled call raised {type(e).__name__}: {e}")
        for i, (a, b) in enumerate(zip(inputs, before)):
            if not torch.equal(a, b):
                _fail(program, f"input {i} changed by the compiled call", reports[0] if reports else None)
        ref = fn(*inputs)
        if len(reports) != 1:
            _fail(program, f"expected one graph (no graph break), got {len(reports)} reports")
        report = reports[0]
        matched = bool(report.matches)
        _compare(program, out, ref, matched, report, "first inputs")
        # the same compiled code on fresh inputs of the same shapes
        fresh = program.make_inputs(program.seed + 1)
        _compare(program, compiled(*fresh), fn(*fresh), matched, report, "fresh inputs")
        if len(reports) != 1:
            _fail(program, f"recompiled for inputs of the same shapes ({len(reports)} reports)", report)
    outcome = _check_report(program, report)
    SUMMARY["run: examples"] += 1
    SUMMARY[f"outcome: {outcome}"] += 1
    SUMMARY[f"style: {program.style}"] += 1
    SUMMARY[f"layout/dtype: {program.layout} {str(program.dtype).replace('torch.', '')}"] += 1
    for variant in program.variants():
        SUMMARY[f"variant ({'matched' if report.matches else 'not matched'}): {variant}"] += 1
    SUMMARY["run: seconds (total)"] += round(time.perf_counter() - start)
    event(outcome)
    PASSED_SOURCES.add(program.source)
    torch._dynamo.reset()
