"""transformers' DSA families (issue 14): the dense attention under the indexer's top-k
mask becomes `mla.sparse_attention` fed by the model's own indices, in prefill and in
dynamic/static-cache decode, with logits equal to eager. Tiny configs with top-k 4
under longer contexts, so the mask really drops keys, and dense MLPs (the experts only
slow the compile; the attention is the same). Each test compiles one tiny model (about
a minute on 2 shared CPU cores): deepseek_v32 prefill and decode and glm_moe_dsa's
shared top-k layers run by default; the other families' prefill with
MLA_ALL_FAMILIES=1 (the family scan's switch), to keep the suite's time. hy_v4 adds
attention sinks, which the sparse op takes too."""
import copy
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers_tiny import build, families, mla_layers, tiny_config  # noqa: E402

# the DSA families of issue 14 (glm5_next's NoPE MLA is not here: its prefill is split by
# an upstream graph break, its decode steps fuse dense: tests/test_transformers_all_families.py
# PREFILL_BREAKS)
ISSUE_DSA = ["axk2", "deepseek_v32", "dots3_note_text", "glm_moe_dsa", "hy_v4", "mistral_large4_text"]
# transformers 5.23's HY-V4 adds attention sinks and takes eager attention only (sdpa
# raises: test_transformers_all_families.py NO_SDPA): finfo.min fill, so sparse by the
# proof that every row keeps a visible chosen key, the sinks passed to the sparse op
EAGER_ONLY = {"hy_v4"}
SINKS = {"hy_v4"}
DSA = [f for f in ISSUE_DSA if f in families()]  # older transformers (5.17) ship fewer
# MLA layers not sparse, and why: mistral_large4's NoPE layer has the top-k mask but no
# RoPE part, which the sparse op does not take (dense, fused, the report says so);
# dots3_note's sliding-window layer has no indexer (dense, fused, no top-k mask at all)
NOT_SPARSE = {  # (not sparse, of them dense-fused, what the report says of a dense one's top-k mask)
    "mistral_large4_text": (1, 1, "left dense: no RoPE part (NoPE)"),
    "dots3_note_text": (1, 1, None),
}
TOPK = 4


def dsa(family: str, impl: str):
    n = tiny_config(family).num_hidden_layers
    return build(family, impl, mlp_layer_types=["dense"] * n)


def mla_params(reports):
    return [m.params for r in reports for m in r.matches if m.pattern == "attention.mla"]


def compile_and_compare(model, call, reports):
    with torch.no_grad():
        expected = call(model)
        actual = call(torch.compile(model, backend="mla", options={"report": reports.append}))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def prompt(S=9, B=2, seed=0):
    return torch.randint(0, 128, (B, S), generator=torch.Generator().manual_seed(seed))


def test_dsa_families_listed():
    """A family gaining or losing its indexer upstream shows here."""
    have = {f for f in families() if getattr(tiny_config(f), "index_topk", None)}
    assert set(DSA) <= have and have - set(DSA) <= {"glm5_next_text"}, have


SCAN = os.environ.get("MLA_ALL_FAMILIES") == "1"
needs_v32 = pytest.mark.skipif("deepseek_v32" not in DSA, reason="this transformers has no deepseek_v32")


@pytest.mark.parametrize("family", [f if f == "deepseek_v32" or SCAN else pytest.param(
    f, marks=pytest.mark.skip(reason="a minute per family: MLA_ALL_FAMILIES=1 runs it")) for f in DSA])
def test_prefill_sparse(family):
    """sdpa prefill (eager where sdpa is refused), 9 tokens, top-k 4: every MLA layer
    sparse, logits equal."""
    eager = family in EAGER_ONLY
    model = dsa(family, "eager" if eager else "sdpa")
    reports = []
    ids = prompt()
    compile_and_compare(model, lambda m: m(ids, use_cache=False).logits, reports)
    params = mla_params(reports)
    sparse = [p for p in params if p["form"] == "sparse"]
    not_sparse, dense, why = NOT_SPARSE.get(family, (0, 0, None))
    assert len(sparse) == mla_layers(model) - not_sparse and len(params) == len(sparse) + dense, params
    for p in params:  # a dense layer: no top-k mask at all, or the known reason it stayed dense
        if p["form"] != "sparse":
            assert p.get("sparse") is None if why is None else p.get("sparse", "").startswith(why), p
    assert all(p["K"] == TOPK and p["Sq"] == p["Sk"] == 9 for p in sparse)
    if eager:  # finfo.min fill: sparse only where every row provably keeps a chosen key
        assert all("causal base" in p["sparse_proof"] for p in sparse), sparse
    else:
        assert all(p["sparse_proof"] == "top-k mask, unchosen keys -inf" for p in sparse)
    assert all(p.get("sinks") == ("per head" if family in SINKS else None) for p in params), params


