"""Fuzzing the MLA attention pass with generated model code (tests/attention_codegen.py).

Each example draws an MLA attention program (real Python source for an nn.Module),
compiles it with backend="mla" (fullgraph) and checks, against eager on fresh random
inputs (and again on a second set through the same compiled code):
  * every output equal to eager: fp32 within 1e-4 of the output's largest magnitude,
    bf16 within 2e-2 of it; NaN/inf never pass. bf16 eager rounds after every op while
    Inductor (with or without the mla rewrite) fuses and rounds less, so where a bf16
    output misses eager it is compared with plain torch.compile (Inductor, no mla
    passes) at the same tolerance instead; the summary counts those
    ("bf16: matched Inductor, not eager");
  * the inputs unchanged;
  * no crash: where the mla compile raises, plain torch.compile (Inductor) is tried on the
    same model; if it raises the same exception type with the same first message line
    (numbers blanked), the program is counted as "upstream" and skipped (an Inductor bug,
    not the backend's); else (no error, or another one) it is a CRASH;
  * the report: a "match" program has exactly its number of attention.mla rewrites
    (one per layer) and no attention.mla near miss; a "leave" program (a look-alike
    that it would be wrong to fuse) has none and, unless the look-alike has no
    candidate at all, an attention.mla near miss with a reason; an "either" program
    (a look-alike where fusing would also be right, a shape the pass does not claim,
    Sq = Sk = 1 where Inductor rewrites the bmm first on CPU, or a known gap) is
    checked on numbers only and its outcome counted.
A failure prints the generated source and the report. A wrong result where the report
says attention.mla matched is labelled MISCOMPILE.

Known pass bugs (attention_codegen.KNOWN_ISSUES, each found by this fuzzer and reduced
to a repro script): only gaps (a fusable program left alone) are listed; a program that
may hit one is "either"; a look-alike left alone without a required near miss fails. A wrong
result is never tolerated: it fails, whatever the table says. MLA_FUZZ_STRICT=1 ignores the
table (gaps are then expected to match): use it to check a fix.

Knobs (environment):
  MLA_FUZZ_EXAMPLES=500   examples per run (default 14: the CI run, ~70 s on one core);
                          derandomized, so a count always runs the same programs
  MLA_FUZZ_SEED=n         another sequence of programs (hypothesis' seed; default: derandomized)
  MLA_FUZZ_STRATEGY=draws every choice a hypothesis draw (shrinks on failure, but hypothesis'
                          mutation repeats near-duplicates); default "seeded": one hypothesis
                          integer seeds random.Random per program, every example independent
  MLA_FUZZ_SUMMARY=path   also write the summary counters as JSON there
  MLA_FUZZ_STRICT=1       ignore attention_codegen.KNOWN_ISSUES (gaps are then expected to
                          match): to check a fix
  MLA_FUZZ_KEEP_GOING=1   record failures in the summary (and MLA_FUZZ_FAILURES=dir: their
                          sources and reports) instead of stopping at the first: for scans

The summary (examples run, matched, left alone by look-alike and reason, gaps, variants)
is printed at the end of the module even without -s.
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
from hypothesis import HealthCheck, Phase, assume, event, given, note, seed, settings

sys.path.insert(0, os.path.dirname(__file__))
import attention_codegen  # noqa: E402
from attention_codegen import Program, programs, seeded_programs  # noqa: E402

EXAMPLES = int(os.environ.get("MLA_FUZZ_EXAMPLES", "14"))
KEEP_GOING = os.environ.get("MLA_FUZZ_KEEP_GOING") == "1"
attention_codegen.STRICT_ISSUES = os.environ.get("MLA_FUZZ_STRICT") == "1"
FAILURE_DIR = os.environ.get("MLA_FUZZ_FAILURES")
SUMMARY: Counter = Counter()
# Programs that passed: hypothesis often draws one again (it splices earlier draws) and a
# compile costs ~2 s, so a repeat is skipped (assume). Keyed by source and sizes (the
# source does not hold the batch size). A failing program is never added, so shrinking
# and the final replay run it again.
PASSED: set = set()
ATTN = "attention.mla"


@pytest.fixture(scope="module", autouse=True)
def _fuzz_summary(request):
    yield
    if not SUMMARY:
        return
    lines = ["", "MLA attention fuzz summary (tests/test_fuzz_attention.py):"]
    order = ("run", "outcome", "FAIL", "upstream", "near miss", "gap", "bf16", "variant")  # then the rest
    for key in sorted(SUMMARY, key=lambda k: (next((i for i, o in enumerate(order) if k.startswith(o)), 9), k)):
        lines.append(f"  {SUMMARY[key]:6d}  {key}")
    text = "\n".join(lines)
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


def _reason_key(reason: str) -> str:
    """A near-miss reason with sizes and node names blanked, for counting."""
    return re.sub(r"\d+", "N", reason)[:110]


class FuzzFailure(AssertionError):
    def __init__(self, kind: str, text: str):
        super().__init__(text)
        self.kind = kind


def _fail(program: Program, kind: str, what: str, report=None) -> None:
    text = [f"{kind}: {what}", f"program: {program.describe()} (seed {program.seed})",
            "---- generated source ----", program.source]
    if report is not None:
        text += ["---- report ----", report.format()]
    raise FuzzFailure(kind, "\n".join(text))


def _problem(o: torch.Tensor, r: torch.Tensor, tol: float) -> str | None:
    if o.shape != r.shape or o.dtype != r.dtype:
        return f"shape/dtype {tuple(o.shape)}/{o.dtype}, reference {tuple(r.shape)}/{r.dtype}"
    if not torch.isfinite(r).all():
        return "reference output is not finite (the generator should not make that)"
    if not torch.isfinite(o).all():
        return "compiled output is not finite"
    scale = r.float().abs().max().item()
    err = (o.float() - r.float()).abs().max().item()
    if err > tol * max(scale, 1e-6):
        idx = (o.float() - r.float()).abs().argmax().item()
        return (f"max abs error {err:.3g} > {tol:g} * max|ref| {scale:.3g} (at flat index {idx} of "
                f"{tuple(r.shape)}: {o.flatten()[idx].item():.6g} vs {r.flatten()[idx].item():.6g})")
    return None


def _compare(program: Program, out, ref, report, label: str, inductor=None) -> None:
    out, ref = list(out), list(ref)
    if len(out) != len(ref):
        _fail(program, "WRONG OUTPUTS", f"{label}: {len(out)} outputs, eager has {len(ref)}", report)
    for i, (o, r) in enumerate(zip(out, ref)):
        problem = _problem(o, r, program.tol)
        if problem and program.dtype == torch.bfloat16 and inductor is not None and torch.isfinite(o).all():
            ind = list(inductor())[i]
            if _problem(o, ind, program.tol) is None:
                SUMMARY["bf16: matched Inductor, not eager (output compared with plain torch.compile)"] += 1
                if FAILURE_DIR:  # for a look: how far eager was
                    os.makedirs(FAILURE_DIR, exist_ok=True)
                    with open(os.path.join(FAILURE_DIR, f"bf16_vs_inductor_{program.seed}.txt"), "w") as f:
                        f.write(f"{label}, output {i}: against eager: {problem}\n{program.describe()}\n"
                                f"{program.source}\n{report.format()}\n")
                continue
            problem += f"; and against plain Inductor: {_problem(o, ind, program.tol)}"
        if problem:
            matched = ATTN in report.counts()
            kind = "MISCOMPILE" if matched else "WRONG RESULT"
            why = "attention.mla matched" if matched else f"no attention.mla rewrite, counts {report.counts()}"
            _fail(program, kind, f"{label}, output {i} ({why}): {problem}", report)


def _check_report(program: Program, report) -> str:
    """Checks the report against what the program knows; returns the outcome for the summary."""
    n = report.counts().get(ATTN, 0)
    misses = [m for m in report.near_misses if m.pattern == ATTN]
    calls = report.final_graph.count("mla.prefill_attention.default(")
    if calls != n:
        _fail(program, "WRONG COUNT", f"{calls} prefill_attention calls in the final graph, report says {n}", report)
    look = program.lookalike
    if program.expect == "match":
        if n != program.expected_matches:
            _fail(program, "WRONG COUNT", f"expected {program.expected_matches} attention.mla match(es), got {n}"
                  + (f"; near misses: {[m.reason for m in misses]}" if misses else ""), report)
        if misses:
            _fail(program, "NEAR MISS", f"matched, but attention.mla near misses: {[m.reason for m in misses]}", report)
        for m in report.matches:
            if m.pattern == ATTN:
                SUMMARY[f"variant: form {m.params['form']}"] += 1
        return f"matched x{n}"
    if program.expect == "leave":
        if n:
            _fail(program, "FUSED LOOK-ALIKE", f"look-alike '{look}' was rewritten ({n} match(es))", report)
        if program.near_miss_required and not misses:
            _fail(program, "NO NEAR MISS", f"look-alike '{look}' left alone without an attention.mla near miss", report)
        for m in misses:
            SUMMARY[f"near miss: {look}: {_reason_key(m.reason)}"] += 1
        size = ", Sq = Sk = 1" if program.degenerate else ""
        return f"left alone: {look} ({'near miss' if misses else 'no candidate'}{size})"
    # "either"
    why = program.either_why
    if n:
        return f"either: {why}: matched"
    for m in misses:
        SUMMARY[f"gap: {why}: {_reason_key(m.reason)}"] += 1
    return f"either: {why}: left alone ({'near miss' if misses else 'no candidate'})"


def _record_failure(program: Program, err: FuzzFailure) -> None:
    SUMMARY[f"FAIL {err.kind}: {program.lookalike or 'mla'}"] += 1
    if FAILURE_DIR:
        os.makedirs(FAILURE_DIR, exist_ok=True)
        n = sum(1 for _ in os.scandir(FAILURE_DIR))
        path = os.path.join(FAILURE_DIR, f"{n:04d}_{err.kind.replace(' ', '_').lower()}_{program.seed}.txt")
        with open(path, "w") as f:
            f.write(str(err))


def _plain_inductor_error(model, inputs) -> Exception | None:
    """The error plain torch.compile (Inductor, no mla passes) raises on the model, if any."""
    torch._dynamo.reset()
    try:
        torch.compile(model, backend="inductor", fullgraph=True)(*inputs)
    except Exception as e:  # noqa: BLE001
        return e
    finally:
        torch._dynamo.reset()
    return None


def error_family(e: BaseException) -> tuple[str, str]:
    """(type, first message line with numbers and addresses blanked) of the error under
    Dynamo's wrapper (BackendCompilerFailed carries the backend's own exception)."""
    while getattr(e, "inner_exception", None) is not None:
        e = e.inner_exception
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return type(e).__name__, re.sub(r"0x[0-9a-fA-F]+|\d+", "N", lines[0] if lines else "")[:100]


def same_failure(ours: BaseException, plain: BaseException | None) -> bool:
    """Whether plain Inductor's error is ours (an upstream bug): the same exception type and
    message family. Any other error of plain Inductor does not excuse ours."""
    return plain is not None and error_family(ours) == error_family(plain)


def run_program(program: Program) -> str:
    torch._dynamo.reset()
    model = program.build()
    inputs = program.make_inputs(program.seed)
    before = [t.clone() for t in inputs]
    reports = []
    with torch.no_grad():
        compiled = torch.compile(model, backend="mla", fullgraph=True, options={"report": reports.append})
        try:
            out = compiled(*inputs)
        except Exception as e:  # noqa: BLE001 - show the program with any compile error
            plain = _plain_inductor_error(model, inputs)
            if same_failure(e, plain):  # plain torch.compile fails the same way: not the mla backend's
                kind, message = error_family(e)
                SUMMARY[f"upstream: plain Inductor fails too: {kind}: {_reason_key(message)[:90]}"] += 1
                return "skipped: plain Inductor fails too"
            also = "" if plain is None else f"\n(plain Inductor raised another error: {error_family(plain)})"
            _fail(program, "CRASH", f"compiled call raised {type(e).__name__}: {str(e)[:3000]}{also}",
                  reports[0] if reports else None)
        if len(reports) != 1:
            _fail(program, "CRASH", f"expected one graph, got {len(reports)} reports")
        report = reports[0]
        for i, (a, b) in enumerate(zip(inputs, before)):
            if not torch.equal(a, b):
                _fail(program, "MUTATION", f"input {i} changed by the compiled call", report)
        ref = model(*inputs)
        inductor_fn = []

        def inductor(args):
            if not inductor_fn:
                inductor_fn.append(torch.compile(model, backend="inductor", fullgraph=True))
            return inductor_fn[0](*args)

        _compare(program, out, ref, report, "first inputs", lambda: inductor(inputs))
        fresh = program.make_inputs(program.seed + 1)
        fresh_out = compiled(*fresh)
        if len(reports) != 1:
            _fail(program, "CRASH", f"recompiled for inputs of the same shapes ({len(reports)} reports)", report)
        _compare(program, fresh_out, model(*fresh), report, "fresh inputs", lambda: inductor(fresh))
    return _check_report(program, report)


def _seeded(test):
    return seed(int(os.environ["MLA_FUZZ_SEED"]))(test) if "MLA_FUZZ_SEED" in os.environ else test


DRAWS = os.environ.get("MLA_FUZZ_STRATEGY") == "draws"


@settings(max_examples=EXAMPLES, deadline=None, derandomize="MLA_FUZZ_SEED" not in os.environ, database=None,
          phases=list(Phase) if DRAWS else [Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@_seeded
@given(program=programs() if DRAWS else seeded_programs())
def test_fuzz_attention(program: Program):
    key = (program.source, program.describe())
    assume(key not in PASSED)
    note(f"program: {program.describe()}\n---- generated source ----\n{program.source}")
    start = time.perf_counter()
    try:
        outcome = run_program(program)
    except FuzzFailure as err:
        if not KEEP_GOING:
            raise
        _record_failure(program, err)
        outcome = f"FAILED ({err.kind})"
    finally:
        torch._dynamo.reset()
    SUMMARY["run: examples"] += 1
    SUMMARY[f"outcome: {outcome}"] += 1
    SUMMARY[f"run: expect {program.expect}"] += 1
    SUMMARY[f"run: dtype {str(program.dtype).replace('torch.', '')}"] += 1
    for variant in program.variants():
        SUMMARY[f"variant: {variant}"] += 1
    SUMMARY["run: seconds (total)"] += round(time.perf_counter() - start)
    event(outcome)
    PASSED.add(key)


@pytest.mark.parametrize("plain, outcome", [
    (RuntimeError("mla pass failed at node 7"), "skipped"),   # the same error, other numbers
    (ValueError("mla pass failed at node 12"), "CRASH"),      # another exception type
    (RuntimeError("an unrelated lowering error"), "CRASH"),   # another message
    (None, "CRASH"),                                          # plain Inductor compiles it
])
def test_upstream_skip_needs_the_same_error(monkeypatch, plain, outcome):
    """A crash of ours is skipped as "upstream" only when plain Inductor fails the same
    way; any other failure of plain Inductor does not hide ours."""
    from mla_compile.pass_manager import MlaPassManager

    def fail(self, graph):
        raise RuntimeError("mla pass failed at node 12")

    monkeypatch.setattr(MlaPassManager, "__call__", fail)
    monkeypatch.setitem(globals(), "_plain_inductor_error", lambda model, inputs: plain)
    monkeypatch.setitem(globals(), "SUMMARY", Counter())  # keep the fuzz summary clean
    program = attention_codegen.generate(attention_codegen._Rng(0), 0)
    if outcome == "skipped":
        assert run_program(program) == "skipped: plain Inductor fails too"
        assert any(k.startswith("upstream: plain Inductor fails too: RuntimeError") for k in SUMMARY), SUMMARY
    else:
        with pytest.raises(FuzzFailure) as err:
            run_program(program)
        assert err.value.kind == "CRASH" and "mla pass failed at node 12" in str(err.value)
