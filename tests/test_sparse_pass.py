"""The sparse attention pass on a small DSA layer written as transformers writes it (an
indexer's top-k scattered into an all-True mask, and-ed with a bool base for SDPA or
masked_fill over an additive base for eager attention): rewritten to
`mla.sparse_attention` with exact counts, equal to eager on fresh inputs; look-alikes
(a scatter along the query axis, indices that are no top-k under a finite fill, the
mask also read elsewhere) keep the dense fused op, with the reason in the report. The
report says whether the op may skip deduplicating the indices: only topk's own (through
casts wide enough), not other indices (duplicates do occur) nor topk's cast to int16.
With attention sinks as HY-V4 writes them (a sink column concatenated to the scores,
the row max subtracted, the column dropped after the softmax) the layer is sparse too,
the sinks passed to the op (`sinks=per head` in the report)."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

H, DN, DR, DV, R, D, TOPK = 2, 8, 4, 8, 16, 32, 3


class DsaLayer(nn.Module):
    """MLA (latent -> kv_b_proj per head, one shared rope key) under a DSA mask."""

    def __init__(self, variant: str):
        super().__init__()
        self.variant = variant
        self.q_proj = nn.Linear(D, H * (DN + DR), bias=False)
        self.kv_a = nn.Linear(D, R + DR, bias=False)
        self.kv_b = nn.Linear(R, H * (DN + DV), bias=False)
        self.idx_q = nn.Linear(D, 8, bias=False)
        self.idx_k = nn.Linear(D, 8, bias=False)
        self.scale = (DN + DR) ** -0.5
        # HY-V4's sinks: one logit per head (or, "shared_sinks", one for every head)
        self.sinks = nn.Parameter(torch.randn(1 if variant == "shared_sinks" else H)) \
            if variant.endswith("sinks") else None

    def forward(self, x, other_idx):
        B, S, _ = x.shape
        q_nope, q_pe = self.q_proj(x).view(B, S, H, DN + DR).transpose(1, 2).split([DN, DR], -1)
        q = torch.cat([q_nope, q_pe * 1.0], -1)
        c, k_pe = self.kv_a(x).split([R, DR], -1)
        kv = self.kv_b(c).view(B, S, H, DN + DV).transpose(1, 2)
        k_nope, v = kv.split([DN, DV], -1)
        k = torch.cat([k_nope, k_pe.view(B, 1, S, DR).expand(-1, H, -1, -1)], -1)
        pos = torch.arange(S, device=x.device)
        keep = (pos[None, :] <= pos[:, None])[None, None].expand(B, 1, S, S)  # transformers' causal build
        base = torch.where(keep, 0.0, torch.finfo(x.dtype).min)
        scores = self.idx_q(x) @ self.idx_k(x).transpose(1, 2)
        bool_mask = self.variant.startswith("bool")
        if bool_mask:
            scores = scores.masked_fill(~keep[:, 0], float("-inf"))
        else:
            scores = scores + base[:, 0]
        idx = scores.topk(TOPK, dim=-1).indices.to(torch.int32)
        if self.variant in ("not_topk", "bool_other"):
            idx = other_idx
        if self.variant == "bool_int16":  # narrow enough to wrap on a long axis: not proven distinct
            idx = scores.topk(TOPK, dim=-1).indices.to(torch.int16)
        if self.variant == "query_axis":  # scattered along the queries: not the indexer's selection
            unchosen = torch.ones(B, S, S, dtype=torch.bool, device=x.device).scatter(
                1, idx.transpose(1, 2).long(), False)
        else:
            unchosen = torch.ones(B, S, S, dtype=torch.bool, device=x.device).scatter(-1, idx.long(), False)
        unchosen = unchosen.unsqueeze(1)
        if self.sinks is not None:  # HY-V4's eager attention
            return self.with_sinks(q, k, v, keep, unchosen, base)
        if bool_mask:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep & ~unchosen, scale=self.scale)
            return out.transpose(1, 2).reshape(B, S, H * DV)
        mask = base.masked_fill(unchosen, torch.finfo(x.dtype).min)
        p = torch.softmax(q @ k.transpose(-1, -2) * self.scale + mask, -1, dtype=torch.float32).to(x.dtype)
        out = (p @ v).transpose(1, 2).reshape(B, S, H * DV)
        if self.variant == "mask_elsewhere":
            return out, mask
        return out

    def with_sinks(self, q, k, v, keep, unchosen, base):
        """transformers 5.23's HY-V4 eager attention under the DSA mask: finfo.min fill
        over an additive base, or (bool_sinks) the bool form as an additive -inf mask."""
        B, _, S, _ = q.shape
        if self.variant == "bool_sinks":
            mask = torch.where(keep & ~unchosen, 0.0, float("-inf"))
        else:
            mask = base.masked_fill(unchosen, torch.finfo(q.dtype).min)
        scores = q @ k.transpose(-1, -2) * self.scale + mask
        combined = torch.cat([scores, self.sinks.reshape(1, -1, 1, 1).expand(B, H, S, 1)], -1)
        combined = combined - combined.max(dim=-1, keepdim=True).values
        p = torch.softmax(combined, -1, dtype=combined.dtype)[..., :-1]
        return (p @ v).transpose(1, 2).reshape(B, S, H * DV)


CASES = {  # variant: (form, what the report says)
    "bool": ("sparse", "top-k mask, unchosen keys -inf"),
    "float": ("sparse", "top-k of scores + causal base: every row keeps a visible chosen key"),
    "not_topk": ("decompressed", "left dense: finite fill, and the indices are no top-k"),
    "query_axis": ("decompressed", "left dense: the scatter is not along the key axis"),
    "mask_elsewhere": ("decompressed", "left dense: the DSA mask is also read elsewhere"),
    "bool_other": ("sparse", "top-k mask, unchosen keys -inf"),
    "bool_int16": ("sparse", "top-k mask, unchosen keys -inf"),
    "float_sinks": ("sparse", "top-k of scores + causal base: every row keeps a visible chosen key"),
    "bool_sinks": ("sparse", "top-k mask, unchosen keys -inf"),
    "shared_sinks": ("sparse", "top-k of scores + causal base: every row keeps a visible chosen key"),
}
DISTINCT = {"bool": True, "float": True, "bool_other": False, "bool_int16": False, "float_sinks": True,
            "bool_sinks": True, "shared_sinks": True}


class DsaStack(nn.Module):
    """Every case side by side in one graph (one compile): outputs in CASES order."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(DsaLayer(v) for v in CASES)

    def forward(self, x, other_idx):
        return tuple(layer(x, other_idx) for layer in self.layers)


