"""The wide decode kernel (custom_ops/triton_decode_wide.py: 64 query rows per program on
the GPU, the latent in column blocks, direct output with one split) against
`reference.latent_attention_reference`.

On CPU it runs under Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1)
with tiny sizes; every program shape the GPU uses (NSPLIT 1 / 2, direct and split
outputs, several row groups, padded rows, paged pages) is forced here at small scale.
"""
import os
import zlib

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

triton = pytest.importorskip("triton")

from kernel_device import kernel_test_device  # noqa: E402
from mla_compile.custom_ops import triton_decode_wide  # noqa: E402
from mla_compile.custom_ops.reference import latent_attention_reference  # noqa: E402
from mla_compile.custom_ops.triton_decode_wide import (  # noqa: E402
    choose_wide_splits, mla_decode_attention_wide)

DEVICE = kernel_test_device(triton_decode_wide._wide_split)
pytestmark = pytest.mark.skipif(DEVICE is None, reason="needs TRITON_INTERPRET=1 (CPU) or a CUDA device")
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
R, DR = 32, 16


@pytest.fixture
def gen(request):
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


def rand(*shape, gen, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, generator=gen) * scale).to(DEVICE, dtype)


def inputs(B, H, Sq, Sk, gen, dtype=torch.float32, r=R, dr=DR):
    return (rand(B, H, Sq, r, gen=gen, dtype=dtype), rand(B, H, Sq, dr, gen=gen, dtype=dtype),
            rand(B, Sk, r, gen=gen, dtype=dtype), rand(B, Sk, dr, gen=gen, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("B, H, Sq, Sk, splits, nsplit, block_h", [
    (1, 1, 1, 1, 1, 2, 16),      # one key, direct output
    (2, 5, 1, 37, 3, 2, 16),     # ragged last split, padded rows, partials + combine
    (1, 20, 1, 50, 1, 1, 16),    # two row groups, one split: direct, one column block
    (2, 40, 1, 33, 2, 2, 32),    # 32-row programs, second group padded
    (3, 2, 3, 19, 2, 1, 16),     # a short chunk of queries
    (1, 16, 1, 40, 40, 2, 16),   # more splits than key blocks: empty splits
])
def test_matches_reference(B, H, Sq, Sk, splits, nsplit, block_h, dtype, gen):
    q_lat, q_pe, c, kr = inputs(B, H, Sq, Sk, gen, dtype)
    scale = 0.1352
    out = mla_decode_attention_wide(q_lat, q_pe, c, kr, scale, False, splits=splits,
                                    block_n=16, block_h=block_h, nsplit=nsplit)
    want = latent_attention_reference(q_lat, q_pe, c, kr, scale, False)
    assert out.shape == (B, H, Sq, R) and out.dtype == dtype
    torch.testing.assert_close(out.float(), want.float(), rtol=TOL[dtype], atol=TOL[dtype])


def test_64_row_program_default_split_choice(gen):
    """The GPU's tile (64 rows, 8 warps) with 100 heads: the second group has 28 padded
    rows; the split count comes from choose_wide_splits."""
    B, H, Sk = 2, 100, 40
    q_lat, q_pe, c, kr = inputs(B, H, 1, Sk, gen)
    out = mla_decode_attention_wide(q_lat, q_pe, c, kr, 0.25, False, block_n=16, block_h=64,
                                    num_warps=8, sms=3)
    torch.testing.assert_close(out, latent_attention_reference(q_lat, q_pe, c, kr, 0.25, False),
                               rtol=1e-4, atol=1e-4)


def test_latent_not_a_power_of_two(gen):
    """R = 24 in two 16-column blocks (the second half-masked), Dr = 8 padded to 16."""
    q_lat, q_pe, c, kr = inputs(2, 3, 1, 21, gen, r=24, dr=8)
    for splits in (1, 2):
        out = mla_decode_attention_wide(q_lat, q_pe, c, kr, 0.3, False, splits=splits, block_n=16, nsplit=2)
        torch.testing.assert_close(out, latent_attention_reference(q_lat, q_pe, c, kr, 0.3, False),
                                   rtol=1e-4, atol=1e-4)


def test_strided_inputs_and_out(gen):
    """Latent and rope key as slices of one [B, Sk, R + DR] buffer, q transposed, the
    output written into a transposed buffer (direct and combined)."""
    B, H, Sq, Sk = 2, 3, 2, 21
    kv = rand(B, Sk, R + DR, gen=gen)
    q = rand(B, Sq, H, R + DR, gen=gen).transpose(1, 2)
    want = latent_attention_reference(q[..., :R], q[..., R:], kv[..., :R], kv[..., R:], 0.2, False)
    for splits in (1, 2):
        buf = torch.full((B, Sq, H, R), float("nan"), device=DEVICE)
        out = mla_decode_attention_wide(q[..., :R], q[..., R:], kv[..., :R], kv[..., R:], 0.2, False,
                                        out=buf.transpose(1, 2), splits=splits, block_n=16)
        assert out.data_ptr() == buf.data_ptr()
        torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("splits", [1, 3])
def test_causal_mask_and_empty_rows(splits, gen):
    B, H, Sq, Sk = 2, 2, 3, 20
    q_lat, q_pe, c, kr = inputs(B, H, Sq, Sk, gen)
    mask = torch.zeros(B, 1, Sq, Sk, device=DEVICE)
    mask[0, :, :, 5:] = torch.finfo(torch.float32).min  # padding: eager's finfo.min
    mask[1, :, 1] = float("-inf")                       # a query row that sees nothing
    for causal in (False, True):
        for zero in (False, True):
            out = mla_decode_attention_wide(q_lat, q_pe, c, kr, 0.3, causal, mask=mask,
                                            zero_empty_rows=zero, splits=splits, block_n=16)
            want = latent_attention_reference(q_lat, q_pe, c, kr, 0.3, causal, mask, zero)
            torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4, equal_nan=True)
            assert out[1, :, 1].isnan().all() != zero and torch.isfinite(out[0]).all()


def test_finfo_min_mask_everywhere_is_uniform_not_empty(gen):
    """A row whose every key is masked with finfo.min is a uniform average (eager), not an
    empty row: the mask stays exact in fp32."""
    B, H, Sq, Sk = 1, 2, 1, 18
    q_lat, q_pe, c, kr = inputs(B, H, Sq, Sk, gen)
    mask = torch.full((B, 1, Sq, Sk), torch.finfo(torch.float32).min, device=DEVICE)
    for splits in (1, 2):
        out = mla_decode_attention_wide(q_lat, q_pe, c, kr, 0.3, False, mask=mask, splits=splits, block_n=16)
        want = latent_attention_reference(q_lat, q_pe, c, kr, 0.3, False, mask)
        torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)


