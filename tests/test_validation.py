"""Argument validation of every public op (mla.rope, mla.prefill_attention,
mla.cache_write, mla.rope_cache_write, mla.paged_decode) and of PagedLatentCache:
one test per case, each asserting ValueError and a message that names the op and the
argument; one valid call per op; inputs the kernels need contiguous are made so;
range checks run in eager only (not in the fake impl, not during CUDA graph capture).

The rank / shape / dtype cases of mla.rope and mla.prefill_attention that
test_rope_op.py and test_prefill_op.py already cover are not repeated here.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402

from mla_compile.custom_ops import PagedLatentCache, checks, paged_cache  # noqa: E402
from mla_compile.custom_ops.triton_backend import TritonBackend  # noqa: E402

DEVICE = torch.device("cuda" if os.environ.get("TRITON_INTERPRET") != "1" and torch.cuda.is_available() else "cpu")
KERNELS = ["reference", pytest.param("triton", marks=pytest.mark.skipif(
    not TritonBackend.supports(DEVICE), reason="Triton needs CUDA or TRITON_INTERPRET=1"))]
B, H, SQ, T = 2, 2, 1, 5
R, DR, DN, DV = 8, 4, 4, 6
BS, NUM_BLOCKS, MAX_BLOCKS = 4, 6, 3  # capacity of a table row: 12 tokens
W = R + DR

cache_write = torch.ops.mla.cache_write
rope_cache_write = torch.ops.mla.rope_cache_write
paged_decode = torch.ops.mla.paged_decode
rope = torch.ops.mla.rope
prefill = torch.ops.mla.prefill_attention


def rand(*shape, dtype=torch.float32):
    g = torch.Generator().manual_seed(sum(shape) * 31 + len(shape))
    return torch.randn(*shape, generator=g).to(DEVICE, dtype)


def index(values, dtype=torch.int64):
    return torch.tensor(values, dtype=dtype, device=DEVICE)


def apply(args: dict, change: dict) -> dict:
    """args with some values replaced (a callable gets the old value)."""
    return {**args, **{k: v(args[k]) if callable(v) else v for k, v in change.items()}}


def raises(message, fn, *args, **kwargs):
    with pytest.raises(ValueError, match=message):
        fn(*args, **kwargs)


def non_contiguous(t):
    """The same values, with a transposed (column-major) layout."""
    return t.t().contiguous().t()


# ---------------------------------------------------------------- mla.cache_write

def write_args():
    return dict(cache=torch.zeros(NUM_BLOCKS, BS * W, device=DEVICE), latent=rand(T, R), k_pe=rand(T, DR),
                slots=index([0, 5, 6, 17, 23]), block_size=BS, tt=1, vec=W)


WRITE_CASES = {
    "latent_rank": (dict(latent=lambda t: t[None]), r"latent must be 2-D \[T, R\], got shape \(1, 5, 8\)"),
    "k_pe_rank": (dict(k_pe=lambda t: t[0]), r"k_pe must be 2-D \[T, Dr\]"),
    "slots_rank": (dict(slots=lambda t: t[None]), r"slots must be 1-D \[T\]"),
    "slots_dtype": (dict(slots=lambda t: t.float()),
                    r"slots dtype must be one of .*int32.*int64.*, got torch.float32"),
    "slots_device": (dict(slots=lambda t: t.to("meta")), "slots is on meta but the cache is on"),
    "k_pe_tokens": (dict(k_pe=lambda t: t[:4]), r"k_pe must be \[T, Dr\] = \(5, \*\) .* got \(4, 4\)"),
    "slots_tokens": (dict(slots=lambda t: t[:4]), r"slots must be \[T\] = \(5,\) .* got \(4,\)"),
    "cache_rank": (dict(cache=lambda t: t.view(-1)),
                   r"cache must be 2-D \[num_blocks, block_size \* \(R \+ Dr\)\]"),
    "cache_dtype": (dict(cache=lambda t: t.double()), "cache dtype must be one of"),
    "block_size": (dict(block_size=0), "block_size must be a positive int, got 0"),
    "widths": (dict(latent=lambda t: t[:, :7]),
               r"cache must be \[num_blocks, block_size \* \(R \+ Dr\)\] = \[\*, 44\] .* got \(6, 48\)"),
    "tt_vec": (dict(vec=5), "tt, vec must tile a page .* got tt=1, vec=5"),
    "cache_contiguous": (dict(cache=non_contiguous), r"cache must be contiguous .* got strides \(1, 6\)"),
    "latent_dtype": (dict(latent=lambda t: t.bfloat16()),
                     "latent dtype torch.bfloat16 differs from the cache's torch.float32"),
    "k_pe_dtype": (dict(k_pe=lambda t: t.half()), "k_pe dtype torch.float16 differs from the cache's"),
    "latent_device": (dict(latent=lambda t: t.to("meta")), "latent is on meta but the cache is on"),
    "slot_negative": (dict(slots=index([0, -1, 6, 17, 23])),
                      r"slots\[1\] must be in \[0, num_blocks \* block_size\) = \[0, 24\), got -1"),
    "slot_past_end": (dict(slots=index([0, 5, 6, 17, 24], torch.int32)), r"slots\[4\] must be in .* got 24"),
}


@pytest.mark.parametrize("case", WRITE_CASES)
def test_cache_write_invalid(case):
    change, message = WRITE_CASES[case]
    args = apply(write_args(), change)
    before = args["cache"].clone()
    raises(f"mla.cache_write: {message}", cache_write, **args)
    assert torch.equal(args["cache"], before)  # nothing written


def test_cache_write_valid_any_strides():
    args = write_args()
    args["latent"] = non_contiguous(args["latent"])  # torch.cat takes any strides
    cache_write(**args)
    rows = args["cache"].view(-1, W)[args["slots"]]
    assert torch.equal(rows, torch.cat([args["latent"], args["k_pe"]], -1))


# ------------------------------------------------------------ mla.rope_cache_write

def rope_write_args():
    ang = rand(T, DR // 2)
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    return dict(**write_args(), q_pe=rand(H, T, DR), cos=cos, sin=sin,  # cos/sin [T, Dr] fit q_pe and k_pe
                interleaved_in=False, interleaved_out=False, impl="reference")


ROPE_WRITE_CASES = {
    "impl": (dict(impl="cuda"), "impl must be one of"),
    "q_pe_dtype": (dict(q_pe=lambda t: t.int()), "q_pe dtype must be one of"),
    "k_pe_rotary_dim": (dict(k_pe=lambda t: t[:, :2]), r"k_pe rotary dim \(last dim\) must equal q_pe's 4, got 2"),
    "cos_device": (dict(cos=lambda t: t.to("meta"), sin=lambda t: t.to("meta")),
                   "q_pe is on .* but cos/sin are on meta/meta"),
    "k_pe_rank": (dict(k_pe=lambda t: t[None]), r"k_pe must be 2-D \[T, Dr\], got shape \(1, 5, 4\)"),
    "latent_dtype": (dict(latent=lambda t: t.double()), "latent dtype torch.float64 differs from the cache's"),
    "slots_dtype": (dict(slots=lambda t: t.short()), "slots dtype must be one of"),
    "slot_past_end": (dict(slots=index([0, 5, 6, 17, 99])), r"slots\[4\] must be in .* = \[0, 24\), got 99"),
}


@pytest.mark.parametrize("case", ROPE_WRITE_CASES)
def test_rope_cache_write_invalid(case):
    change, message = ROPE_WRITE_CASES[case]
    args = apply(rope_write_args(), change)
    before = args["cache"].clone()
    raises(f"mla.rope_cache_write: {message}", rope_cache_write, **args)
    assert torch.equal(args["cache"], before)  # checked before anything ran


@pytest.mark.parametrize("kernel", KERNELS)
def test_rope_cache_write_valid(kernel):
    args = rope_write_args()
    q_rot = rope_cache_write(**{**args, "impl": kernel})
    (want,) = rope([args["q_pe"]], args["cos"], args["sin"], False, False, "reference")
    torch.testing.assert_close(q_rot, want)


# ---------------------------------------------------------------- mla.paged_decode

def decode_args(dtype=torch.float32):
    cache = torch.zeros(NUM_BLOCKS, BS * W, device=DEVICE, dtype=dtype)
    cache_write(cache, rand(NUM_BLOCKS * BS, R, dtype=dtype), rand(NUM_BLOCKS * BS, DR, dtype=dtype),
                torch.arange(NUM_BLOCKS * BS, device=DEVICE), BS, 1, W)
    w = rand(H * (DN + DV), R, dtype=dtype).view(H, DN + DV, R)
    return dict(q_nope=rand(B, H, SQ, DN, dtype=dtype), q_pe=rand(B, H, SQ, DR, dtype=dtype), cache=cache,
                block_table=index([[4, 1, 0], [2, 5, 3]], torch.int32), seq_lens=index([9, 12], torch.int32),
                w_uk=w[:, :DN], w_uv=w[:, DN:], scale=0.3, block_size=BS, tt=1, vec=W, impl="reference")


DECODE_CASES = {
    "kernel": (dict(impl="cuda"), "kernel must be one of"),
    "q_nope_rank": (dict(q_nope=lambda t: t[0]), r"q_nope must be 4-D \[B, H, Sq, Dn\]"),
    "q_pe_rank": (dict(q_pe=lambda t: t[0]), r"q_pe must be 4-D \[B, H, Sq, Dr\]"),
    "w_uk_rank": (dict(w_uk=lambda t: t[0]), r"w_uk must be 3-D \[H, Dn, R\]"),
    "w_uv_rank": (dict(w_uv=lambda t: t[0]), r"w_uv must be 3-D \[H, Dv, R\]"),
    "q_pe_heads": (dict(q_pe=lambda t: t[:, :1]), r"q_pe must be \[B, H, Sq, Dr\] = \(2, 2, 1, \*\)"),
    "w_uk_nope_dim": (dict(w_uk=lambda t: t[:, :3]),
                      r"w_uk must be \[H, Dn, R\] = \(2, 4, \*\) .* got \(2, 3, 8\)"),
    "w_uv_latent_dim": (dict(w_uv=lambda t: t[..., :7]), r"w_uv must be \[H, Dv, R\] = \(2, \*, 8\)"),
    "rope_dim_vs_cache": (dict(q_pe=lambda t: t[..., :2]),  # the op sees R + Dr only; attend names Dr
                          r"cache must be \[num_blocks, block_size \* \(R \+ Dr\)\] = \[\*, 40\]"),
    "cache_contiguous": (dict(cache=non_contiguous), "cache must be contiguous"),
    "cache_dtype": (dict(cache=lambda t: t.double()), "cache dtype must be one of"),
    "block_size": (dict(block_size=-4), "block_size must be a positive int"),
    "tt_vec": (dict(tt=3), "tt, vec must tile a page .* got tt=3"),
    "q_nope_dtype": (dict(q_nope=lambda t: t.bfloat16()),
                     "q_nope dtype torch.bfloat16 differs from the cache's torch.float32"),
    "q_pe_dtype": (dict(q_pe=lambda t: t.half()), "q_pe dtype torch.float16 differs from the cache's"),
    "w_uk_dtype": (dict(w_uk=lambda t: t.bfloat16()), "w_uk dtype torch.bfloat16 differs from the cache's"),
    "w_uv_dtype": (dict(w_uv=lambda t: t.bfloat16()), "w_uv dtype torch.bfloat16 differs from the cache's"),
    "q_nope_device": (dict(q_nope=lambda t: t.to("meta")), "q_nope is on meta but the cache is on"),
    "w_uv_device": (dict(w_uv=lambda t: t.to("meta")), "w_uv is on meta but the cache is on"),
    "block_table_dtype": (dict(block_table=lambda t: t.float()), "block_table dtype must be one of"),
    "seq_lens_dtype": (dict(seq_lens=lambda t: t.bool()), "seq_lens dtype must be one of"),
    "block_table_rank": (dict(block_table=lambda t: t.view(-1)), r"block_table must be 2-D \[B, max_blocks\]"),
    "seq_lens_rank": (dict(seq_lens=lambda t: t[:, None]), r"seq_lens must be 1-D \[B\]"),
    "block_table_batch": (dict(block_table=lambda t: t[:1]),
                          r"block_table must be \[B, max_blocks\] = \(2, \*\)"),
    "seq_lens_batch": (dict(seq_lens=lambda t: t[:1]), r"seq_lens must be \[B\] = \(2,\) .* got \(1,\)"),
    "block_table_device": (dict(block_table=lambda t: t.to("meta")), "block_table is on meta but the cache is on"),
    "seq_lens_device": (dict(seq_lens=lambda t: t.to("meta")), "seq_lens is on meta but the cache is on"),
    "seq_len_negative": (dict(seq_lens=index([9, -1], torch.int32)),
                         r"seq_lens\[1\] must be in \[0, block_table.shape\[1\] \* block_size\] = \[0, 12\] "
                         r"\(the table's capacity\), got -1"),
    "seq_len_past_capacity": (dict(seq_lens=index([13, 12])), r"seq_lens\[0\] must be in \[0, .* got 13"),
    "block_past_end": (dict(block_table=index([[4, 6, 0], [2, 5, 3]])),
                       r"block_table\[0, 1\] must be a block of the cache, "
                       r"in \[0, num_blocks\) = \[0, 6\), got 6"),
    "block_negative": (dict(block_table=index([[4, 1, 0], [2, 5, -1]], torch.int32)),
                       r"block_table\[1, 2\] must be a block .* got -1"),
}


@pytest.mark.parametrize("case", DECODE_CASES)
def test_paged_decode_invalid(case):
    change, message = DECODE_CASES[case]
    raises(f"mla.paged_decode: {message}", paged_decode, **apply(decode_args(), change))


def test_paged_decode_valid_bf16():
    out = paged_decode(**decode_args(torch.bfloat16))
    assert out.shape == (B, H, SQ, DV) and out.dtype == torch.bfloat16 and not out.isnan().any()


@pytest.mark.parametrize("kernel", KERNELS)
def test_unused_table_entries_are_not_checked(kernel):
    """Entries past a sequence's blocks are never read: padding may be anything."""
    args = decode_args()
    want = paged_decode(**{**args, "impl": kernel})
    padded = index([[4, 1, 0, -1, 99], [2, 5, 3, 7, -1]], torch.int32)
    args.update(block_table=padded, seq_lens=index([9, 12], torch.int32))
    torch.testing.assert_close(paged_decode(**{**args, "impl": kernel}), want)
    torch.testing.assert_close(paged_decode(**{**args, "impl": "reference"}), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel", KERNELS)
def test_strided_table_and_lengths_are_made_contiguous(kernel):
    """The Triton kernel steps through a table row and through seq_lens with unit
    stride: a column-major table and a strided int32 seq_lens are copied, not misread."""
    args = decode_args()
    want = paged_decode(**{**args, "impl": "reference"})
    args["block_table"] = non_contiguous(args["block_table"])
    args["seq_lens"] = index([9, 0, 12, 0], torch.int32)[::2]
    assert args["block_table"].stride(-1) != 1 and args["seq_lens"].stride(0) != 1
    torch.testing.assert_close(paged_decode(**{**args, "impl": kernel}), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dims", [(5, 3), (1, 1), (33, 17)], ids=str)
def test_decode_takes_any_head_dims(dims, kernel):
    """The kernel pads every head dim to a power of two >= 16 and masks: no limit."""
    latent, rope_dim = dims
    cache = PagedLatentCache.allocate(4, BS, latent, rope_dim, torch.float32, DEVICE)
    cache.write(rand(10, latent), rand(10, rope_dim), torch.arange(10, device=DEVICE))
    w = rand(H, DN + DV, latent)
    args = (rand(1, H, 1, DN), rand(1, H, 1, rope_dim), w[:, :DN], w[:, DN:], 0.3,
            index([[0, 1, 2]], torch.int32), index([10], torch.int32))
    torch.testing.assert_close(cache.attend(*args, kernel=kernel), cache.attend(*args, kernel="reference"),
                               rtol=1e-4, atol=1e-4)


# ------------------------------------------------- range checks: eager only, never captured

def test_range_checks_are_skipped_during_cuda_graph_capture(monkeypatch):
    monkeypatch.setattr(paged_cache, "value_checks_off", lambda device: True)
    out = paged_decode(**{**decode_args(), "seq_lens": index([9, -1], torch.int32)})  # not checked
    assert out[1].isnan().all()  # a sequence with no key: 0 / 0, as softmax over nothing


def test_value_checks_off_only_while_capturing(monkeypatch):
    assert not checks.value_checks_off(torch.device("cpu"))  # never asks CUDA about a CPU tensor
    for capturing in (False, True):
        monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing)
        assert checks.value_checks_off(torch.device("cuda")) is capturing


def test_fake_impls_check_shapes_but_not_values():
    mode = FakeTensorMode()

    def fake(args, **change):
        args = apply(args, change)
        return {k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in args.items()}

    bad_lens = fake(decode_args(), seq_lens=index([99, -5], torch.int32))
    bad_half = fake(decode_args(), q_pe=lambda t: t.half())
    bad_slots = fake(write_args(), slots=index([-1, 99, 0, 0, 0]))
    float_slots = fake(write_args(), slots=lambda t: t.float())
    with mode:
        assert paged_decode(**bad_lens).shape == (B, H, SQ, DV)  # no sync, no value check
        raises("mla.paged_decode: q_pe dtype torch.float16 differs", paged_decode, **bad_half)
        cache_write(**bad_slots)
        raises("mla.cache_write: slots dtype must be one of", cache_write, **float_slots)


def test_compiled_dynamic_shapes_pass_and_check_ranges():
    """The fake impls' shape checks add no failure under symbolic shapes; the eager
    impl still checks ranges at run time."""
    def step(cache, latent, k_pe, slots, q_nope, q_pe, table, lens, w_uk, w_uv):
        cache_write(cache, latent, k_pe, slots, BS, 1, W)
        return paged_decode(q_nope, q_pe, cache, table, lens, w_uk, w_uv, 0.3, BS, 1, W, "reference")

    d, w = decode_args(), write_args()
    fn = torch.compile(step, backend="mla", fullgraph=True, dynamic=True)
    args = [d["cache"], w["latent"], w["k_pe"], w["slots"], d["q_nope"], d["q_pe"], d["block_table"],
            d["seq_lens"], d["w_uk"], d["w_uv"]]
    want = step(d["cache"].clone(), *args[1:])
    torch.testing.assert_close(fn(*args), want)
    args[3] = index([0, 1, 2, 3, 24])
    raises(r"mla.cache_write: slots\[4\] must be in", fn, *args)


# ------------------------------------------------------------ PagedLatentCache methods

def new_cache(dtype=torch.float32):
    cache = PagedLatentCache.allocate(NUM_BLOCKS, BS, R, DR, dtype, DEVICE)
    cache.write(rand(NUM_BLOCKS * BS, R, dtype=dtype), rand(NUM_BLOCKS * BS, DR, dtype=dtype),
                torch.arange(NUM_BLOCKS * BS, device=DEVICE))
    return cache


@pytest.mark.parametrize("bad, message", [
    (dict(num_blocks=True), "num_blocks must be a positive int, got True"),
    (dict(latent_dim=-1), "latent_dim must be a positive int, got -1"),
    (dict(dtype=torch.float64), "dtype must be one of .*, got torch.float64"),
    (dict(kernel="cuda"), "kernel must be one of"),
], ids=["num_blocks_bool", "latent_dim", "dtype", "kernel"])
def test_allocate_invalid(bad, message):
    args = dict(num_blocks=NUM_BLOCKS, block_size=BS, latent_dim=R, rope_dim=DR, dtype=torch.float32,
                device=DEVICE)
    raises(f"mla.PagedLatentCache.allocate: {message}", PagedLatentCache.allocate, **{**args, **bad})


METHOD_CASES = {  # (method, change, op or method named in the message, message)
    "write_latent_width": ("write", dict(latent=lambda t: t[:, :7]), "PagedLatentCache.write",
                           r"latent last dim must be the cache's latent_dim = 8, got shape \(5, 7\)"),
    "write_k_pe_width": ("write", dict(k_pe=lambda t: t[:, :2]), "PagedLatentCache.write",
                         "k_pe last dim must be the cache's rope_dim = 4"),
    "write_k_pe_0d": ("write", dict(k_pe=lambda t: t[0, 0]), "PagedLatentCache.write",
                      r"k_pe last dim .* got shape \(\)"),
    "write_slot_range": ("write", dict(slots=index([0, 1, 2, 3, -2])), "cache_write",
                         r"slots\[4\] must be in .* got -2"),
    "write_with_rope_q_pe_width": ("write_with_rope", dict(q_pe=lambda t: t[..., :2]),
                                   "PagedLatentCache.write_with_rope", "q_pe last dim must be the cache's rope_dim"),
    "write_with_rope_latent_width": ("write_with_rope", dict(latent=lambda t: t[:, :4]),
                                     "PagedLatentCache.write_with_rope", "latent last dim"),
    "read_table_dtype": ("read", dict(block_table=lambda t: t.double()), "PagedLatentCache.read",
                         "block_table dtype must be one of"),
    "read_table_rank": ("read", dict(block_table=lambda t: t[0]), "PagedLatentCache.read",
                        "block_table must be 2-D"),
    "read_seq_lens_batch": ("read", dict(seq_lens=lambda t: t[:1]), "PagedLatentCache.read",
                            r"seq_lens must be \[B\] = \(2,\)"),
    "read_seq_len_capacity": ("read", dict(seq_lens=index([9, 13])), "PagedLatentCache.read",
                              r"seq_lens\[1\] .* got 13"),
    "read_block_range": ("read", dict(block_table=index([[4, 1, 0], [2, 5, 9]])), "PagedLatentCache.read",
                         r"block_table\[1, 2\] must be a block .* got 9"),
    "attend_w_uk_width": ("attend", dict(w_uk=lambda t: t[..., :4]), "PagedLatentCache.attend",
                          "w_uk last dim must be the cache's latent_dim = 8"),
    "attend_w_uv_width": ("attend", dict(w_uv=lambda t: t[..., :4]), "PagedLatentCache.attend", "w_uv last dim"),
    "attend_q_pe_width": ("attend", dict(q_pe=lambda t: t[..., :2]), "PagedLatentCache.attend",
                          "q_pe last dim must be the cache's rope_dim = 4"),
    "attend_q_dtype": ("attend", dict(q_nope=lambda t: t.bfloat16()), "paged_decode",
                       "q_nope dtype torch.bfloat16 differs from the cache's"),
    "attend_block_range": ("attend", dict(block_table=index([[4, 1, 0], [2, 5, 6]])), "paged_decode",
                           r"block_table\[1, 2\]"),
}


def method_args(method):
    if method == "write":
        w = write_args()
        return dict(latent=w["latent"], k_pe=w["k_pe"], slots=w["slots"])
    if method == "write_with_rope":
        w = rope_write_args()
        return {k: w[k] for k in ("latent", "k_pe", "q_pe", "cos", "sin", "slots")}
    d = decode_args()
    if method == "read":
        return dict(block_table=d["block_table"], seq_lens=d["seq_lens"])
    return {k: d[k] for k in ("q_nope", "q_pe", "w_uk", "w_uv", "scale", "block_table", "seq_lens")}


@pytest.mark.parametrize("case", METHOD_CASES)
def test_cache_methods_invalid(case):
    method, change, op, message = METHOD_CASES[case]
    cache = new_cache()
    raises(f"mla.{op}: {message}", getattr(cache, method), **apply(method_args(method), change))


def test_cache_methods_valid():
    cache = new_cache()
    cache.write(**method_args("write"))
    q_rot = cache.write_with_rope(**method_args("write_with_rope"), kernel="reference")
    assert q_rot.shape == (H, T, DR)
    c, kr, valid = cache.read(**method_args("read"))
    assert c.shape == (B, MAX_BLOCKS * BS, R) and kr.shape[-1] == DR and valid.sum() == 21
    assert cache.attend(**method_args("attend"), kernel="reference").shape == (B, H, SQ, DV)


# ---------------------------------------------------- mla.rope and mla.prefill_attention

def rope_args():
    return dict(xs=[rand(2, 4, 16), rand(2, 1, 16)], cos=rand(2, 1, 16), sin=rand(2, 1, 16),
                interleaved_in=False, interleaved_out=False, impl="reference")


ROPE_CASES = {
    "rotary_dims_differ": (dict(xs=lambda xs: [xs[0], rand(2, 1, 8)], cos=lambda c: c[..., :8],
                                sin=lambda s: s[..., :8]),  # width 8 fits both: d/2 of xs[0], d of xs[1]
                           r"xs\[1\] rotary dim \(last dim\) must equal xs\[0\]'s 16, got 8"),
    "cos_dtype": (dict(cos=lambda c: c.int(), sin=lambda s: s.int()), "cos/sin dtype must be one of"),
    "x_device": (dict(xs=lambda xs: [xs[0].to("meta")]), r"xs\[0\] is on meta but cos/sin are on"),
    "cos_0d": (dict(cos=lambda c: c[0, 0, 0], sin=lambda s: s[0, 0, 0]), "cos/sin must have a last"),
}


@pytest.mark.parametrize("case", ROPE_CASES)
def test_rope_invalid(case):
    change, message = ROPE_CASES[case]
    raises(f"mla.rope: {message}", rope, **apply(rope_args(), change))


@pytest.mark.parametrize("kernel", KERNELS)
def test_rope_valid_any_strides(kernel):
    args = rope_args()
    args["xs"] = [args["xs"][0].transpose(0, 1), args["xs"][1].transpose(0, 1)]  # the kernel takes strides
    args["cos"], args["sin"] = args["cos"].transpose(0, 1), args["sin"].transpose(0, 1)
    outs = rope(**{**args, "impl": kernel})
    torch.testing.assert_close(outs, rope(**{**args, "impl": "reference"}), rtol=1e-5, atol=1e-5)


def prefill_args():
    w = rand(H, DN + DV, R)
    return dict(q_nope=rand(B, H, 3, DN), q_pe=rand(B, H, 3, DR), c_kv=rand(B, 5, R), k_pe=rand(B, 5, DR),
                w_uk=w[:, :DN], w_uv=w[:, DN:], scale=0.3, causal=True, form="absorbed", impl="reference")


@pytest.mark.parametrize("change, message", [
    (dict(mask=torch.zeros(B, 1, 3, 5, device="meta")),
     "mask must be a float tensor on .* got torch.float32 on meta"),
    (dict(q_nope=lambda t: t.to("meta")), "q_pe is on .* but q_nope is on meta"),
    (dict(k_pe=lambda t: t.to("meta")), "k_pe is on meta but q_nope is on"),
], ids=["mask_device", "q_nope_device", "k_pe_device"])
def test_prefill_invalid(change, message):
    raises(f"mla.prefill_attention: {message}", prefill, **apply(prefill_args(), change))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dims", [(5, 3, 7, 9), (1, 1, 1, 1)], ids=str)
def test_prefill_valid_any_head_dims(kernel, dims):
    """Head dims need not be powers of two or >= 16: the kernels pad and mask."""
    dn, dr, dv, r = dims
    w = rand(H, dn + dv, r)
    args = (rand(B, H, 3, dn), rand(B, H, 3, dr), rand(B, 5, r), rand(B, 5, dr), w[:, :dn], w[:, dn:], 0.3, True)
    for form in ("decompressed", "absorbed"):
        torch.testing.assert_close(prefill(*args, form, kernel), prefill(*args, form, "reference"),
                                   rtol=1e-4, atol=1e-4)
