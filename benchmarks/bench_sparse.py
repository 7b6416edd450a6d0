"""DSA sparse attention (issue 14): `mla.sparse_attention`'s kernel against our dense
fused kernel under the top-k mask and against Inductor on the masked dense code, in
one run; then the whole DSA decode layer (indexer + top-k + attention).

Run on a CUDA machine: `python benchmarks/bench_sparse.py` (mla_compile installed).
Not run by the author (no GPU): the lead runs it and copies the table into
benchmarks/RESULTS.md with the device and date.

bf16, DeepSeek dims (latent R = 512, rope Dr = 64), top-k K = 2048, one query token
per sequence (decode), the latent cache one [B, L, 576] buffer, q_lat given
([B, H, 1, 512]); the indices are topk's of random scores (a K-subset of each row's
keys, distinct, unsorted). Timed (GPU time under CUDA graphs):
  sparse     mla_sparse_attention with distinct=True (what the pass passes for topk's
             indices: gather by index, split-K + combine, no sort)
  sorted     the same without distinct (the op sorts to drop repeats first)
  dense      mla_decode_attention over all L keys with the DSA mask (0 at chosen
             keys, finfo.min elsewhere): what the dense rewrite runs today
  inductor   the masked absorbed math through torch.compile (dynamic=False)
floor = bytes the sparse op must read (B * K * (576 * 2 + 8): chosen latent rows and
int64 indices) / measured copy bandwidth.

Layer: the DSA indexer as transformers writes it (index heads 64 x 128 dims over an
index-key cache [B, L, 128], ReLU, per-head weights, sum, top-k), then attention:
  layer sparse = indexer + top-k + sparse op; layer dense = indexer + top-k + scatter
  into a mask + dense fused op. Both with the indexer compiled by Inductor. Target:
  >= 3x at L = 32768.
Prefill (S = L = 8192, B = 1): the sparse op (every query its own 2048 keys, computed
over the latent, q_nope @ w_uk and the output through w_uv included) vs the dense
fused prefill op (decompressed, under the combined mask).

Environment: BENCH_CASES "BxLxH,..." (default B in 1, 32 x L in 8192, 32768, 131072 x
H in 16, 128); BENCH_PREFILL=0 skips the prefill rows; OUT writes $OUT/sparse_bench.md.
"""
from __future__ import annotations

import os

import torch
import triton.testing

from mla_compile.custom_ops.prefill_attention import prefill_attention
from mla_compile.custom_ops.sparse_attention import sparse_attention
from mla_compile.custom_ops.triton_decode import mla_decode_attention
from mla_compile.custom_ops.triton_sparse import mla_sparse_attention

R, DR, K, SCALE = 512, 64, 2048, 0.1352
IDX_HEADS, IDX_DIM = 64, 128
CASES = [(B, L, H) for H in (16, 128) for L in (8192, 32768, 131072) for B in (1, 32)]


def parse_cases(spec: str) -> list[tuple[int, int, int]]:
    return [tuple(int(v) for v in item.split("x")) for item in filter(None, spec.replace(" ", "").split(","))]


def bench(fn) -> float:
    torch.cuda.synchronize()  # do_bench_cudagraph runs fn on its own stream: inputs must be ready
    return triton.testing.do_bench_cudagraph(fn, rep=50) * 1e3  # us


def copy_bandwidth() -> float:
    x = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    return 2 * x.numel() / (triton.testing.do_bench(lambda: y.copy_(x), warmup=10, rep=50) * 1e-3)


def masked_absorbed(q_lat, q_pe, c, kr, mask):
    s = (torch.einsum("bhqr,blr->bhql", q_lat, c) + torch.einsum("bhqd,bld->bhql", q_pe, kr)) * SCALE + mask
    return torch.einsum("bhql,blr->bhqr", torch.softmax(s.float(), -1).to(q_lat.dtype), c)


def indexer(q_idx, w_idx, k_idx):
    """transformers' DSA indexer scores for one query: [B, 1, L]."""
    scores = torch.relu(torch.einsum("bqhd,bld->bqhl", q_idx.float(), k_idx.float()) * IDX_DIM**-0.5)
    return torch.einsum("bqh,bqhl->bql", w_idx.float() * IDX_HEADS**-0.5, scores)


def topk_mask(idx, L, dtype):
    unchosen = torch.ones(idx.shape[0], idx.shape[1], L, dtype=torch.bool, device=idx.device)
    unchosen = unchosen.scatter(-1, idx, False)[:, None]
    return torch.zeros((), dtype=dtype, device=idx.device).masked_fill(unchosen, torch.finfo(dtype).min)


