"""The split-KV Triton kernel of the absorbed form (custom_ops/triton_decode.py)
against a plain PyTorch statement of its math.

On CPU it runs under Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1);
with TRITON_INTERPRET=0 and a CUDA device the same tests run compiled. Sizes are tiny.
"""
import os
import zlib

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

triton = pytest.importorskip("triton")

from kernel_device import kernel_test_device  # noqa: E402
from mla_compile.custom_ops import triton_decode  # noqa: E402
from mla_compile.custom_ops.triton_decode import choose_splits, mla_decode_attention  # noqa: E402

DEVICE = kernel_test_device(triton_decode._decode_split)
pytestmark = pytest.mark.skipif(DEVICE is None, reason="needs TRITON_INTERPRET=1 (CPU) or a CUDA device")
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
R, DR = 32, 16


@pytest.fixture
def gen(request):
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


def rand(*shape, gen, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, generator=gen) * scale).to(DEVICE, dtype)


def reference(q_lat, q_pe, c, kr, scale, causal, mask=None, zero_empty_rows=False):
    s = (q_lat.float() @ c.float()[:, None].transpose(-1, -2)
         + q_pe.float() @ kr.float()[:, None].transpose(-1, -2)) * scale
    if mask is not None:
        s = s + mask.float()
    if causal:
        keep = torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).tril()
        s = s.masked_fill(~keep, float("-inf"))
    p = s.softmax(-1)
    if zero_empty_rows:
        p = p.masked_fill((s == float("-inf")).all(-1, keepdim=True), 0.0)
    return (p @ c.float()[:, None]).to(q_lat.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("B, H, Sq, Sk, splits", [
    (1, 1, 1, 1, 1),      # one key
    (2, 5, 1, 37, 3),     # ragged last split, heads not a multiple of the 16-row block
    (1, 20, 1, 50, 4),    # two row groups (head padding inside the kernel)
    (3, 2, 3, 19, 2),     # a short chunk of queries
    (1, 16, 1, 40, 40),   # more splits than key blocks: empty splits
])
def test_matches_reference(B, H, Sq, Sk, splits, dtype, gen):
    q_lat, q_pe = rand(B, H, Sq, R, gen=gen, dtype=dtype), rand(B, H, Sq, DR, gen=gen, dtype=dtype)
    c, kr = rand(B, Sk, R, gen=gen, dtype=dtype), rand(B, Sk, DR, gen=gen, dtype=dtype)
    scale = 0.1352  # the graph's (mscale folded), never derived from R + DR (seed 000)
    out = mla_decode_attention(q_lat, q_pe, c, kr, scale, False, splits=splits, block_n=16)
    torch.testing.assert_close(out.float(), reference(q_lat, q_pe, c, kr, scale, False).float(),
                               rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("H", [1, 2, 4, 8, 16, 20, 32, 40, 64, 128])
def test_head_counts_padding_never_reaches_output(H, gen):
    """Rows are padded to the backend's rows per program inside the kernel only: every
    head count gives the reference's numbers, and the output has exactly H heads."""
    from mla_compile.custom_ops.triton_backend import TritonBackend

    rows = TritonBackend.decode_rows_per_program(H, DEVICE.type == "cuda")
    assert rows >= 16 and rows % 16 == 0
    B, Sk = 2, 21
    q_lat, q_pe = rand(B, H, 1, R, gen=gen), rand(B, H, 1, DR, gen=gen)
    c, kr = rand(B, Sk, R, gen=gen), rand(B, Sk, DR, gen=gen)
    out = mla_decode_attention(q_lat, q_pe, c, kr, 0.25, False, splits=2, block_n=16)
    assert out.shape == (B, H, 1, R)
    torch.testing.assert_close(out, reference(q_lat, q_pe, c, kr, 0.25, False), rtol=1e-4, atol=1e-4)


def test_rows_per_program_rule():
    from mla_compile.custom_ops.triton_backend import TritonBackend

    rule = TritonBackend.decode_rows_per_program
    assert [rule(8, True, 32), rule(20, True, 32), rule(128, True, 1), rule(128, True, 16)] == [16, 32, 32, 64]
    assert rule(128, False, 64) == 16  # the interpreter: smallest tile


@pytest.mark.parametrize("H", [64, 100])
def test_64_row_programs(H, gen):
    """The tile large batches get at H >= 64 (64 rows, 8 warps), forced here: 100 heads
    leave the second program's last 28 rows padded."""
    B, Sk = 2, 21
    q_lat, q_pe = rand(B, H, 1, R, gen=gen), rand(B, H, 1, DR, gen=gen)
    c, kr = rand(B, Sk, R, gen=gen), rand(B, Sk, DR, gen=gen)
    out = mla_decode_attention(q_lat, q_pe, c, kr, 0.25, False, splits=2, block_n=16, block_h=64, num_warps=8)
    assert out.shape == (B, H, 1, R)
    torch.testing.assert_close(out, reference(q_lat, q_pe, c, kr, 0.25, False), rtol=1e-4, atol=1e-4)


def test_strided_inputs_and_out(gen):
    """Latent and rope key as slices of one [B, Sk, R + DR] buffer (a kv_a projection),
    q transposed, output written into a transposed buffer."""
    B, H, Sq, Sk = 2, 3, 2, 21
    kv = rand(B, Sk, R + DR, gen=gen)
    q = rand(B, Sq, H, R + DR, gen=gen).transpose(1, 2)
    buf = torch.empty(B, Sq, H, R, device=DEVICE)
    out = mla_decode_attention(q[..., :R], q[..., R:], kv[..., :R], kv[..., R:], 0.2, False,
                               out=buf.transpose(1, 2), splits=2, block_n=16)
    assert out.data_ptr() == buf.data_ptr()
    want = reference(q[..., :R], q[..., R:], kv[..., :R], kv[..., R:], 0.2, False)
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)


def test_causal_mask_and_empty_rows(gen):
    B, H, Sq, Sk = 2, 2, 3, 20
    q_lat, q_pe = rand(B, H, Sq, R, gen=gen), rand(B, H, Sq, DR, gen=gen)
    c, kr = rand(B, Sk, R, gen=gen), rand(B, Sk, DR, gen=gen)
    mask = torch.zeros(B, 1, Sq, Sk, device=DEVICE)
    mask[0, :, :, 5:] = torch.finfo(torch.float32).min  # padding: eager's finfo.min
    mask[1, :, 1] = float("-inf")                       # a query row that sees nothing
    for causal in (False, True):
        for zero in (False, True):
            out = mla_decode_attention(q_lat, q_pe, c, kr, 0.3, causal, mask=mask,
                                       zero_empty_rows=zero, splits=3, block_n=16)
            want = reference(q_lat, q_pe, c, kr, 0.3, causal, mask, zero)
            torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4, equal_nan=True)
            assert out[1, :, 1].isnan().all() != zero and torch.isfinite(out[0]).all()


def test_split_choice():
    assert choose_splits(1, 1, 32768, 64, 264) == 128      # B=1 long context: many splits
    assert choose_splits(128, 1, 4096, 64, 264) == 2       # large batch: few
    assert choose_splits(1, 1, 100, 64, 264) == 1          # short context: one
