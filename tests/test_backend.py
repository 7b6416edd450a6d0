"""The backend as users reach it: entry point, options, modes, extra keywords."""
import os
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points

import pytest
import torch

import mla_compile
from mla_compile.options import Options


def rope_fn(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def rope_inputs():
    return torch.randn(2, 4, 8, 16), torch.randn(8, 16), torch.randn(8, 16)


def test_entry_point_registered():
    names = {ep.name: ep.value for ep in entry_points(group="torch_dynamo_backends")}
    assert names.get("mla") == "mla_compile.backend:mla_backend"


def test_backend_found_without_importing_package(tmp_path):
    script = textwrap.dedent("""
        import sys, torch
        def f(x, cos, sin):
            x1, x2 = x.chunk(2, dim=-1)
            return x * cos + torch.cat((-x2, x1), dim=-1) * sin
        args = (torch.randn(2, 4, 8, 16), torch.randn(8, 16), torch.randn(8, 16))
        assert "mla_compile" not in sys.modules
        out = torch.compile(f, backend="mla")(*args)
        assert "mla_compile" in sys.modules
        torch.testing.assert_close(out, f(*args))
        print("OK")
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("OK")


@pytest.mark.parametrize("mode", ["default", "reduce-overhead", "max-autotune-no-cudagraphs"])
def test_mode_keyword(mode, caplog):
    args = rope_inputs()
    with torch._inductor.config.patch(force_disable_caches=True), caplog.at_level("INFO", "mla_compile"):
        out = torch.compile(rope_fn, backend="mla", mode=mode)(*args)
    torch.testing.assert_close(out, rope_fn(*args))
    assert "matched rope.neox" in caplog.text


def test_mode_as_option_with_report():
    reports = []
    args = rope_inputs()
    out = torch.compile(rope_fn, backend="mla", options={"mode": "reduce-overhead", "report": reports.append})(*args)
    torch.testing.assert_close(out, rope_fn(*args))
    assert reports[0].counts() == {"rope.neox": 1}


def test_extra_keywords_accepted():
    gm = torch.fx.symbolic_trace(rope_fn)
    compiled = mla_compile.mla_backend(gm, list(rope_inputs()), mode=None, options=None, name="mla")
    args = rope_inputs()
    torch.testing.assert_close(compiled(*args)[0] if isinstance(compiled(*args), (list, tuple))
                               else compiled(*args), rope_fn(*args))


def test_unknown_option_lists_valid_ones():
    with pytest.raises(ValueError, match=r"(?s)unknown option\(s\) \['ropes'\].*rope:.*kernel:.*report:"):
        Options.from_user({"ropes": False})


@pytest.mark.parametrize("bad, message", [
    ({"kernel": "cuda"}, "'kernel' must be one of"),
    ({"rope": "yes"}, "'rope' must be a bool"),
    ({"report": 3}, "'report' must be a bool or a callable"),
    ({"mode": "fast"}, "'mode' must be one of"),
    ({"strict": 1}, "'strict' must be a bool"),
    ({"launch": "python"}, "'launch' must be one of"),
    ({"inductor": {"joint_custom_pre_pass": None}}, "may not set joint_custom_pre_pass"),
])
def test_bad_option_values(bad, message):
    with pytest.raises(ValueError, match=message):
        Options.from_user(bad)


def test_bad_options_reach_the_user_through_compile():
    with pytest.raises(Exception, match="unknown option"):
        torch.compile(rope_fn, backend="mla", options={"nope": 1})(*rope_inputs())


def test_report_true_prints_to_stderr(capfd):
    torch.compile(rope_fn, backend="mla", options={"report": True})(*rope_inputs())
    assert "matched rope.neox" in capfd.readouterr().err


def test_inductor_options_pass_through():
    reports = []
    args = rope_inputs()
    out = torch.compile(rope_fn, backend="mla",
                        options={"report": reports.append, "inductor": {"max_autotune": True}})(*args)
    torch.testing.assert_close(out, rope_fn(*args))
    assert reports[0].counts() == {"rope.neox": 1}


def test_report_reaches_torch_logs_and_structured_trace(tmp_path):
    script = textwrap.dedent("""
        import torch
        def f(x, cos, sin):
            x1, x2 = x.chunk(2, dim=-1)
            return x * cos + torch.cat((-x2, x1), dim=-1) * sin
        torch.compile(f, backend="mla")(torch.randn(2, 4, 8, 16), torch.randn(8, 16), torch.randn(8, 16))
    """)
    env = dict(os.environ, TORCH_LOGS="+mla_compile", TORCH_TRACE=str(tmp_path / "trace"),
               TORCHINDUCTOR_FORCE_DISABLE_CACHES="1")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "matched rope.neox" in done.stderr
    traces = "".join(p.read_text() for p in (tmp_path / "trace").iterdir())
    assert '"name": "mla_compile_report"' in traces and "rope.neox" in traces


def test_strict_turns_left_alone_into_an_error():
    def promoted(x, cos, sin):  # bf16 x, fp32 cos/sin: a type promotion the op can't express
        return rope_fn(x, cos, sin)

    args = (torch.randn(2, 4, 8, 16, dtype=torch.bfloat16), torch.randn(8, 16), torch.randn(8, 16))
    reports = []
    out = torch.compile(promoted, backend="mla", options={"report": reports.append})(*args)
    torch.testing.assert_close(out, promoted(*args))
    assert reports[0].counts() == {} and "type promotion" in reports[0].near_misses[0].reason
    torch._dynamo.reset()
    with pytest.raises(Exception, match=r"(?s)strict.*left alone.*rope.neox.*type promotion"):
        torch.compile(promoted, backend="mla", options={"strict": True})(*args)
    torch._dynamo.reset()
    out = torch.compile(rope_fn, backend="mla", options={"strict": True})(*rope_inputs())
    assert out.shape == (2, 4, 8, 16)
