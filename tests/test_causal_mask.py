"""A mask whose construction in the graph proves it causal (passes/causal_mask.py)
becomes the op's causal=True (plus an additive key-padding mask; under a finite fill
also the op's empty_row_fill, so left-pad rows attend all keys as in eager), with
logits equal to eager; look-alikes (k < q, a sliding window, an offset diagonal,
k >= q, the differences `(q - k) > 0` and `(k - q) <= 1`, a padding term along the
queries, a fill above fp16's finfo.min, packed sequences read from an input) keep
their mask."""
import pytest
import torch

from attention_models import AttnSize, HFMLA
from test_transformers_attention import attention

transformers = pytest.importorskip("transformers")

SIZE = AttnSize(B=2, S=21, H=2)
FMIN = torch.finfo(torch.float32).min
RULES = {  # (rule(q, k) -> visible, proven causal)
    "causal": (lambda q, k: k <= q, True),
    "causal_ge": (lambda q, k: q >= k, True),
    "strict": (lambda q, k: k < q, False),
    "window": (lambda q, k: (k <= q) & (k > q - 4), False),
    "offset": (lambda q, k: k <= q + 1, False),
    "anti": (lambda q, k: k >= q, False),
    # differences against an int, as torch's tril / triu decompose (SDPA's is_causal on CPU)
    "tril": (lambda q, k: (k - q) <= 0, True),
    "triu_ge": (lambda q, k: (q - k) >= 0, True),
    "tril_strict": (lambda q, k: (q - k) > 0, False),
    "tril_offset": (lambda q, k: (k - q) <= 1, False),
}


class BuiltMask(torch.nn.Module):
    """The mask built inside the model, as transformers does: iota comparisons, AND a
    key-padding input (or a packed-sequence id input), then where(cond, 0, fill)."""

    def __init__(self, rule, fill, attn="eager", inverted=False):
        super().__init__()
        self.rule, self.fill, self.inverted = rule, fill, inverted
        self.mla = HFMLA(SIZE, torch.float32, attn=attn, mask="padded")

    def forward(self, x, pos, key_keep=None, seq_id=None):
        i = torch.arange(x.shape[1], device=x.device)
        cond = self.rule(i[:, None], i[None, :])[None, None]
        if key_keep is not None:
            cond = cond & key_keep[:, None, None, :]
        if seq_id is not None:  # packed sequences: same id on both sides
            cond = cond & (seq_id[:, None, :, None] == seq_id[:, None, None, :])
        zero, fill = torch.tensor(0.0, device=x.device), torch.tensor(self.fill, device=x.device)
        # inverted: where(not cond, fill, 0), as SDPA makes a boolean mask additive on CUDA
        mask = torch.where(~cond, fill, zero) if self.inverted else torch.where(cond, zero, fill)
        return self.mla(x, pos, mask)


def compile_and_compare(model, *args):
    reports = []
    with torch.no_grad():
        expected = model(*args)
        actual = torch.compile(model, backend="mla", options={"report": reports.append})(*args)
    assert len(reports) == 1
    report = reports[0]
    assert report.counts().get("attention.mla") == 1, report.format()
    assert report.near_misses == [], report.format()
    assert torch.isfinite(expected).all()
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)
    return attention(report)[0]


def assert_proof(p, causal: bool):
    """The report's attention params: proven causal (no mask), or left additive with why."""
    if causal:
        assert p["mask"] == "causal" and p["mask_proof"].startswith("causal"), p
    else:
        assert p["mask"] == "additive" and p["mask_proof"].startswith("not causal"), p


def inputs(padded=False):
    x, pos = HFMLA(SIZE, torch.float32, mask="padded").example_inputs()[:2]
    keep = torch.ones(SIZE.B, SIZE.S, dtype=torch.bool)
    if padded:
        keep[1, :5] = False  # left padding: query rows 0..4 of batch 1 see no key
    return x, pos, keep


# the structure read is the same for either fill: -inf once (a row with every key
# -inf is NaN in eager attention, so not for the rules that leave a row empty)
@pytest.mark.parametrize("rule, fill", [(r, FMIN) for r in RULES] + [("causal", float("-inf"))],
                         ids=[f"{r}-finfo_min" for r in RULES] + ["causal-ninf"])
def test_rules(rule, fill):
    fn, causal = RULES[rule]
    x, pos, _ = inputs()
    assert_proof(compile_and_compare(BuiltMask(fn, fill), x, pos), causal)


