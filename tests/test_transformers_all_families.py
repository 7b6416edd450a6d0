"""Every MLA family in the installed transformers (issue 13 item 1), tiny random
models in fp32 on CPU, each family its own test:

- eager attention, `model.forward` compiled, 16 greedy tokens with a DynamicCache:
  the prefill graph, a decode graph, the decode graph made dynamic in the context;
- sdpa attention, the prefill compiled alone (no cache);
- sdpa attention, 16 greedy tokens with a StaticCache and transformers' own
  `CompileConfig` (the decode step compiled, fullgraph).

Tokens equal eager's, logits of every step close to eager's, and per graph the
exact number of fused attentions and RoPE launches. The default expectation is
everything fused: every MLA layer's attention, one RoPE launch per MLA layer
with RoPE and per DSA indexer, no near miss. Families the backend does not fully fuse yet are listed
in GAPS with what is true today; a gap closed, or a new one, fails the test.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch

transformers = pytest.importorskip("transformers")

# A scan, not part of the README's test command: one family takes minutes of CPU on a
# 2-core machine (the hybrid linear-attention ones tens of minutes), far over the
# suite's 15-minute budget. MLA_ALL_FAMILIES=1 runs it.
pytestmark = pytest.mark.skipif(
    not os.environ.get("MLA_ALL_FAMILIES"),
    reason="scan over every MLA family of the installed transformers: set MLA_ALL_FAMILIES=1")

from transformers_tiny import build, families, mla_layers  # noqa: E402

from mla_compile.lowering.attention_form import choose_attention_form  # noqa: E402

NEW = 16


@dataclass(frozen=True)
class Gap:
    unfused: int     # MLA layers per graph whose attention is left alone
    reason: str      # part of the near-miss reason each of them reports
    rope: int        # RoPE launches per graph
    note: str        # what is missing, and where it is tracked
    breaks: bool = False  # Dynamo splits the model into many graphs: checked pooled over them
    other: str = ""  # pooled: a near miss that is not MLA attention, also expected


GAPS: dict[str, Gap] = {
    # linear + NoPE indexed MLA; graph breaks in the family's code leave the attention's
    # key a graph input: nothing proves it a latent's up-projection. Recorded from the eager
    # DynamicCache run only (the other phases were not run before this table was written)
    "glm5_next_text": Gap(unfused=1, reason="is placeholder, expected aten.mm", rope=0, breaks=True,
                          note="gap: NoPE MLA behind graph breaks (issue 13 item 3)",
                          # its linear-attention layers: softmax -> add -> div -> bmm, not MLA
                          other="reaches this bmm's left operand through aten.add.Tensor, aten.div.Tensor"),
}
# Upstream refusals, checked: when transformers lifts one, this test fails and the
# entry goes. The family runs those phases with eager attention instead.
NO_SDPA = {
    "hy_v4": "transformers 5.23: HYV4ForCausalLM does not support sdpa (it adds sink logits to the softmax)",
}
# Upstream recompiles of the static-cache decode step (plain Inductor recompiles alike):
# the number of decode graphs, and why. Each graph is checked like the one graph.
STATIC_DECODE_GRAPHS = {
    "dots3_note_text": (2, "transformers 5.23: its sliding-window StaticCache layer branches in Python on "
                           "`current_length >= max_cache_len` (cache_utils.py), a guard that recompiles the "
                           "step once the window fills"),
}
# Skipped, with the upstream reason. Follow-up: check such a family pooled over its graphs.
UPSTREAM_SKIP = {
    "longcat_flash": "transformers 5.23: LongcatFlash's experts loop over the experts hit (nonzero, .item()); "
                     "Dynamo breaks the graph in every MoE layer, so the per-graph counts asserted here do not exist",
}


def prompt():
    return torch.randint(0, 128, (2, 6), generator=torch.Generator().manual_seed(0))


def indexers(model) -> int:
    """DSA indexers that run and rotate (a "shared" layer reuses the previous layer's
    indices; a NoPE layer's indexer, Mistral-Large-4's, rotates nothing)."""
    config = getattr(model.config, "text_config", model.config)
    no_rope = getattr(config, "no_rope_layers", None)  # 1 = uses RoPE (smollm3 convention)
    names = [n for n, m in model.named_modules() if type(m).__name__.endswith("Indexer")]
    layer = [int(n.split("layers.")[1].split(".")[0]) if "layers." in n else None for n in names]
    return sum(1 for i in layer if not no_rope or i is None or no_rope[i])


def rope_layers(model) -> int:
    config = getattr(model.config, "text_config", model.config)
    if not getattr(config, "qk_rope_head_dim", 0):
        return 0
    if not any(type(m).__name__.endswith("RotaryEmbedding") for m in model.modules()):
        return 0  # a rope width but no rotation (Kimi-Linear: k_rot unrotated)
    no_rope = getattr(config, "no_rope_layers", None)  # 1 = uses RoPE (smollm3 convention)
    return mla_layers(model) - (no_rope.count(0) if no_rope else 0)


def check_graph(report, model, gap: Gap | None, what: str):
    layers = mla_layers(model)
    counts = report.counts()
    unfused = gap.unfused if gap else 0
    # an indexer rotates its own query and key: a launch apart from the attention's
    rope = gap.rope if gap else rope_layers(model) + (indexers(model) if rope_layers(model) else 0)
    shown = f"{what}: {counts}\n{report.format()}"
    assert counts.get("attention.mla", 0) == layers - unfused, shown
    assert counts.get("rope.one_launch", 0) == rope, shown
    misses = report.near_misses
    assert len(misses) == unfused, shown
    assert all(gap.reason in n.reason for n in misses), shown


def check_pooled(reports, gap: Gap, what: str):
    """A family split by graph breaks: no graph fuses anything, every near miss is the
    gap's, and the attention is seen (one near miss at least)."""
    shown = f"{what}: " + "\n".join(r.format() for r in reports)
    assert all(r.counts().get("attention.mla", 0) == 0 for r in reports), shown
    assert all(r.counts().get("rope.one_launch", 0) == gap.rope for r in reports), shown
    misses = [n for r in reports for n in r.near_misses]
    assert any(gap.reason in n.reason for n in misses), shown
    assert all(gap.reason in n.reason or (gap.other and gap.other in n.reason) for n in misses), shown


