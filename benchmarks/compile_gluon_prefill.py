"""Compile the Gluon prefill program (custom_ops/gluon_prefill.py) for sm_90 without a GPU
and report what ptxas says: registers per thread, spills, shared memory, instruction counts.

    python benchmarks/compile_gluon_prefill.py [CAUSAL=1] [BLOCK_N=128] [STAGES=2] [PINGPONG=1] [DTYPE=bf16]

Runs under whichever Python (and so Triton) starts it: the GPU machine's triton 3.6 and a
3.8 venv both work. Needs no CUDA device (ptxas ships with Triton's NVIDIA backend).
"""
import importlib
import inspect
import os
import re
import subprocess
import sys
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for name, path in (("mla_compile", ROOT + "/mla_compile"), ("mla_compile.custom_ops", ROOT + "/custom_ops")):
    pkg = types.ModuleType(name)  # the two packages without their __init__ (no torch ops registered)
    pkg.__path__ = [path]
    sys.modules[name] = pkg
m = importlib.import_module("mla_compile.custom_ops.gluon_prefill")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.experimental.gluon._runtime import GluonASTSource  # noqa: E402

flags = dict(kv.split("=") for kv in sys.argv[1:])
causal = bool(int(flags.get("CAUSAL", "1")))
bn = int(flags.get("BLOCK_N", m.BLOCK_N))
stages = int(flags.get("STAGES", m.STAGES))
dt = flags.get("DTYPE", "bf16")
fn = m.gluon_prefill
params = list(inspect.signature(fn.fn).parameters)
pingpong = bool(int(flags.get("PINGPONG", int(m.PINGPONG))))
const = dict(DN=m.DN, DR=m.DR, DV=m.DV, BLOCK_N=bn, STAGES=stages, CAUSAL=causal, POS_SCALE=True, PINGPONG=pingpong)


def desc(block):
    return f"tensordesc<{dt}[{','.join(map(str, block))}],{m.smem_layout(len(block))!r}>"


descs = dict(qn_desc=desc([1, 1, 64, m.DN]), qr_desc=desc([1, 1, 64, m.DR]), kn_desc=desc([1, 1, bn, m.DN]),
             kr_desc=desc([1, bn, m.DR]), v_desc=desc([1, 1, bn, m.DV]))
sig = {}
for p in params:
    if p in const:
        sig[p] = "constexpr"
    elif p in descs:
        sig[p] = descs[p]
    elif p == "O":
        sig[p] = "*" + dt
    elif p == "qk_scale":
        sig[p] = "fp32"
    else:
        sig[p] = "i32"
attrs = {(i,): [["tt.divisibility", 16]] for i, p in enumerate(params) if p in ("O", "so_b", "so_h", "so_m")}
k = triton.compile(GluonASTSource(fn, sig, const, attrs), target=GPUTarget("cuda", 90, 32),
                   options={"num_warps": m.WARPS})
tag = f"causal{int(causal)}_bn{bn}_st{stages}_pp{int(pingpong)}_{dt}_triton{triton.__version__}"
out = f"/tmp/gluon_prefill_{tag}"
ptx = k.asm["ptx"]
open(out + ".ptx", "w").write(ptx)
open(out + ".ttgir", "w").write(k.asm["ttgir"])
ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
r = subprocess.run([ptxas, "-arch=sm_90a", "-v", out + ".ptx", "-o", out + ".cubin"], capture_output=True, text=True)
# ptxas -v reports the launch's register cap (65536 / 384 threads); under setmaxnreg the
# consumers run at 240: the highest register the SASS names is what they really use
sass = subprocess.run([os.path.join(os.path.dirname(ptxas), "nvdisasm"), out + ".cubin"], capture_output=True,
                      text=True).stdout
max_reg = max((int(r) for r in re.findall(r"\bR(\d+)\b", sass)), default=-1)
info = " | ".join(ln.strip() for ln in r.stderr.splitlines()
                  if "registers" in ln or "spill" in ln or "error" in ln.lower() or "warn" in ln.lower())
print(tag, "num_warps", k.metadata.num_warps, "shared", k.metadata.shared,
      "wgmma", len(re.findall(r"wgmma.mma_async", ptx)), "tma", len(re.findall(r"cp.async.bulk.tensor", ptx)),
      "setmaxnreg", sorted(set(re.findall(r"setmaxnreg\.(\w+)\.sync\.aligned\.u32\s+(\d+)", ptx))),
      "ld/st.local", len(re.findall(r"(?:ld|st)\.local", ptx)), "SASS STL/LDL",
      len(re.findall(r"\b(?:STL|LDL)\b", sass)), "highest register R%d" % max_reg, "|", info)