def test_dsa_layers():
    torch.manual_seed(0)
    model = DsaStack().eval()
    reports = []
    compiled = torch.compile(model, backend="mla", options={"report": reports.append})
    g = torch.Generator().manual_seed(1)
    for _ in range(2):  # fresh inputs after the compile
        x = torch.randn(2, 7, D, generator=g)
        other = torch.randint(0, 7, (2, 7, TOPK), generator=g, dtype=torch.int32)
        other[..., 1] = other[..., 0]  # a repeated index in every row: selected once
        with torch.no_grad():
            want, got = model(x, other), compiled(x, other)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert len(reports) == 1 and not reports[0].near_misses, [r.format() for r in reports]
    params = [m.params for m in reports[0].matches if m.pattern == "attention.mla"]
    assert len(params) == len(CASES), params
    for p, (variant, (form, why)) in zip(params, CASES.items()):  # graph order is the layers' order
        assert p["form"] == form, (variant, p)
        said = p.get("sparse_proof") if form == "sparse" else p.get("sparse", "")
        assert said.startswith(why), (variant, p)
        assert form != "sparse" or p["K"] == TOPK
        if form == "sparse":
            assert p["indices"].startswith("distinct" if DISTINCT[variant] else "may repeat"), (variant, p)
        assert p.get("sinks") == ("per head" if variant.endswith("sinks") else None), (variant, p)
    graph = reports[0].final_graph
    assert graph.count("mla.sparse_attention") == sum(form == "sparse" for form, _ in CASES.values()), graph


@pytest.mark.parametrize("variant", ["bool", "float_sinks"])
def test_sparse_op_inlined_on_cpu_with_the_reference(variant, monkeypatch):
    """Lowering's last step traces the sparse op's computation into the graph (what
    runs on CUDA): opened on CPU with the reference kernel, no mla op is left and the
    numbers equal eager (the sinks reach the traced computation too)."""
    import importlib

    inline_launches = importlib.import_module("mla_compile.passes.inline_launches")
    monkeypatch.setattr(inline_launches, "inductor_launches", lambda device, kernel: True)
    torch.manual_seed(0)
    model = DsaLayer(variant).eval()
    reports = []
    compiled = torch.compile(model, backend="mla", options={"report": reports.append, "kernel": "reference"})
    x = torch.randn(2, 7, D, generator=torch.Generator().manual_seed(2))
    other = torch.zeros(2, 7, TOPK, dtype=torch.int32)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, other), model(x, other), rtol=1e-5, atol=1e-5)
    counts = reports[0].counts()
    assert counts.get("attention.mla") == 1 and counts.get("launch.inductor") == 1, reports[0].format()
    assert [m.params["form"] for m in reports[0].matches if m.pattern == "attention.mla"] == ["sparse"]
    assert "mla.sparse_attention" not in reports[0].final_graph