class TriuMask(torch.nn.Module):
    """DeepSeek's inference code: mask = full((S, S), fill).triu(diagonal), added to the
    scores (where(k - q >= diagonal, fill, 0) once decomposed)."""

    def __init__(self, diagonal, fill):
        super().__init__()
        self.diagonal, self.fill = diagonal, fill
        self.mla = HFMLA(SIZE, torch.float32, attn="eager", mask="padded")

    def forward(self, x, pos):
        S = x.shape[1]
        return self.mla(x, pos, torch.full((S, S), self.fill, device=x.device).triu(self.diagonal)[None, None])


@pytest.mark.parametrize("diagonal, fill, causal", [(1, float("-inf"), True), (1, FMIN, True), (2, FMIN, False),
                                                     (0, FMIN, False)], ids=["ninf", "finfo_min", "diag2", "diag0"])
def test_triu_fill_mask(diagonal, fill, causal):
    """Only triu(1) masks exactly the keys above the diagonal (triu(0) also the diagonal,
    triu(2) leaves one more key visible)."""
    x, pos, _ = inputs()
    assert_proof(compile_and_compare(TriuMask(diagonal, fill), x, pos), causal)


EMPTY_ROWS = "additive+causal (key padding, finite fill: empty rows attend all keys"


@pytest.mark.parametrize("fill", [float("-inf"), FMIN, -65504.0], ids=["ninf", "finfo_min", "fp16_min"])
def test_key_padding(fill):
    # left padding through SDPA (safe softmax: the pad rows, with no visible key, are 0
    # in eager and compiled alike under -inf); -inf: causal + key padding; a finite fill
    # (finfo.min, SDPA's CUDA -65504): also empty_row_fill, because eager gives those
    # rows a softmax over ALL keys
    x, pos, keep = inputs(padded=True)
    p = compile_and_compare(BuiltMask(RULES["causal"][0], fill, attn="sdpa"), x, pos, keep)
    assert "key padding" in p["mask_proof"], p
    if fill == float("-inf"):
        assert p["mask"] == "additive+causal (safe softmax)", p
    else:
        assert p["mask"] == EMPTY_ROWS + ", safe softmax)", p
        assert p["mask_proof"] == (
            f"causal (k <= q from iota comparisons); finite fill {fill:g}: exact while |scores| < "
            f"{(-fill - 104) / 2:g} + key padding (1 key-only term(s), additive, "
            f"fill {fill:g}; rows with no visible unmasked key attend all keys, as eager)"), p


def test_inverted_mask_with_key_padding():
    x, pos, keep = inputs(padded=True)
    p = compile_and_compare(BuiltMask(RULES["causal"][0], float("-inf"), attn="sdpa", inverted=True), x, pos, keep)
    assert p["mask"] == "additive+causal (safe softmax)" and "key padding" in p["mask_proof"], p


def test_sdpa_cuda_fill_is_causal_with_its_bound():
    # SDPA's CUDA kernels get a boolean mask as 0 / -65504 (fp16's finfo.min): causal,
    # and the report states the score bound under which that is exact
    x, pos, _ = inputs()
    p = compile_and_compare(BuiltMask(RULES["causal"][0], -65504.0, attn="sdpa"), x, pos)
    assert p["mask"] == "causal (safe softmax)", p
    assert "finite fill -65504: exact while |scores| < 32700" in p["mask_proof"], p


@pytest.mark.parametrize("pad", ["left", "holes", "all"])
def test_eager_finfo_min_key_padding(pad):
    # eager's finfo.min: the left-pad rows (a whole sequence padded, or rows before the
    # first kept key) are eager's softmax over every key, the rest causal
    x, pos, keep = inputs()
    if pad == "left":
        keep[0, :3], keep[1, :17] = False, False  # rows 0..16 of batch 1: a tile and more
    elif pad == "holes":
        keep[0, 2:6], keep[1, ::3] = False, False
    else:
        keep[1] = False
    p = compile_and_compare(BuiltMask(RULES["causal"][0], FMIN), x, pos, keep)
    assert p["mask"] == EMPTY_ROWS + ")", p


