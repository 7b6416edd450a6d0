"""transformers' DeepSeek-V3 decode steps (issue 4, first code shape): the latent
cache (DynamicCache or StaticCache) is re-expanded through kv_b_proj on every step in
the model's code; backend="mla" matches that attention and runs it in the absorbed
form (one query over the latent), with logits equal to eager."""
import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

from test_transformers_rope import TINY, build  # noqa: E402

LAYERS = TINY["num_hidden_layers"]


def attention_params(reports):
    return [m.params for r in reports for m in r.matches if m.pattern == "attention.mla"]


# eager attention: test_dynamic_cache_ten_steps_one_dynamic_graph's first step is this
# test's step (same model, a DynamicCache after an eager prefill of 7 tokens) and asserts
# the same report (absorbed, Sq=1, Sk=8) and logits; one compile fewer in the suite.
@pytest.mark.parametrize("impl", ["sdpa"])
def test_dynamic_cache_step_absorbed(impl):
    model = build("v3", impl)
    ids = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(0))
    reports = []
    with torch.no_grad():
        first = model(ids, use_cache=True)
        token = first.logits[:, -1:].argmax(-1)
        cache_eager, cache_compiled = first.past_key_values, copy.deepcopy(first.past_key_values)
        expected = model(token, past_key_values=cache_eager, use_cache=True).logits
        compiled = torch.compile(model, backend="mla", options={"report": reports.append})
        actual = compiled(token, past_key_values=cache_compiled, use_cache=True).logits
    params = attention_params(reports)
    assert len(params) == LAYERS and all(p["form"] == "absorbed" and (p["Sq"], p["Sk"]) == (1, 8) for p in params)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_static_cache_steps_absorbed_and_few_compiles():
    """Eight decode steps on a StaticCache: every step equal to eager, the attention of
    every layer absorbed over the whole static latent cache, at most two compiles (the
    second when cache_position stops being a constant)."""
    model = build("v3", "eager")
    ids = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(1))
    caches = [transformers.StaticCache(config=model.config, max_cache_len=32) for _ in range(2)]
    reports = []
    compiled = torch.compile(model, backend="mla", options={"report": reports.append})
    with torch.no_grad():
        for cache in caches:
            model(ids, past_key_values=cache, use_cache=True, cache_position=torch.arange(7))
        token = ids[:, -1:]
        for step in range(8):
            pos = torch.tensor([7 + step])
            expected = model(token, past_key_values=caches[0], use_cache=True, cache_position=pos).logits
            actual = compiled(token, past_key_values=caches[1], use_cache=True, cache_position=pos).logits
            torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
            token = expected[:, -1:].argmax(-1)
    assert 1 <= len(reports) <= 2, f"{len(reports)} compiles"
    params = attention_params(reports)
    assert len(params) == LAYERS * len(reports)
    assert all(p["form"] == "absorbed" and (p["Sq"], p["Sk"]) == (1, 32) for p in params)


def test_dynamic_cache_ten_steps_one_dynamic_graph():
    """The context grows every step: after one recompile the graph is dynamic in the
    key length (no recompile per step) and still fused, absorbed, equal to eager."""
    model = build("v3", "eager")
    ids = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(2))
    reports = []
    compiled = torch.compile(model, backend="mla", options={"report": reports.append})
    with torch.no_grad():
        first = model(ids, use_cache=True)
        cache_eager, cache_compiled = first.past_key_values, copy.deepcopy(first.past_key_values)
        token = first.logits[:, -1:].argmax(-1)
        for _ in range(10):
            expected = model(token, past_key_values=cache_eager, use_cache=True).logits
            actual = compiled(token, past_key_values=cache_compiled, use_cache=True).logits
            torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
            token = expected[:, -1:].argmax(-1)
    assert len(reports) == 2, f"{len(reports)} compiles"
    # the first step: the graph of a static key length (test_dynamic_cache_step_absorbed, eager)
    first = attention_params(reports[:1])
    assert len(first) == LAYERS and all(p["form"] == "absorbed" and (p["Sq"], p["Sk"]) == (1, 8) for p in first)
    last = attention_params(reports[1:])
    assert len(last) == LAYERS and all(p["form"] == "absorbed" and not isinstance(p["Sk"], int) for p in last)