def attention_params(report):
    return [m.params for m in report.matches if m.pattern == "attention.mla"]


def generate(model, **kw):
    with torch.no_grad():
        return model.generate(prompt(), max_new_tokens=NEW, do_sample=False, output_logits=True,
                              return_dict_in_generate=True, **kw)


def assert_same_generation(actual, expected):
    assert torch.equal(actual.sequences, expected.sequences)
    assert len(actual.logits) == len(expected.logits) == NEW
    for a, e in zip(actual.logits, expected.logits):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", families())
def test_family(family):
    if family in UPSTREAM_SKIP:
        pytest.skip(UPSTREAM_SKIP[family])
    gap = GAPS.get(family)

    # eager attention, DynamicCache: prefill, decode, decode dynamic in the context
    model = build(family, "eager")
    expected = generate(model)
    reports = []
    model.forward = torch.compile(model.forward, backend="mla", options={"report": reports.append})
    assert_same_generation(generate(model), expected)
    if gap and gap.breaks:
        check_pooled(reports, gap, "dynamic cache")
    else:
        assert len(reports) == 3, [r.format() for r in reports]
        for i, report in enumerate(reports):
            check_graph(report, model, gap, ["prefill", "decode", "decode dynamic"][i])
    # a DSA layer (top-k mask) is sparse where proven: prefill with a cache and sdpa decode;
    # eager decode (finfo.min fill, causal with an offset) stays dense (README, DSA)
    sparse = {"sparse"} if indexers(model) else set()
    if not gap or gap.unfused < mla_layers(model):
        # prefill: sparse, or the form lowering picks from the sizes (a NoPE layer with a
        # narrow latent: absorbed)
        assert all(p["Sq"] == 6 and (p["form"] in sparse or p["form"] == choose_attention_form(
            *(p[k] for k in ("Sq", "Sk", "H", "Dn", "Dr", "Dv", "R")))) for p in attention_params(reports[0]))
        assert all(p["Sq"] == 1 and p["form"] == "absorbed" for r in reports[1:] for p in attention_params(r))
        # the context's length stays symbolic; a sliding-window layer's cache holds its fixed
        # window once full (dots3_note), so its key length may be that int
        config = getattr(model.config, "text_config", model.config)
        window = getattr(config, "sliding_window", None)
        dynamic = attention_params(reports[2])
        assert any(not isinstance(p["Sk"], int) for p in dynamic), dynamic
        assert all(not isinstance(p["Sk"], int) or (window and p["Sk"] <= window) for p in dynamic), dynamic

    # sdpa attention, prefill alone
    if family in NO_SDPA:
        with pytest.raises(ValueError, match="does not support"):
            build(family, "sdpa")
        model = build(family, "eager")
    else:
        model = build(family, "sdpa")
        ids = prompt()
        reports = []
        with torch.no_grad():
            logits = model(ids, use_cache=False).logits
            compiled = torch.compile(model, backend="mla", options={"report": reports.append})
            torch.testing.assert_close(compiled(ids, use_cache=False).logits, logits, rtol=1e-4, atol=1e-4)
        if gap and gap.breaks:
            check_pooled(reports, gap, "prefill sdpa")
        else:
            assert len(reports) == 1
            check_graph(reports[0], model, gap, "prefill sdpa")

    # sdpa attention, StaticCache, transformers' CompileConfig: the decode step compiled once
    expected = generate(model, cache_implementation="static")
    reports = []
    breaks = bool(gap and gap.breaks)
    config = transformers.CompileConfig(backend="mla", mode=None, fullgraph=not breaks,
                                        options={"report": reports.append})
    config._compile_all_devices = True  # CPU: transformers would skip compiling
    assert_same_generation(generate(model, cache_implementation="static", compile_config=config), expected)
    if breaks:
        check_pooled(reports, gap, "decode static")
        return
    graphs, _why = STATIC_DECODE_GRAPHS.get(family, (1, ""))
    assert len(reports) == graphs, [r.format() for r in reports]
    for report in reports:
        check_graph(report, model, gap, "decode static")
        assert all(p["Sq"] == 1 and p["form"] in {"absorbed"} | sparse for p in attention_params(report))