@pytest.mark.parametrize("case, reason", [
    ("query_padding", ("not causal: condition term ", " is not an index comparison or key-only")),
    ("small_fill", ("not causal: mask is where(condition, 0.0, -10000.0), not (0, -inf or finfo.min)", "")),
])
def test_key_padding_look_alikes_left_alone(case, reason):
    # a padding term along the queries is not constant along them (no key-only
    # term); a fill above fp16's finfo.min does not mask like -inf: both keep the mask
    x, pos, keep = inputs(padded=True)

    class QueryPadding(BuiltMask):
        def forward(self, x, pos, key_keep):
            i = torch.arange(x.shape[1])
            cond = (i[None, :] <= i[:, None])[None, None] & key_keep[:, None, :, None]
            return self.mla(x, pos, torch.where(cond, torch.tensor(0.0), torch.tensor(self.fill)))

    model = QueryPadding(RULES["causal"][0], FMIN) if case == "query_padding" else \
        BuiltMask(RULES["causal"][0], -1e4)
    p = compile_and_compare(model, x, pos, keep)
    assert p["mask"] == "additive" and p["mask_proof"].startswith(reason[0]), p
    assert p["mask_proof"].endswith(reason[1]), p


def test_packed_sequences_from_an_input_are_not_causal():
    # seq ids from an input: the eq term is not provably all True
    x, pos, _ = inputs()
    seq = (torch.arange(SIZE.S) >= 9).long().expand(SIZE.B, -1).contiguous()
    p = compile_and_compare(BuiltMask(RULES["causal"][0], FMIN), x, pos, None, seq)
    assert p["mask"] == "additive" and p["mask_proof"].startswith("not causal"), p


# transformers' own mask on DeepSeek-V3, compiled in test_transformers_attention (the same
# compiles prove the rest there): unpadded, proven causal ("causal", "causal (safe
# softmax)"), in test_every_layer_attention_fused; left padding ("additive", not causal;
# "additive+causal (safe softmax)"), logits equal at every position, the pad rows
# included, in test_padding_mask_and_yarn_mscale.


# ------------------------------------------------ the proof alone, on traced graphs (fast)

def _traced_mask(build, *args):
    """The where() node of `build(*args)` traced to aten with fake values."""
    from torch.fx.experimental.proxy_tensor import make_fx

    gm = make_fx(build, tracing_mode="fake")(*args)
    out = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    return out[0] if isinstance(out, (list, tuple)) else out


def _where(cond, fill):
    return torch.where(cond, torch.tensor(0.0), torch.tensor(fill))


S = 6
IDX = {  # name -> (mask builder over (keep [2, S] bool), proven, key terms)
    "le": (lambda keep: _where((torch.arange(S)[None, :] <= torch.arange(S)[:, None])[None, None], FMIN), True, 0),
    "two_bounds": (lambda keep: _where(((torch.arange(S)[None] <= torch.arange(S)[:, None])
                                        & (torch.arange(S)[None] <= torch.arange(S)[:, None] + 3))[None], FMIN), True, 0),
    "shifted_lt": (lambda keep: _where((torch.arange(S)[None] - 1 < torch.arange(S)[:, None])[None], FMIN), True, 0),
    "pad_ninf": (lambda keep: _where((torch.arange(S)[None] <= torch.arange(S)[:, None])[None, None]
                                     & keep[:, None, None, :], float("-inf")), True, 1),
    "pad_fmin": (lambda keep: _where((torch.arange(S)[None] <= torch.arange(S)[:, None])[None, None]
                                     & keep[:, None, None, :], FMIN), True, 1),
    "pad_small_fill": (lambda keep: _where((torch.arange(S)[None] <= torch.arange(S)[:, None])[None, None]
                                           & keep[:, None, None, :], -1e4), False, 0),
    "query_term_fmin": (lambda keep: _where((torch.arange(S)[None] <= torch.arange(S)[:, None])[None, None]
                                            & keep[:, None, :, None], FMIN), False, 0),
    "lt": (lambda keep: _where((torch.arange(S)[None] < torch.arange(S)[:, None])[None], FMIN), False, 0),
    "plus_one": (lambda keep: _where((torch.arange(S)[None] <= torch.arange(S)[:, None] + 1)[None], FMIN), False, 0),
    "anti": (lambda keep: _where((torch.arange(S)[None] >= torch.arange(S)[:, None])[None], FMIN), False, 0),
    "one_query": (lambda keep: _where((torch.arange(S)[None] <= torch.arange(1)[:, None]).expand(S, S)[None], FMIN),
                  False, 0),
    "float_arange": (lambda keep: _where((torch.arange(S.__float__())[None] <= torch.arange(S.__float__())[:, None])[None],
                                         FMIN), False, 0),
    "small_fill": (lambda keep: _where((torch.arange(S)[None] <= torch.arange(S)[:, None])[None], -1e4), False, 0),
    "or": (lambda keep: _where((torch.arange(S)[None] <= torch.arange(S)[:, None])[None, None]
                               | keep[:, None, None, :], float("-inf")), False, 0),
    "query_term": (lambda keep: _where((torch.arange(S)[None] <= torch.arange(S)[:, None])[None, None]
                                       & keep[:, None, :, None], float("-inf")), False, 0),
    "inverted": (lambda keep: torch.where(~(torch.arange(S)[None] <= torch.arange(S)[:, None])[None],
                                          torch.tensor(float("-inf")), torch.tensor(0.0)), True, 0),
    "inverted_pad": (lambda keep: torch.where(((torch.arange(S)[None] <= torch.arange(S)[:, None])[None, None]
                                               & keep[:, None, None, :]).logical_not(),
                                              torch.tensor(float("-inf")), torch.tensor(0.0)), True, 1),
    "inverted_window": (lambda keep: torch.where(~((torch.arange(S)[None] <= torch.arange(S)[:, None])
                                                   & (torch.arange(S)[None] > torch.arange(S)[:, None] - 3))[None],
                                                 torch.tensor(float("-inf")), torch.tensor(0.0)), False, 0),
    "inverted_zero_fill": (lambda keep: torch.where(~(torch.arange(S)[None] <= torch.arange(S)[:, None])[None],
                                                    torch.tensor(0.0), torch.tensor(float("-inf"))), False, 0),
    "fp16_min_bf16": (lambda keep: torch.where((torch.arange(S)[None] <= torch.arange(S)[:, None])[None],
                                               torch.tensor(0.0, dtype=torch.bfloat16),
                                               torch.tensor(-65504.0, dtype=torch.bfloat16)), True, 0),
    "fp16_min_pad": (lambda keep: _where((torch.arange(S)[None] <= torch.arange(S)[:, None])[None, None]
                                         & keep[:, None, None, :], -65504.0), True, 1),
    "nonzero_keep": (lambda keep: torch.where((torch.arange(S)[None] <= torch.arange(S)[:, None])[None],
                                              torch.tensor(1.0), torch.tensor(FMIN)), False, 0),
}


