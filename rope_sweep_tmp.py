import os, sys, time, re
import torch, triton, triton.testing
import mla_compile.custom_ops
from mla_compile.custom_ops import triton_rope as tr
from mla_compile.custom_ops.reference import rope_reference
dev = "cuda"
torch.manual_seed(0)
# correctness on GPU, a few layouts & all flags
bad = 0
for ii in (0, 1):
  for io in (0, 1):
    for hw in (0, 1):
      for d in (8, 64, 80, 256):
        for dt in (torch.float32, torch.bfloat16):
          w = d // 2 if hw else d
          qp = torch.randn(3, 5, 7, d + 16, device=dev, dtype=dt)[..., 16:].transpose(1, 2)
          k = torch.randn(3, 7, 1, d, device=dev, dtype=dt)
          c = torch.randn(3, 7, 1, w, device=dev); s = torch.randn(3, 7, 1, w, device=dev)
          outs = [torch.full_like(qp, float('nan')), torch.full_like(k, float('nan'))]
          tr.rope_triton([qp, k], c, s, ii, io, outs)
          for a, o in zip([qp, k], outs):
            r = rope_reference(a, c, s, ii, io)
            tol = 1e-5 if dt == torch.float32 else 1e-2
            if not torch.allclose(o.float(), r.float(), atol=tol*4, rtol=tol) or o.isnan().any():
              bad += 1; print("BAD", ii, io, hw, d, dt, (o.float()-r.float()).abs().max())
print("gpu correctness bad =", bad)

def inputs(T, H):
    qp = torch.randn(T, H, 192, device=dev, dtype=torch.bfloat16)[..., 128:]
    kv = torch.randn(T, 576, device=dev, dtype=torch.bfloat16)[:, 512:].unsqueeze(1)
    pos = torch.randint(0, 32768, (T,), device=dev)
    cc = torch.randn(32768, 64, device=dev, dtype=torch.bfloat16)
    sc = torch.randn(32768, 64, device=dev, dtype=torch.bfloat16)
    return qp, kv, cc[pos].unsqueeze(1), sc[pos].unsqueeze(1)

orig = tr._config
for (T, H) in [(16384, 128), (16384, 16), (64, 16), (64, 128)]:
    q, k, c, s = inputs(T, H)
    outs = [torch.empty(q.shape, device=dev, dtype=q.dtype), torch.empty(k.shape, device=dev, dtype=k.dtype)]
    moved = 2 * (q.numel() + k.numel()) * 2 + 2 * c.numel() * 2
    print(f"T={T} H={H} default config {orig(T*H+T, 32, q.device)}")
    res = []
    for br in (4, 8, 16, 32, 64, 128, 256):
        for nw in (1, 2, 4, 8):
            if br * 64 < nw * 32 * 2: continue
            tr._config = lambda *a, br=br, nw=nw: (br, nw)
            f = lambda: tr.rope_triton([q, k], c, s, False, False, outs)
            f()
            t = triton.testing.do_bench_cudagraph(f, rep=50, return_mode="median") * 1e3
            res.append((t, br, nw))
    tr._config = orig
    res.sort()
    print("  best:", [(f"{t:.1f}us", br, nw, f"{moved/t/1e3:.0f}GB/s") for t, br, nw in res[:6]])
    f = lambda: tr.rope_triton([q, k], c, s, False, False, outs)
    t = triton.testing.do_bench_cudagraph(f, rep=50, return_mode="median") * 1e3
    print(f"  default: {t:.1f}us {moved/t/1e3:.0f}GB/s")
    for ii in (0, 1):
        for io in (0, 1):
            f = lambda: tr.rope_triton([q, k], c, s, ii, io, outs)
            t = triton.testing.do_bench_cudagraph(f, rep=50, return_mode="median") * 1e3
            print(f"  flags in={ii} out={io}: {t:.1f}us")
    # host overhead
    f = lambda: tr.rope_triton([q, k], c, s, False, False, outs)
    g = lambda: torch.ops.mla.rope([q, k], c, s, False, False)
    for name, fn in (("rope_triton", f), ("op", g)):
        for _ in range(10): fn()
        torch.cuda.synchronize(); t0 = time.perf_counter()
        for _ in range(200): fn()
        t1 = time.perf_counter(); torch.cuda.synchronize(); t2 = time.perf_counter()
        print(f"  host {name}: {(t1-t0)/200*1e6:.1f} us/call (incl sync {(t2-t0)/200*1e6:.1f})")
k = tr.rope_triton([q, k], c, s, False, False, outs)
ptx = k.asm["ptx"]
print("ptx ld.global.v4:", len(re.findall(r"ld\.global[.\w]*\.v4", ptx)), "st.global.v4:", len(re.findall(r"st\.global[.\w]*\.v4", ptx)),
      "ld.global (all):", len(re.findall(r"ld\.global", ptx)), "div/rem:", len(re.findall(r"(div|rem)\.", ptx)))
print("n_regs", k.n_regs, "spills", k.n_spills)
