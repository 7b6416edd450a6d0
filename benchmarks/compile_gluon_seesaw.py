"""Compile the seesaw Gluon decode program (custom_ops/gluon_decode_seesaw.py) for sm_90
without a GPU and report what ptxas says: registers, spills, shared memory, instruction
counts, for the cp.async key copies (TMA=0) or the TMA ones (TMA=1).

    python benchmarks/compile_gluon_seesaw.py [TMA=1] [PAGED=1] [CAUSAL=1] [MASK=1] [SINK=1]
        [DIRECT=1] [ZERO_EMPTY=1] [BALANCED=1] [DTYPE=bf16]

DeepSeek dims (R = 512, Dr = 64, 64-token pages). Runs under whichever Python (and so
Triton) starts it: the GPU machine's Triton 3.6 and a 3.8 venv both work; needs no CUDA
device (ptxas ships with Triton's NVIDIA backend). Writes the PTX / TTGIR / SASS under
$TMPDIR (or /tmp) as gluon_seesaw_<tag>.*.
"""
import importlib
import inspect
import os
import re
import subprocess
import sys
import tempfile
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for name, path in (("mla_compile", ROOT + "/mla_compile"), ("mla_compile.custom_ops", ROOT + "/custom_ops")):
    pkg = types.ModuleType(name)  # the two packages without their __init__ (no torch ops registered)
    pkg.__path__ = [path]
    sys.modules[name] = pkg
m = importlib.import_module("mla_compile.custom_ops.gluon_decode_seesaw")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.experimental.gluon._runtime import GluonASTSource  # noqa: E402

flags = dict(kv.split("=") for kv in sys.argv[1:])
dt = flags.get("DTYPE", "bf16")
fn = m.gluon_split_seesaw
params = list(inspect.signature(fn.fn).parameters)
const = dict(R=512, DR=64, PAGE=64)
for k in ("CAUSAL", "MASK", "DIRECT", "ZERO_EMPTY", "PAGED", "SINK", "BALANCED", "TMA"):
    if k in params:
        const[k] = bool(int(flags.get(k, "0")))
tma = const.get("TMA", False)
if "CD" in params and not tma:  # the cp.async variant takes no descriptors
    const["CD"] = const["KRD"] = None


def desc(block):
    from mla_compile.custom_ops.gluon_seesaw_copy import smem_layout
    return f"tensordesc<{dt}[{','.join(map(str, block))}],{smem_layout()!r}>"


descs = dict(CD=desc([64, 256]), KRD=desc([64, 64])) if tma else {}
ptr = {"QL": dt, "QR": dt, "C": dt, "KR": dt, "MK": "fp32", "O": dt, "OP": "fp32", "ST": "fp32",
       "TABLE": "i32", "SEQ": "i32", "SINKS": "fp32", "SCHED": "i32"}
sig = {}
for p in params:
    if p in const:
        sig[p] = "constexpr"
    elif p in descs:
        sig[p] = descs[p]
    elif p in ptr:
        sig[p] = "*" + ptr[p]
    elif p == "scale":
        sig[p] = "fp32"
    else:
        sig[p] = "i32"
# the launcher's divisibility specialisation: pointers, and the row strides the cp.async need
div16 = {"sc_b", "sc_t", "skr_b", "skr_t", "sql_b", "sql_h", "sqr_b", "sqr_h", "so_b", "so_h"}
attrs = {(i,): [["tt.divisibility", 16]] for i, p in enumerate(params) if sig[p].startswith("*") or p in div16}
k = triton.compile(GluonASTSource(fn, sig, const, attrs), target=GPUTarget("cuda", 90, 32),
                   options={"num_warps": m.WARPS})
tag = "_".join(f"{n}{int(v)}" for n, v in const.items() if isinstance(v, bool)) + f"_{dt}_triton{triton.__version__}"
out = os.path.join(tempfile.gettempdir(), f"gluon_seesaw_{tag}")
ptx = k.asm["ptx"]
open(out + ".ptx", "w").write(ptx)
open(out + ".ttgir", "w").write(k.asm["ttgir"])
ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
r = subprocess.run([ptxas, "-arch=sm_90a", "-v", out + ".ptx", "-o", out + ".cubin"], capture_output=True, text=True)
sass = subprocess.run([os.path.join(os.path.dirname(ptxas), "nvdisasm"), out + ".cubin"], capture_output=True,
                      text=True).stdout
open(out + ".sass", "w").write(sass)
max_reg = max((int(r) for r in re.findall(r"\bR(\d+)\b", sass)), default=-1)
info = " | ".join(ln.strip() for ln in r.stderr.splitlines()
                  if "registers" in ln or "spill" in ln or "error" in ln.lower() or "warn" in ln.lower())
print(tag, "shared", k.metadata.shared, "wgmma", len(re.findall(r"wgmma.mma_async", ptx)),
      "tma", len(re.findall(r"cp.async.bulk.tensor", ptx)), "cp.async", len(re.findall(r"cp.async.cg|cp.async.ca", ptx)),
      "ld/st.local", len(re.findall(r"(?:ld|st)\.local", ptx)), "SASS STL/LDL",
      len(re.findall(r"\b(?:STL|LDL)\b", sass)), "highest register R%d" % max_reg, "|", info)
