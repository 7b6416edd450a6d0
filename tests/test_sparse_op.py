"""`torch.ops.mla.sparse_attention` (DSA): the Triton kernel (interpreted on CPU)
against the reference, and the reference against eager DSA code (indices scattered
into an all-True mask, masked_fill, dense attention); opcheck; argument and index
checks; a hypothesis fuzzer over index patterns (duplicates, all-masked rows,
top-k >= length, ragged lengths, one index, splits). Attention sinks (HY-V4: a logit
per head in every row's denominator) on both routes, a row with nothing visible
giving the sink alone (0), as eager's softmax over [scores, sink] does."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from kernel_device import kernel_test_device  # noqa: E402
from mla_compile.custom_ops import sparse_attention_reference  # noqa: E402
from mla_compile.custom_ops.triton_sparse import _sparse_split, mla_sparse_attention  # noqa: E402

DEVICE = kernel_test_device(_sparse_split)
needs_kernel = pytest.mark.skipif(DEVICE is None, reason="no Triton device (GPU or TRITON_INTERPRET=1)")
TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2}
op = torch.ops.mla.sparse_attention


def inputs(B=2, H=3, Sq=4, Sk=20, K=6, dtype=torch.float32, seed=0, device="cpu", Dn=8, Dr=4, Dv=8, R=16):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, sc=1.0: (torch.randn(*s, generator=g) * sc).to(dtype).to(device)  # noqa: E731
    idx = torch.randint(0, Sk, (B, Sq, K), generator=g).to(device)
    return (r(B, H, Sq, Dn), r(B, H, Sq, Dr), r(B, Sk, R), r(B, Sk, Dr), r(H, Dn, R, sc=0.3),
            r(H, Dv, R, sc=0.3), idx)


def eager_dsa(q_nope, q_pe, c_kv, k_pe, w_uk, w_uv, idx, scale, base, fill, sinks=None):
    """What transformers' DSA code computes: scatter, masked_fill, dense attention
    (with `sinks`, HY-V4's: a sink column concatenated to the scores, dropped after
    the softmax)."""
    B, Sq, _ = idx.shape
    Sk = c_kv.shape[1]
    unchosen = torch.ones(B, Sq, Sk, dtype=torch.bool).scatter(-1, idx.long(), False).unsqueeze(1)
    mask = (base if base is not None else torch.zeros(B, 1, Sq, Sk)).float().masked_fill(unchosen, fill)
    qf, qr, c, kr, wk, wv = (t.float() for t in (q_nope, q_pe, c_kv, k_pe, w_uk, w_uv))
    k = torch.cat([torch.einsum("bsr,hdr->bhsd", c, wk), kr[:, None].expand(-1, wk.shape[0], -1, -1)], -1)
    v = torch.einsum("bsr,hdr->bhsd", c, wv)
    scores = torch.cat([qf, qr], -1) @ k.transpose(-1, -2) * scale + mask
    if sinks is not None:
        col = sinks.float().view(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
        return (torch.softmax(torch.cat([scores, col], -1), -1)[..., :-1] @ v).to(q_nope.dtype)
    return (torch.softmax(scores, -1) @ v).to(q_nope.dtype)


def test_reference_is_eager_dsa():
    """The reference equals eager's formula with fill -inf, and with finfo.min where
    every row keeps a visible chosen key (causal base, key 0 chosen)."""
    q_nope, q_pe, c, kp, wk, wv, idx = inputs(Sq=6, Sk=6, K=3)
    base = torch.full((6, 6), torch.finfo(torch.float32).min).triu(1)[None, None].expand(2, 1, 6, 6)
    idx[..., 0] = 0
    want = eager_dsa(q_nope, q_pe, c, kp, wk, wv, idx, 0.3, base, torch.finfo(torch.float32).min)
    got = sparse_attention_reference(q_nope, q_pe, c, kp, wk, wv, idx, 0.3, base)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    want = eager_dsa(q_nope, q_pe, c, kp, wk, wv, idx, 0.3, None, float("-inf"))
    torch.testing.assert_close(sparse_attention_reference(q_nope, q_pe, c, kp, wk, wv, idx, 0.3), want,
                               rtol=1e-5, atol=1e-5)


def test_reference_with_sinks_is_eager_dsa():
    """With sinks, eager's softmax over [scores, sink] (HY-V4): a row whose chosen keys
    the base hides all gives 0 (the sink alone) under fill -inf, and under finfo.min too
    (the sink outweighs every masked key), with or without safe softmax."""
    q_nope, q_pe, c, kp, wk, wv, idx = inputs(Sq=6, Sk=6, K=3, seed=7)
    sinks = torch.randn(3, generator=torch.Generator().manual_seed(8))
    base = torch.zeros(2, 1, 6, 6)
    base[0, :, 1] = torch.finfo(torch.float32).min  # row (0, 1) sees nothing
    for fill in (float("-inf"), torch.finfo(torch.float32).min):
        want = eager_dsa(q_nope, q_pe, c, kp, wk, wv, idx, 0.3, base, fill, sinks)
        assert torch.equal(want[0, :, 1], torch.zeros_like(want[0, :, 1]))
        for zero in (False, True):
            got = sparse_attention_reference(q_nope, q_pe, c, kp, wk, wv, idx, 0.3, base, zero, sinks)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def head_sinks(H=3, dtype=torch.float32, device="cpu", seed=9):
    return (torch.randn(H, generator=torch.Generator().manual_seed(seed)) * 2).to(dtype).to(device)


def check_empty_row(got, zero, sinks):
    """The row that sees nothing: NaN in eager softmax, 0 in SDPA's safe softmax, and
    0 (the sink alone) with sinks either way."""
    assert bool(got.isnan().any()) == (not zero and sinks is None)
    if sinks is not None:
        assert torch.equal(got[0, :, -1], torch.zeros_like(got[0, :, -1]))


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("with_sinks", [False, True], ids=["", "sinks"])
def test_op_kernel_matches_reference(dtype, masked, with_sinks):
    args = inputs(dtype=dtype, device=DEVICE)
    mask = None
    sinks = head_sinks(dtype=dtype, device=DEVICE) if with_sinks else None
    if masked:  # ragged: batch 1 sees only its first 9 keys; row (0, 3) sees nothing
        mask = torch.zeros(2, 1, 4, 20, device=DEVICE, dtype=dtype)
        mask[1, :, :, 9:] = float("-inf")
        mask[0, :, 3] = float("-inf")
    for zero in (False, True):
        want = sparse_attention_reference(*args, 0.4, mask, zero, sinks)
        got = op(*args, 0.4, "triton", mask, zero, False, sinks)
        assert torch.equal(got.isnan(), want.isnan())
        if masked:
            check_empty_row(got, zero, sinks)
        torch.testing.assert_close(got.nan_to_num(7.0), want.nan_to_num(7.0), rtol=TOL[dtype], atol=TOL[dtype])


@needs_kernel
@pytest.mark.parametrize("Sq", [1, 4], ids=["decode-absorbed", "prefill-decompressed"])
@pytest.mark.parametrize("with_sinks", [False, True], ids=["", "sinks"])
def test_dense_route_matches_reference(Sq, with_sinks, monkeypatch):
    """Where lowering.sparse_form picks dense attention under the selection mask (on the
    GPU: prefill, small decode), the op equals the reference: duplicates, a ragged base
    mask, an empty row and sinks included. Forced here, since off the GPU the gather runs."""
    from mla_compile.custom_ops import triton_backend
    monkeypatch.setattr(triton_backend, "gather_chosen_keys", lambda *a: False)
    args = inputs(Sq=Sq, K=7, seed=5, device=DEVICE)
    args[-1][0, 0, :3] = 2  # duplicates
    mask = torch.zeros(2, 1, Sq, 20, device=DEVICE)
    mask[1, :, :, 9:] = float("-inf")
    mask[0, :, -1] = float("-inf")  # a row that sees nothing
    sinks = head_sinks(device=DEVICE) if with_sinks else None
    for zero in (False, True):
        want = sparse_attention_reference(*args, 0.4, mask, zero, sinks)
        got = op(*args, 0.4, "triton", mask, zero, False, sinks)
        assert torch.equal(got.isnan(), want.isnan())
        check_empty_row(got, zero, sinks)
        torch.testing.assert_close(got.nan_to_num(7.0), want.nan_to_num(7.0), rtol=1e-5, atol=1e-5)


def test_gather_or_dense_rule():
    """lowering.sparse_form: gather for one query over many keys on the GPU, dense for
    prefill, short contexts and top-k near the length; always gather off the GPU."""
    from mla_compile.lowering.sparse_form import gather_chosen_keys
    assert gather_chosen_keys(1, 4096, 8192, 16, 2048, on_gpu=False)       # interpreter: gather
    assert gather_chosen_keys(32, 1, 32768, 16, 2048, on_gpu=True)         # large batch decode
    assert gather_chosen_keys(1, 1, 32768, 128, 2048, on_gpu=True)         # 128 heads, 32k keys
    assert not gather_chosen_keys(1, 1, 32768, 16, 2048, on_gpu=True)      # batch 1, 16 heads: dense faster
    assert gather_chosen_keys(1, 1, 8192, 16, 2048, on_gpu=True, distinct=True)   # ... unless no sort
    assert not gather_chosen_keys(1, 1, 4096, 16, 2048, on_gpu=True, distinct=True)  # top-k half the keys
    assert not gather_chosen_keys(1, 8192, 8192, 128, 2048, on_gpu=True)   # prefill
    assert not gather_chosen_keys(64, 1, 4096, 128, 2048, on_gpu=True)     # top-k half the keys


@needs_kernel
@pytest.mark.parametrize("with_sinks", [False, True], ids=["", "sinks"])
def test_kernel_splits_and_duplicates(with_sinks):
    """Duplicates straddling split boundaries count once; many splits merge exactly;
    a sink joins the denominator once, however many splits."""
    q_nope, q_pe, c, kp, wk, wv, idx = inputs(K=40, Sk=12, seed=3, device=DEVICE)
    sinks = head_sinks(device=DEVICE) if with_sinks else None
    q_lat = torch.einsum("bhqd,hdr->bhqr", q_nope, wk)
    want = sparse_attention_reference(q_nope, q_pe, c, kp, wk, wv, idx, 0.5, sinks=sinks)
    for splits, block_n in ((1, 16), (3, 16), (5, 16)):
        o_lat = mla_sparse_attention(q_lat, q_pe, c, kp, idx, 0.5, splits=splits, block_n=block_n, sinks=sinks)
        got = torch.einsum("bhqr,hvr->bhqv", o_lat, wv)
        torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5)


@needs_kernel
def test_distinct_indices_read_as_they_are():
    """distinct=True (topk's indices): no sort, no duplicate check in the kernel; the same
    result as the sorting path and the reference, unsorted rows and several splits."""
    q_nope, q_pe, c, kp, wk, wv, _ = inputs(Sk=30, seed=4, device=DEVICE)
    g = torch.Generator().manual_seed(5)
    idx = torch.stack([torch.randperm(30, generator=g)[:9] for _ in range(2 * 4)]).view(2, 4, 9).to(DEVICE)
    q_lat = torch.einsum("bhqd,hdr->bhqr", q_nope, wk)
    want = sparse_attention_reference(q_nope, q_pe, c, kp, wk, wv, idx, 0.5)
    for splits in (1, 3):
        for distinct in (False, True):
            o_lat = mla_sparse_attention(q_lat, q_pe, c, kp, idx, 0.5, splits=splits, block_n=16, distinct=distinct)
            torch.testing.assert_close(torch.einsum("bhqr,hvr->bhqv", o_lat, wv), want, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(op(q_nope, q_pe, c, kp, wk, wv, idx, 0.5, "triton", None, False, True), want,
                               rtol=2e-5, atol=2e-5)


def test_distinct_is_checked_in_eager():
    """A caller that says distinct=True and repeats an index gets an error, not a double count."""
    args = list(inputs())
    args[6] = torch.stack([torch.randperm(20)[:6] for _ in range(8)]).view(2, 4, 6)
    op(*args, 0.3, "reference", None, False, True)  # distinct: accepted
    args[6][1, 2, 4] = args[6][1, 2, 0]
    with pytest.raises(ValueError, match=rf"distinct=True, but indices\[1, 2\] repeats the index {int(args[6][1, 2, 0])}"):
        op(*args, 0.3, "reference", None, False, True)


def test_opcheck():
    args = inputs()
    mask = torch.zeros(2, 1, 4, 20)
    torch.library.opcheck(op.default, (*args, 0.3, "reference", mask, True))
    if DEVICE is not None and DEVICE.type == "cpu":
        torch.library.opcheck(op.default, (*args, 0.3, "triton", None, False))
        distinct = torch.stack([torch.randperm(20)[:6] for _ in range(8)]).view(2, 4, 6)
        torch.library.opcheck(op.default, (*args[:6], distinct, 0.3, "triton", None, False, True))
        torch.library.opcheck(op.default, (*args, 0.3, "triton", mask, False, False, head_sinks()))
    torch.library.opcheck(op.default, (*args, 0.3, "reference", None, True, False, head_sinks()))


@pytest.mark.parametrize("bad, message", [
    (lambda a: a.__setitem__(6, a[6].clone().fill_(20)), r"indices\[0, 0, 0\] = 20 is outside \[0, Sk = 20\)"),
    (lambda a: a[6].__setitem__((1, 2, 3), -1), r"indices\[1, 2, 3\] = -1 is outside"),
    (lambda a: a.__setitem__(6, a[6][:, :3]), r"indices must be \[B, Sq, K\] = \(2, 4, \*\)"),
    (lambda a: a.__setitem__(6, a[6].float()), "indices dtype must be one of"),
    (lambda a: a.__setitem__(2, a[2][:, :10]), r"k_pe must be \[B, Sk, Dr\] = \(2, 10, 4\)"),
])
def test_argument_checks(bad, message):
    """Eager's scatter raises on an index outside [0, Sk); so does the op, naming it."""
    args = list(inputs())
    bad(args)
    with pytest.raises(ValueError, match=message):
        op(*args, 0.3, "reference")


@pytest.mark.parametrize("sinks, message", [
    (torch.zeros(4), r"sinks must be \[H\] = \(3,\), one logit per head, got \(4,\)"),
    (torch.zeros(1, 3), r"sinks must be \[H\] = \(3,\), one logit per head, got \(1, 3\)"),
    (torch.zeros(3, dtype=torch.int64), r"sinks must be a float tensor on cpu, got torch.int64"),
])
def test_sinks_checks(sinks, message):
    """Sinks are one float logit per head on q's device, in eager and at trace time."""
    args = list(inputs())
    with pytest.raises(ValueError, match=rf"mla.sparse_attention: {message}"):
        op(*args, 0.3, "reference", None, False, False, sinks)
    with torch._subclasses.FakeTensorMode() as fake, pytest.raises(ValueError, match=message):
        op(*(fake.from_tensor(a) for a in args), 0.3, "reference", None, False, False, fake.from_tensor(sinks))


def test_fake_shapes_and_empty():
    """K = 0 (no key chosen): every row empty (0 with safe softmax or sinks); Sq = 0: empty."""
    args = list(inputs())
    args[6] = args[6][..., :0]
    assert torch.equal(op(*args, 0.3, "reference", None, True), torch.zeros(2, 3, 4, 8))
    if DEVICE is not None:
        assert torch.equal(op(*[a.to(DEVICE) for a in args], 0.3, "triton", None, True),
                           torch.zeros(2, 3, 4, 8, device=DEVICE))
    for impl in ("reference",) + (("triton",) if DEVICE is not None else ()):  # the sink alone: 0, not NaN
        dev = DEVICE if impl == "triton" else "cpu"
        got = op(*[a.to(dev) for a in args], 0.3, impl, None, False, False, head_sinks(device=dev))
        assert torch.equal(got, torch.zeros(2, 3, 4, 8, device=dev)), impl
