"""The pass uuid keys Inductor's FX graph cache: a compile with a pass switched
off must never be served code that was rewritten with it on."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from mla_compile import pass_manager
from mla_compile.options import Options
from mla_compile.pass_manager import MlaPassManager

CHILD = textwrap.dedent("""
    import json, sys, torch
    from torch._dynamo.utils import counters

    def f(x, cos, sin):
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin

    torch.manual_seed(0)
    args = (torch.randn(2, 4, 8, 16), torch.randn(8, 16), torch.randn(8, 16))
    compiled = torch.compile(f, backend="mla", options={"rope": sys.argv[1] == "on"})
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = compiled(*args)
    torch.testing.assert_close(out, f(*args))
    ran = any("mla::rope" in e.key for e in prof.key_averages())
    print(json.dumps({"rope_ran": ran, "cache_hits": counters["inductor"]["fxgraph_cache_hit"]}))
""")


def run_child(tmp_path, rope: str) -> dict:
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("TORCHINDUCTOR_FORCE_DISABLE_CACHES", None)
    done = subprocess.run([sys.executable, "-c", CHILD, rope], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_switching_the_pass_off_is_not_served_cached_rewrite(tmp_path):
    first = run_child(tmp_path, "on")
    assert first["rope_ran"] and first["cache_hits"] == 0
    off = run_child(tmp_path, "off")
    assert not off["rope_ran"], "compile with rope off was served the cached rewritten graph"
    again = run_child(tmp_path, "on")
    assert again["rope_ran"] and again["cache_hits"] >= 1, "the cache was not in use: the test proves nothing"


def uuid_of(**options) -> bytes:
    return MlaPassManager(Options.from_user(options)).uuid()


@pytest.mark.parametrize("change", [{"rope": False}, {"kernel": "reference"}, {"kernel": "triton"},
                                    {"inductor": {"max_autotune": True}}, {"mode": "reduce-overhead"},
                                    {"strict": True}])
def test_every_option_changes_the_uuid(change):
    assert uuid_of(**change) != uuid_of()


def test_report_sink_does_not_change_the_uuid():
    assert uuid_of(report=True) == uuid_of() == uuid_of(report=print)


def test_kernel_and_pass_sources_are_hashed(tmp_path, monkeypatch):
    files = pass_manager._source_files()
    names = {os.path.basename(f) for f in files}
    assert {"rope.py", "rope_forms.py", "triton_rope.py", "reference.py", "kernel_choice.py",
            "triton_backend.py", "prefill_attention.py", "attention_form.py"} <= names
    fake_source = tmp_path / "kernel.py"
    fake_source.write_text("A = 1\n")
    monkeypatch.setattr(pass_manager, "_source_files", lambda: (*files, str(fake_source)))
    before = uuid_of()
    fake_source.write_text("A = 2\n")
    assert uuid_of() != before