def paged_inputs(lens, H, Sq, page, layout, gen):
    """A paged cache (pages in a shuffled order) holding B ragged sequences; the dense
    keys for the reference."""
    from mla_compile.custom_ops import PagedLatentCache
    from mla_compile.lowering.cache_layout import CacheLayout

    B, nblk = len(lens), max(1, -(-max(lens) // page))
    q_lat, q_pe, c, kr = inputs(B, H, Sq, page * nblk, gen)
    cache = PagedLatentCache.allocate(B * nblk, page, R, DR, torch.float32, DEVICE, layout=CacheLayout(layout))
    table = torch.randperm(B * nblk, generator=gen).view(B, nblk).int().to(DEVICE)
    t = torch.arange(page * nblk, device=DEVICE)
    for b in range(B):
        cache.write(c[b], kr[b], table[b, t // page].long() * page + t % page)
    seq = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    return q_lat, q_pe, c, kr, (cache.data, table, seq, page, cache.params)


def items_per_request(lens, H, Sq, page, sms, schedule="balanced"):
    """The launcher's balanced table for these sizes (its Python statement): the item
    count of each request, so a test can check what it covers."""
    from mla_compile.custom_ops.decode_schedule import item_slots, reference_schedule

    Sk, slots, groups = max(1, -(-max(lens) // page)) * page, 2 * sms, -(-H * Sq // 16)
    splits = choose_wide_splits(len(lens), groups, Sk, 16, slots)
    kps = -(-(-(-Sk // splits)) // 16) * 16
    got = reference_schedule(lens, groups, slots, 16, kps // 16, item_slots(len(lens), groups, slots, -(-Sk // kps)))
    return [n for _, n in got["reqs"]]


@pytest.mark.parametrize("page, layout", [(1, "normal"), (16, "normal"), (16, "shuffle"), (64, "normal"),
                                          (64, "shuffle")])
def test_paged_cache_ragged(page, layout, gen):
    """Keys from a paged cache, ragged lengths around the 64-key tile (1, 63, 64, 65),
    both schedules: the balanced one (the default: some requests one item, written
    directly, others several, merged) and the old one, each against the dense reference
    per sequence and against each other."""
    lens, H, sms = [150, 1, 63, 64, 65, 17], 4, 8
    n_items = items_per_request(lens, H, 1, page, sms)
    assert min(n_items) == 1 and max(n_items) >= 3, n_items  # both kinds of request
    q_lat, q_pe, c, kr, paged = paged_inputs(lens, H, 1, page, layout, gen)
    outs = {}
    for schedule in ("balanced", "split"):
        outs[schedule] = mla_decode_attention_wide(q_lat, q_pe, None, None, 0.3, False, block_n=16, sms=sms,
                                                   paged=paged, schedule=schedule)
        for b, n in enumerate(lens):
            want = latent_attention_reference(q_lat[b:b + 1], q_pe[b:b + 1], c[b:b + 1, :n], kr[b:b + 1, :n],
                                              0.3, False)
            torch.testing.assert_close(outs[schedule][b:b + 1], want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(outs["balanced"], outs["split"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("zero", [False, True], ids=["nan-empty", "zero-empty"])
def test_paged_balanced_sinks_mask_causal_and_empty_requests(zero, gen):
    """Today's semantics on the balanced schedule: an additive mask (finfo.min padding, a
    row that sees nothing), causal rows of a two-query chunk, sinks (only a request's
    first item starts from its sink), and a length-0 request (no keys: NaN, or 0 with
    zero_empty_rows; the sink alone gives 0; the old schedule's answers), in one request
    of one item and in requests of several."""
    lens, H, Sq, page, sms = [0, 200, 1, 33], 3, 2, 16, 8
    n_items = items_per_request(lens, H, Sq, page, sms)
    assert n_items[0] == 1 and max(n_items) >= 3, n_items
    q_lat, q_pe, c, kr, paged = paged_inputs(lens, H, Sq, page, "normal", gen)
    Sk = paged[1].shape[1] * page
    mask = torch.zeros(len(lens), 1, Sq, Sk, device=DEVICE)
    mask[1, :, :, 70:] = torch.finfo(torch.float32).min
    mask[3, :, 1] = float("-inf")
    sinks = torch.randn(H, generator=gen).to(DEVICE)
    for causal in (False, True):
        for sk in (None, sinks):
            out = mla_decode_attention_wide(q_lat, q_pe, None, None, 0.3, causal, mask=mask, zero_empty_rows=zero,
                                            block_n=16, sms=sms, paged=paged, sinks=sk)
            old = mla_decode_attention_wide(q_lat, q_pe, None, None, 0.3, causal, mask=mask, zero_empty_rows=zero,
                                            block_n=16, sms=sms, paged=paged, sinks=sk, schedule="split")
            for b, n in enumerate(lens[1:], 1):
                want = latent_attention_reference(q_lat[b:b + 1], q_pe[b:b + 1], c[b:b + 1, :n], kr[b:b + 1, :n],
                                                  0.3, causal, mask[b:b + 1, ..., :n], zero, sk)
                torch.testing.assert_close(out[b:b + 1], want, rtol=1e-4, atol=1e-4, equal_nan=True)
            torch.testing.assert_close(out, old, rtol=1e-5, atol=1e-5, equal_nan=True)
            # no key: the kernels' empty row (0 / 0, or 0), as the old schedule (the
            # reference's matmul over an empty key axis gives 0 either way)
            assert out[0].isnan().all() if sk is None and not zero else (out[0] == 0).all()


def test_balanced_needs_pages():
    q_lat, q_pe, c, kr = inputs(1, 2, 1, 8, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="schedule='balanced'"):
        mla_decode_attention_wide(q_lat, q_pe, c, kr, 0.3, False, schedule="balanced")


def test_split_choice():
    # B = 1 long context: many splits, one program per SM
    assert choose_wide_splits(1, 1, 32768, 64, 132) == 128
    assert choose_wide_splits(1, 2, 32768, 64, 132) == 64
    # the batch fills the GPU: one split (direct output)
    assert choose_wide_splits(128, 2, 4096, 64, 132) == 1
    assert choose_wide_splits(1, 1, 100, 64, 132) == 1      # short context: one
    # B = 32, one group: 4 splits = 128 programs in one wave
    assert choose_wide_splits(32, 1, 4096, 64, 132) == 4
    assert choose_wide_splits(32, 1, 4096, 64, 264) == 8   # 16-row programs: two per SM


def test_gluon_program_rule():
    """Which Gluon program runs by default (measured on an H200): the seesaw from 4096
    rows, or from 1024 where a request has 128 rows (heads x queries); the pipelined one
    below; a name overrides; an unknown name is an error."""
    from mla_compile.custom_ops import gluon_decode, gluon_decode_pipelined, gluon_decode_seesaw
    from mla_compile.custom_ops.gluon_programs import choose_program as choose

    if gluon_decode.gluon is None:
        pytest.skip("this Triton has no Gluon")
    seesaw, pipelined = gluon_decode_seesaw.gluon_split_seesaw, gluon_decode_pipelined.gluon_split_pipelined
    assert [choose(None, rows, 64)[0] for rows in (64, 2048, 4096)] == [pipelined, pipelined, seesaw]
    assert [choose(None, rows, 128)[0] for rows in (128, 512, 1024)] == [pipelined, pipelined, seesaw]
    assert choose("split", 4096) == (gluon_decode.gluon_split, gluon_decode.WARPS)
    with pytest.raises(ValueError, match="gluon_program='fast'"):
        choose("fast", 4096)


def test_rows_per_program_rule():
    from mla_compile.custom_ops.triton_decode_wide import wide_rows_per_program as rule

    assert [rule(8, True), rule(16, True), rule(20, True), rule(32, True), rule(40, True)] == [16, 16, 32, 32, 64]
    assert [rule(64, True), rule(128, True), rule(128, False)] == [64, 64, 16]


@pytest.mark.parametrize("B, H, splits", [(1, 3, 40), (130, 4, 3)], ids=["few-rows", "many-rows"])
def test_both_combine_shapes(B, H, splits, gen):
    """The combine's two program shapes: one row x 32 splits at a time (B = 1, many
    splits), 4 rows x all columns split by split (>= 512 rows)."""
    Sk = 16 * splits
    q_lat, q_pe, c, kr = inputs(B, H, 1, Sk, gen)
    out = mla_decode_attention_wide(q_lat, q_pe, c, kr, 0.3, False, splits=splits, block_n=16)
    torch.testing.assert_close(out, latent_attention_reference(q_lat, q_pe, c, kr, 0.3, False),
                               rtol=1e-4, atol=1e-4)


def test_launcher_traces_on_fake_tensors(monkeypatch):
    """The launcher needs no real data: under FakeTensorMode (kernel launches recorded,
    not run) it returns a fake output, one launch with one split, two with partials."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    from mla_compile.custom_ops import decode_combine

    calls = []
    for module in (triton_decode_wide, decode_combine):
        monkeypatch.setattr(module, "launch", lambda kernel, grid, *a, **k: calls.append((kernel, grid)))
    with FakeTensorMode():
        B, H, L = 2, 128, 4096
        q = torch.empty(B, H, 1, 576, dtype=torch.bfloat16)
        kv = torch.empty(B, L, 576, dtype=torch.bfloat16)
        for splits, grids in ((4, [(8, 4, 2), (256, 8)]), (1, [(8, 1, 2)])):
            calls.clear()
            out = mla_decode_attention_wide(q[..., :512], q[..., 512:], kv[..., :512], kv[..., 512:], 0.1, False,
                                            splits=splits)
            assert isinstance(out, FakeTensor) and out.shape == (B, H, 1, 512)
            assert [g for _, g in calls] == grids


def test_paged_balanced_launches_on_fake_tensors(monkeypatch):
    """The balanced launcher needs no data on the host (no sync: capturable): under
    FakeTensorMode it launches the metadata program (one program), the split program
    over (row groups, item slots from size hints) and the combine; the old schedule
    launches (row groups, splits, B)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from mla_compile.custom_ops import decode_combine, decode_schedule
    from mla_compile.custom_ops.decode_schedule import item_slots

    calls = []
    for module in (triton_decode_wide, decode_combine, decode_schedule):
        monkeypatch.setattr(module, "launch", lambda kernel, grid, *a, **k: calls.append((kernel.__name__, grid)))
    with FakeTensorMode():
        B, H, page, nblk = 32, 128, 64, 64
        q = torch.empty(B, H, 1, 576, dtype=torch.bfloat16)
        cache = torch.empty(B * nblk, page * 576, dtype=torch.bfloat16)
        table = torch.empty(B, nblk, dtype=torch.int32)
        seq = torch.empty(B, dtype=torch.int32)
        paged = (cache, table, seq, page, (1, 576))
        for schedule in ("balanced", "split"):
            calls.clear()
            out = mla_decode_attention_wide(q[..., :512], q[..., 512:], None, None, 0.1, False, paged=paged,
                                            block_h=64, block_n=64, sms=132, schedule=schedule)
            assert out.shape == (B, H, 1, 512)
            splits = choose_wide_splits(B, 2, nblk * page, 64, 132)
            if schedule == "balanced":
                assert calls[:2] == [("_schedule", (1,)), ("_wide_split", (2, item_slots(B, 2, 132, splits)))]
                assert calls[2][0] == "_wide_combine" and len(calls) == 3
            else:
                assert calls[0] == ("_wide_split", (2, splits, B)) and len(calls) == 1 + (splits > 1)



def test_default_schedule_rule(monkeypatch):
    """The schedule by default (H200, RESULTS.md): balanced for paged batches of 2 or
    more, split at batch 1 and for contiguous keys; under the seesaw program balanced
    from SEESAW_BALANCED_FROM programs of one split (B x row groups)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from mla_compile.custom_ops import decode_combine, decode_schedule, gluon_decode, gluon_programs

    kernels = []
    for module in (triton_decode_wide, decode_combine, decode_schedule):
        monkeypatch.setattr(module, "launch", lambda kernel, grid, *a, **k: kernels.append(kernel.__name__))

    def balanced(B, paged=True, program=None):
        kernels.clear()
        with FakeTensorMode():
            q = torch.empty(B, 128, 1, 576, dtype=torch.bfloat16)
            cache = torch.empty(B * 64, 64 * 576, dtype=torch.bfloat16)
            pages = (cache, torch.empty(B, 64, dtype=torch.int32), torch.empty(B, dtype=torch.int32), 64, (1, 576))
            kv = torch.empty(B, 4096, 576, dtype=torch.bfloat16)
            mla_decode_attention_wide(q[..., :512], q[..., 512:], None if paged else kv[..., :512],
                                      None if paged else kv[..., 512:], 0.1, False, paged=pages if paged else None,
                                      block_h=64, block_n=64, sms=132, gluon_program=program)
        return "_schedule" in kernels

    assert balanced(2) and balanced(32)
    assert not balanced(1) and not balanced(32, paged=False)
    if gluon_decode.gluon is not None:  # the Gluon programs' choice, on a pretend sm_90
        monkeypatch.setattr(gluon_decode, "applies", lambda *a: True)
        monkeypatch.setattr(triton_decode_wide, "is_traced", lambda t: False)  # as on real tensors
        assert triton_decode_wide.SEESAW_BALANCED_FROM == 64  # 128 heads: two row groups per request
        assert balanced(16, program="pipelined") and not balanced(16, program="seesaw")
        assert balanced(32, program="seesaw")
        assert gluon_programs.program_name(None, 16 * 128, 128) == "seesaw"
        assert not balanced(16) and balanced(32)

def test_gluon_route_traces_to_one_op_call(monkeypatch, gen):
    """Where the Gluon program applies and the graph runs under CUDA graphs, the traced
    launcher (a compiled graph's) calls mla.wide_decode_gluon instead of launching
    (Inductor cannot launch Gluon): the functionalized trace holds that one call and no
    kernel launch, and running it gives the launcher's numbers (here the op runs the
    Triton program: no sm_90 on CPU). Without CUDA graphs it launches the Triton program."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    from mla_compile.custom_ops import gluon_decode
    from mla_compile.custom_ops.launch import is_traced

    monkeypatch.setattr(gluon_decode, "applies", lambda q_lat, *a: is_traced(q_lat))
    B, H, Sk = 2, 3, 40
    q_lat, q_pe, c, kr = inputs(B, H, 1, Sk, gen)
    mask = torch.zeros(B, 1, 1, Sk, device=DEVICE).masked_fill(torch.rand(B, 1, 1, Sk, generator=gen) < 0.3,
                                                                float("-inf"))

    def run(q_lat, q_pe, c, kr, mask):
        return mla_decode_attention_wide(q_lat, q_pe, c, kr, 0.3, False, mask=mask, block_n=64)

    with torch._inductor.config.patch({"triton.cudagraphs": True}):
        gm = make_fx(torch.func.functionalize(run, remove="mutations"), tracing_mode="fake")(
            q_lat, q_pe, c, kr, mask)
    targets = [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]
    assert not any("triton_kernel_wrapper" in t for t in targets), targets
    assert targets.count("mla.wide_decode_gluon.default") == 1, targets
    want = latent_attention_reference(q_lat, q_pe, c, kr, 0.3, False, mask)
    torch.testing.assert_close(gm(q_lat, q_pe, c, kr, mask), want, rtol=1e-4, atol=1e-4)

    from mla_compile.custom_ops import decode_combine

    launched = []
    for module in (triton_decode_wide, decode_combine):
        monkeypatch.setattr(module, "launch", lambda kernel, grid, *a, **k: launched.append(kernel))
    with FakeTensorMode() as mode, torch._inductor.config.patch({"triton.cudagraphs": False}):
        out = run(*(mode.from_tensor(t) for t in (q_lat, q_pe, c, kr, mask)))
    assert out.shape == want.shape and triton_decode_wide._wide_split in launched, launched


def test_gluon_op_registration(gen):
    """torch.library.opcheck of mla.wide_decode_gluon (schema, fake, dispatch) on
    contiguous and paged keys."""
    from mla_compile.custom_ops import PagedLatentCache

    B, H, Sk, page = 2, 3, 32, 16
    q_lat, q_pe, c, kr = inputs(B, H, 1, Sk, gen)
    torch.library.opcheck(torch.ops.mla.wide_decode_gluon,
                          (q_lat, q_pe, c, kr, None, None, None, None, None, 0.3, False, False, 0, 0, 0, 16))
    cache = PagedLatentCache.allocate(B * 2, page, R, DR, torch.float32, DEVICE)
    table = torch.arange(B * 2, dtype=torch.int32, device=DEVICE).view(B, 2)
    seq = torch.tensor([Sk, 20], dtype=torch.int32, device=DEVICE)
    tt, vec = cache.params
    torch.library.opcheck(torch.ops.mla.wide_decode_gluon,
                          (q_lat, q_pe, None, None, None, cache.data, table, seq, None, 0.3, False, True,
                           page, tt, vec, 16))