@needs_v32
def test_prefill_eager_finite_fill_proven_causal():
    """eager attention: masked_fill with finfo.min; sparse only with the proof that
    every row keeps a visible chosen key (top-k over scores + the causal base). With a
    DynamicCache, as generate() runs it."""
    model = dsa("deepseek_v32", "eager")
    reports = []
    ids = prompt(seed=1)
    compile_and_compare(model, lambda m: m(ids, use_cache=True).logits, reports)
    params = mla_params(reports)
    assert len(params) == mla_layers(model) and all(p["form"] == "sparse" for p in params), params
    assert all("causal base" in p["sparse_proof"] for p in params)


@pytest.mark.skipif("glm_moe_dsa" not in DSA, reason="this transformers has no glm_moe_dsa")
def test_glm_shared_topk_layers():
    """glm_moe_dsa with a "shared" layer reusing the previous layer's top-k: both
    layers sparse, the shared one fed by the same indices."""
    config = tiny_config("glm_moe_dsa")
    config.indexer_types = ["full", "shared"]
    config.mlp_layer_types = ["dense", "dense"]
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = transformers.GlmMoeDsaForCausalLM(config).eval()
    assert sum(1 for m in model.modules() if type(m).__name__.endswith("Indexer")) == 1
    reports = []
    ids = prompt(seed=2)
    compile_and_compare(model, lambda m: m(ids, use_cache=False).logits, reports)
    params = mla_params(reports)
    assert len(params) == 2 and all(p["form"] == "sparse" for p in params), params


@needs_v32
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_dynamic_cache_decode_step(impl):
    """One decode step over a 9-token DynamicCache (10 keys, top-k 4), equal to eager:
    sparse under sdpa (bool mask, unchosen keys -inf); under eager attention (finite
    fill) the decode mask is not top-left causal, so no proof that every row keeps a
    visible chosen key: dense (absorbed), the reason in the report (a known gap)."""
    model = dsa("deepseek_v32", impl)
    ids = prompt(seed=3)
    reports = []
    with torch.no_grad():
        first = model(ids, use_cache=True)
        token = first.logits[:, -1:].argmax(-1)
        cache_eager, cache_compiled = first.past_key_values, copy.deepcopy(first.past_key_values)
        expected = model(token, past_key_values=cache_eager, use_cache=True).logits
        compiled = torch.compile(model, backend="mla", options={"report": reports.append})
        actual = compiled(token, past_key_values=cache_compiled, use_cache=True).logits
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    params = mla_params(reports)
    assert len(params) == mla_layers(model), params
    assert all((p["Sq"], p["Sk"]) == (1, 10) for p in params), params
    if impl == "sdpa":
        assert all(p["form"] == "sparse" and p["K"] == TOPK for p in params), params
    else:
        assert all(p["form"] == "absorbed" and p["sparse"].startswith(
            "left dense: finite fill, and the base mask is not proven to leave every row a key") for p in params)


@needs_v32
def test_static_cache_decode_steps():
    """Four decode steps on a StaticCache of 24 slots: sparse every step, equal."""
    model = dsa("deepseek_v32", "sdpa")
    ids = prompt(S=7, seed=4)
    caches = [transformers.StaticCache(config=model.config, max_cache_len=24) for _ in range(2)]
    reports = []
    compiled = torch.compile(model, backend="mla", options={"report": reports.append})
    with torch.no_grad():
        for cache in caches:
            model(ids, past_key_values=cache, use_cache=True, cache_position=torch.arange(7))
        token = ids[:, -1:]
        for step in range(4):
            pos = torch.tensor([7 + step])
            expected = model(token, past_key_values=caches[0], use_cache=True, cache_position=pos).logits
            actual = compiled(token, past_key_values=caches[1], use_cache=True, cache_position=pos).logits
            torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
            token = expected[:, -1:].argmax(-1)
    params = mla_params(reports)
    assert len(params) == mla_layers(model) * len(reports) >= mla_layers(model), params
    assert all(p["form"] == "sparse" and (p["Sq"], p["Sk"], p["K"]) == (1, 24, TOPK) for p in params), params