def decode_row(B, L, H, bw, inductor, index_topk):
    g = torch.Generator(device="cuda").manual_seed(B * L + H)
    cache = torch.randn(B, L, R + DR, device="cuda", generator=g).to(torch.bfloat16)
    c, kr = cache[..., :R], cache[..., R:]
    q = (torch.randn(B, H, 1, R + DR, device="cuda", generator=g) * 0.1).to(torch.bfloat16)
    q_lat, q_pe = q[..., :R], q[..., R:]
    idx = torch.rand(B, 1, L, device="cuda", generator=g).topk(K, -1).indices
    mask = topk_mask(idx, L, torch.bfloat16)
    sparse = mla_sparse_attention(q_lat, q_pe, c, kr, idx, SCALE, distinct=True)
    dense = mla_decode_attention(q_lat, q_pe, c, kr, SCALE, False, mask=mask)
    err = ((sparse.float() - dense.float()).norm() / dense.float().norm()).item()
    assert err < 2e-2, f"B={B} L={L} H={H}: sparse vs dense rel. error {err:.2e}"
    inductor(q_lat, q_pe, c, kr, mask)
    t_sp = bench(lambda: mla_sparse_attention(q_lat, q_pe, c, kr, idx, SCALE, distinct=True))
    t_so = bench(lambda: mla_sparse_attention(q_lat, q_pe, c, kr, idx, SCALE))
    t_dn = bench(lambda: mla_decode_attention(q_lat, q_pe, c, kr, SCALE, False, mask=mask))
    t_in = bench(lambda: inductor(q_lat, q_pe, c, kr, mask))
    floor = B * K * ((R + DR) * 2 + 8) / bw * 1e6
    # the whole layer: indexer over an index-key cache, top-k, then attention
    k_idx = torch.randn(B, L, IDX_DIM, device="cuda", generator=g).to(torch.bfloat16)
    q_idx = torch.randn(B, 1, IDX_HEADS, IDX_DIM, device="cuda", generator=g).to(torch.bfloat16)
    w_idx = torch.randn(B, 1, IDX_HEADS, device="cuda", generator=g).to(torch.bfloat16)
    index_topk(q_idx, w_idx, k_idx)

    def layer_sparse():
        chosen = index_topk(q_idx, w_idx, k_idx)
        return mla_sparse_attention(q_lat, q_pe, c, kr, chosen, SCALE, distinct=True)

    def layer_dense():
        chosen = index_topk(q_idx, w_idx, k_idx)
        return mla_decode_attention(q_lat, q_pe, c, kr, SCALE, False, mask=topk_mask(chosen, L, torch.bfloat16))

    t_ls, t_ld = bench(layer_sparse), bench(layer_dense)
    return (f"| {B} | {L} | {H} | {t_sp:.1f} | {t_so:.1f} | {floor:.1f} | {floor / t_sp:.2f} | {t_dn:.1f} | {t_dn / t_sp:.2f} | "
            f"{t_in:.1f} | {t_in / t_sp:.2f} | {t_ls:.1f} | {t_ld:.1f} | {t_ld / t_ls:.2f} | {err:.1e} |")


def prefill_row(S, H, bw):
    g = torch.Generator(device="cuda").manual_seed(S + H)
    r = lambda *s, sc=1.0: (torch.randn(*s, device="cuda", generator=g) * sc).to(torch.bfloat16)  # noqa: E731
    q_nope, q_pe, c, kr = r(1, H, S, 128, sc=0.1), r(1, H, S, DR, sc=0.1), r(1, S, R), r(1, S, DR)
    w_uk, w_uv = r(H, 128, R, sc=0.05), r(H, 128, R, sc=0.05)
    causal = torch.ones(S, S, device="cuda", dtype=torch.bool).tril()
    scores = torch.rand(1, S, S, device="cuda", generator=g).masked_fill(~causal, -1.0)
    idx = scores.topk(min(K, S), -1).indices  # row i: up to K of its causal keys (padding picks hidden ones)
    base = torch.zeros(1, 1, S, S, device="cuda", dtype=torch.bfloat16).masked_fill(~causal, float("-inf"))
    full = base.masked_fill(topk_mask(idx, S, torch.bfloat16) != 0, float("-inf"))
    t_sp = bench(lambda: sparse_attention(q_nope, q_pe, c, kr, w_uk, w_uv, idx, SCALE, "triton", base))
    t_dn = bench(lambda: prefill_attention(q_nope, q_pe, c, kr, w_uk, w_uv, SCALE, False, "decompressed",
                                           "triton", full, True))
    floor = S * K * ((R + DR) * 2 + 8) / bw * 1e6
    return f"| prefill S={S} | {H} | {t_sp:.1f} | {floor:.1f} | {floor / t_sp:.2f} | {t_dn:.1f} | {t_dn / t_sp:.2f} |"


def main() -> None:
    cases = parse_cases(os.environ["BENCH_CASES"]) if os.environ.get("BENCH_CASES") else CASES
    device = torch.cuda.get_device_name()
    bw = copy_bandwidth()
    head = f"{device}; torch {torch.__version__}; copy bandwidth {bw / 1e9:.0f} GB/s; K = {K}; bf16"
    print(head, flush=True)
    inductor = torch.compile(masked_absorbed, dynamic=False)
    index_topk = torch.compile(lambda q, w, k: indexer(q, w, k).topk(K, -1).indices, dynamic=False)
    rows = ["| B | L | H | sparse us | sorted us | floor us | of floor | dense fused us | dense/sparse | inductor us "
            "| inductor/sparse | layer sparse us | layer dense us | layer dense/sparse | rel. err vs dense |",
            "|---" * 15 + "|"]
    for B, L, H in cases:
        rows.append(decode_row(B, L, H, bw, inductor, index_topk))
        print(rows[-1], flush=True)
        torch.cuda.empty_cache()
    if os.environ.get("BENCH_PREFILL", "1") != "0":
        rows += ["", "| prefill | H | sparse us | floor us | of floor | dense fused us | dense/sparse |",
                 "|---" * 7 + "|"]
        for H in (16, 128):
            rows.append(prefill_row(8192, H, bw))
            print(rows[-1], flush=True)
    table = "\n".join(rows)
    print(f"\n{head}\n{table}")
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "sparse_bench.md"), "w") as f:
            f.write(f"{head}\n\n{table}\n")


if __name__ == "__main__":
    main()
