"""Compile the Gluon prefill program (custom_ops/gluon_prefill.py) for sm_90 without a GPU
and report what ptxas says: registers per thread, spills, shared memory, instruction counts.

    python benchmarks/compile_gluon_prefill.py [CAUSAL=1] [BLOCK_N=128] [STAGES=2] [PINGPONG=1] [DTYPE=bf16]

Runs under whichever Python (and so Triton) starts it: the GPU machine's triton 3.6 and a
3.8 venv both work. Needs no CUDA device (ptxas ships with Triton's NVIDIA backend).
"""
import inspect
import sys

from gluon_offline import compile_and_report, descriptor_type, load_custom_op_module, signature

m = load_custom_op_module("gluon_prefill")

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
    return descriptor_type(dt, block, m.smem_layout(len(block)))


descs = dict(qn_desc=desc([1, 1, 64, m.DN]), qr_desc=desc([1, 1, 64, m.DR]), kn_desc=desc([1, 1, bn, m.DN]),
             kr_desc=desc([1, bn, m.DR]), v_desc=desc([1, 1, bn, m.DV]))
sig = signature(params, const, descs, {"O": dt}, {"qk_scale"})
attrs = {(i,): [["tt.divisibility", 16]] for i, p in enumerate(params) if p in ("O", "so_b", "so_h", "so_m")}
tag = f"gluon_prefill_causal{int(causal)}_bn{bn}_st{stages}_pp{int(pingpong)}_{dt}"
print(compile_and_report(fn, sig, const, attrs, m.WARPS, tag))