@pytest.mark.parametrize("name", list(IDX))
def test_proof_on_traced_masks(name):
    from mla_compile.passes.causal_mask import NotProven, analyse

    build, proven, keys = IDX[name]
    keep = torch.ones(2, S, dtype=torch.bool)
    mask = _traced_mask(build, keep)
    if proven:
        assert len(analyse(mask, (S, S)).keys) == keys
    else:
        with pytest.raises(NotProven):
            analyse(mask, (S, S))


def _positions(table_fn, k_side=lambda t, b, k: t[b, k], q_side=lambda t, b, q: t[b, q]):
    """where(T[b, k] <= T[b, q]) as transformers >= 5.18 builds it (positions remapped
    through a [B, S] table), with the table and either side replaceable."""
    def build(keep):
        t = table_fn(keep)
        b = torch.arange(2)[:, None, None, None]
        k, q = torch.arange(S)[None, None, None, :], torch.arange(S)[None, None, :, None]
        return _where(k_side(t, b, k) <= q_side(t, b, q), FMIN)
    return build


POSITIONS = {  # name -> (builder, proven)
    "increasing": (_positions(lambda keep: (torch.arange(S) + 3).expand(2, -1)), True),
    "gaps": (_positions(lambda keep: (torch.arange(S) * 2).expand(2, -1)), True),
    "repeat": (_positions(lambda keep: (torch.arange(S) // 2).expand(2, -1)), False),
    "decreasing": (_positions(lambda keep: (S - torch.arange(S)).expand(2, -1)), False),
    "from_input": (_positions(lambda keep: keep.long().cumsum(-1)), False),
    "mixed": (_positions(lambda keep: torch.arange(S).expand(2, -1), q_side=lambda t, b, q: q), False),
    "other_rows": (_positions(lambda keep: torch.arange(S).expand(2, -1),
                              q_side=lambda t, b, q: t[1 - b, q]), False),
}


@pytest.mark.parametrize("name", list(POSITIONS))
def test_proof_on_position_tables(name):
    """T[b, k] <= T[b, q] is k <= q exactly when T is computed in the graph and every
    row strictly increases; a table read from an input, a repeated position, one side
    not through T, or the two sides on different rows are not proven."""
    from mla_compile.passes.causal_mask import NotProven, analyse

    build, proven = POSITIONS[name]
    mask = _traced_mask(build, torch.ones(2, S, dtype=torch.bool))
    if proven:
        assert analyse(mask, (S, S)).keys == ()
    else:
        with pytest.raises(NotProven):
            analyse(mask, (S, S))
