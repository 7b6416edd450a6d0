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
import inspect
import sys

from gluon_offline import compile_and_report, descriptor_type, load_custom_op_module, signature

m = load_custom_op_module("gluon_decode_seesaw")

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
    return descriptor_type(dt, block, smem_layout())


descs = dict(CD=desc([64, 256]), KRD=desc([64, 64])) if tma else {}
ptr = {"QL": dt, "QR": dt, "C": dt, "KR": dt, "MK": "fp32", "O": dt, "OP": "fp32", "ST": "fp32",
       "TABLE": "i32", "SEQ": "i32", "SINKS": "fp32", "SCHED": "i32"}
sig = signature(params, const, descs, ptr, {"scale"})
# the launcher's divisibility specialisation: pointers, and the row strides the cp.async need
div16 = {"sc_b", "sc_t", "skr_b", "skr_t", "sql_b", "sql_h", "sqr_b", "sqr_h", "so_b", "so_h"}
attrs = {(i,): [["tt.divisibility", 16]] for i, p in enumerate(params) if sig[p].startswith("*") or p in div16}
tag = "gluon_seesaw_" + "_".join(f"{n}{int(v)}" for n, v in const.items() if isinstance(v, bool)) + f"_{dt}"
print(compile_and_report(fn, sig, const, attrs, m.WARPS, tag))
