"""The DSA indexer's RoPE (issue 14 item 3, seed 003b): rope dims FIRST, then the
rest, neox half-split (deepseek_v32, axk2) or interleaved pairs (glm_moe_dsa,
dots3_note, mistral_large4), q and k in one launch, and functional: the pre-RoPE
tensor read again after the RoPE keeps its value and a graph input is never written.
A bare in-place replacement (the vLLM fast path of seed 003b) fails the same checks.
The transformers families' reports count the indexer's RoPE beside the attention's."""
import pytest
import torch
import torch.nn.functional as F

import mla_compile.passes.rope as rope_pass

B, S, H, D, RD = 2, 6, 3, 16, 8  # indexer heads, head dim, rope dims (the first RD)


def rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def rope_neox(q, k, cos, sin, unsqueeze_dim=1):  # transformers' apply_rotary_pos_emb
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


def rope_pairs(q, k, cos, sin, unsqueeze_dim=1):  # transformers' apply_rotary_pos_emb_interleave
    cos = cos[..., : cos.shape[-1] // 2].unsqueeze(unsqueeze_dim)
    sin = sin[..., : sin.shape[-1] // 2].unsqueeze(unsqueeze_dim)
    q1, q2 = q[..., 0::2], q[..., 1::2]
    k1, k2 = k[..., 0::2], k[..., 1::2]
    return (torch.cat([q1 * cos - q2 * sin, q2 * cos + q1 * sin], dim=-1),
            torch.cat([k1 * cos - k2 * sin, k2 * cos + k1 * sin], dim=-1))


STYLES = {"neox": (rope_neox, "rope.neox"), "pairs": (rope_pairs, "rope.pairs")}


def indexer_scores(q, k, cos, sin, apply):
    """The DSA indexer's RoPE and scores as transformers 5.23 writes them; q [B, S, H, D],
    k [B, S, 1, D]; then q and k, as they were before the RoPE, read again."""
    q_rot, q_pass = torch.split(q, [RD, D - RD], dim=-1)
    k_rot, k_pass = torch.split(k, [RD, D - RD], dim=-1)
    q_rot, k_rot = apply(q_rot, k_rot, cos, sin, unsqueeze_dim=2)
    q_new = torch.cat([q_rot, q_pass], dim=-1)
    k_new = torch.cat([k_rot, k_pass], dim=-1).squeeze(2)
    scores = F.relu(torch.matmul(q_new.float(), k_new.transpose(-1, -2).float().unsqueeze(1)))
    return scores + q.float().sum(-1, keepdim=True) + k.float().sum(-1).unsqueeze(-1)


def of_inputs(style):
    """q and k are graph inputs: an in-place RoPE would write into the caller's tensors."""
    apply = STYLES[style][0]
    return lambda q, k, cos, sin: indexer_scores(q, k, cos, sin, apply)


def of_intermediates(style):
    """q and k are computed in the graph, then read again after their RoPE."""
    apply = STYLES[style][0]

    def fn(x, wq, wk, cos, sin):
        q = (x @ wq).view(B, S, H, D)
        k = F.layer_norm(x @ wk, (D,)).unsqueeze(2)
        return indexer_scores(q, k, cos, sin, apply)
    return fn


def make_inputs(kind, gen):
    ang = torch.randn(S, RD // 2, generator=gen)
    cos, sin = torch.cat([ang.cos()] * 2, -1)[None], torch.cat([ang.sin()] * 2, -1)[None]  # [1, S, RD]
    if kind == "inputs":
        return [torch.randn(B, S, H, D, generator=gen), torch.randn(B, S, 1, D, generator=gen), cos, sin]
    return [torch.randn(B, S, 32, generator=gen), torch.randn(32, H * D, generator=gen) / 6,
            torch.randn(32, D, generator=gen) / 6, cos, sin]


def compile_and_run(fn, args, pattern):
    reports = []
    with torch.no_grad():
        out = torch.compile(fn, backend="mla", fullgraph=True, options={"report": reports.append})(*args)
    assert len(reports) == 1
    assert reports[0].counts() == {pattern: 2, "rope.one_launch": 1}, reports[0].format()
    assert reports[0].near_misses == [], reports[0].format()
    return out


CASES = [(style, kind) for style in STYLES for kind in ("inputs", "intermediates")]


@pytest.mark.parametrize("style, kind", CASES)
def test_indexer_rope_fused_and_functional(style, kind):
    gen = torch.Generator().manual_seed(11)
    fn = (of_inputs if kind == "inputs" else of_intermediates)(style)
    args = make_inputs(kind, gen)
    saved = [a.clone() for a in args]
    out = compile_and_run(fn, args, STYLES[style][1])
    torch.testing.assert_close(out, fn(*saved), rtol=1e-5, atol=1e-4)
    for a, s in zip(args, saved):
        assert torch.equal(a, s), "the caller's tensor was modified"


@torch.library.custom_op("mla_test::indexer_rope_bare_inplace", mutates_args=())
def rope_bare_inplace(xs: list[torch.Tensor], cos: torch.Tensor, sin: torch.Tensor,
                      interleaved_in: bool, interleaved_out: bool, kernel: str = "auto") -> list[torch.Tensor]:
    """What not to do (seed 003b): rotate in place while declaring no mutation."""
    outs = []
    for x in xs:
        x.copy_(torch.ops.mla.rope([x], cos, sin, interleaved_in, interleaved_out, "reference")[0])
        outs.append(x.clone())
    return outs


@rope_bare_inplace.register_fake
def _(xs, cos, sin, interleaved_in, interleaved_out, kernel="auto"):
    return [torch.empty_like(x) for x in xs]


@pytest.mark.parametrize("style", STYLES)
def test_bare_inplace_would_break_both(style, monkeypatch):
    """The checks above have teeth: with an in-place op in the fused op's place, the
    re-read pre-RoPE values are wrong, and the caller's q is written."""
    monkeypatch.setattr(rope_pass, "rope_op", torch.ops.mla_test.indexer_rope_bare_inplace.default)
    gen = torch.Generator().manual_seed(12)
    args = make_inputs("inputs", gen)
    saved = [a.clone() for a in args]
    fn = of_inputs(style)
    out = compile_and_run(fn, args, STYLES[style][1])
    assert not torch.allclose(out, fn(*saved), rtol=1e-3, atol=1e-3)
    assert not torch.equal(args[0], saved[0])


# ---------------------------------------------------------------- transformers 5.23

FAMILIES = {  # family: (its indexer's RoPE, the MLA attention's RoPE)
    "deepseek_v32": ("rope.neox", "rope.pairs"),
    "glm_moe_dsa": ("rope.pairs", "rope.pairs"),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_transformers_dsa_reports_count_the_indexer_rope(family):
    """One layer, top-k 4 of 6 tokens: the report holds the attention's RoPE and the
    indexer's (its own launch: q [B, S, index heads, rope dims]), all fused, and the
    logits equal eager."""
    transformers = pytest.importorskip("transformers")
    import sys
    import os

    sys.path.insert(0, os.path.dirname(__file__))
    from transformers_tiny import tiny_config

    config = tiny_config(family)
    config.num_hidden_layers = 1
    for name in ("mlp_layer_types", "indexer_types", "layer_types"):
        if isinstance(getattr(config, name, None), list):
            setattr(config, name, getattr(config, name)[:1])
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    ids = torch.randint(0, 128, (2, 6), generator=torch.Generator().manual_seed(0))
    reports = []
    with torch.no_grad():
        expected = model(ids, use_cache=False).logits
        compiled = torch.compile(model, backend="mla", options={"report": reports.append, "kernel": "reference"})
        actual = compiled(ids, use_cache=False).logits
    assert len(reports) == 1
    indexer, attention = FAMILIES[family]
    counts = reports[0].counts()
    want = {"attention.mla": 1, "rope.one_launch": 2}
    for pattern in (indexer, attention):
        want[pattern] = want.get(pattern, 0) + 2  # q and k of each
    assert counts == want, reports[0].format()
    heads = config.index_n_heads
    shapes = [m.params["shape"] for m in reports[0].matches if m.pattern == indexer]
    assert (2, 6, heads, config.qk_rope_head_dim) in shapes, shapes  # the indexer's q: [B, S, H, rope]
    assert reports[0].near_misses == [], reports[0].format()
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
