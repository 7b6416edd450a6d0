"""Head padding per tensor-parallel rank (seed 002: 8 heads per rank, the kernel padded q
to 16 rows and the metadata was sized for 8). A rank runs the decode kernel with H/TP
heads; `TritonBackend.decode_rows_per_program` is the one place that decides the rows a
program computes (the padding). Checked at the kernel launch: its tile and grid come
from that answer, every buffer from the real head count, and the output over the paged
latent cache equals the PyTorch reference for H/TP in {1, 2, 4, 8, 16, 20}.

Runs under Triton's interpreter on CPU (tests/conftest.py), or compiled on a GPU.
"""
import inspect
import os
import zlib

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

triton = pytest.importorskip("triton")

from kernel_device import kernel_test_device  # noqa: E402
from mla_compile.custom_ops import PagedLatentCache, triton_decode  # noqa: E402
from mla_compile.custom_ops.triton_backend import TritonBackend  # noqa: E402

DEVICE = kernel_test_device(triton_decode._decode_split)
pytestmark = pytest.mark.skipif(DEVICE is None, reason="needs TRITON_INTERPRET=1 (CPU) or a CUDA device")
R, DR, DN, DV = 32, 16, 16, 16
HEADS_PER_RANK = [1, 2, 4, 8, 16, 20]  # 128 heads at TP8: 16; 64 (Kimi-K2.5) at TP8: 8; 20: not a power of 2
_RULE = TritonBackend.decode_rows_per_program  # the real rule, bound to the class


class LaunchSpy:
    """Stands in for the jitted kernel: records each launch's grid and arguments, then runs it."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append((grid, args, kwargs))
            return self.kernel[grid](*args, **kwargs)
        return launch


@pytest.fixture
def spies(monkeypatch):
    """The decode launch and the padding rule, both recorded; `answer(rows, batch)` is what
    the rule gives (the GPU's answer by default, so the interpreter runs the GPU's tiles)."""
    kernel = LaunchSpy(triton_decode._decode_split)
    calls = []
    state = {"answer": lambda rows, batch: _RULE(rows, True, batch)}

    def rule(cls, rows, on_gpu, batch=1, wide=False, itemsize=2):
        assert not wide, "the interpreter runs the split kernel"
        calls.append((rows, batch))
        return state["answer"](rows, batch)

    monkeypatch.setattr(triton_decode, "_decode_split", kernel)
    monkeypatch.setattr(TritonBackend, "decode_rows_per_program", classmethod(rule))
    return kernel, calls, state


def paged_case(H, seed, B=2, lens=(9, 5), block=4):
    """A paged latent cache (the same on every rank under TP) and one rank's H heads."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(DEVICE)

    cache = PagedLatentCache.allocate(8, block, R, DR, torch.float32, DEVICE)
    table = torch.randperm(8, generator=gen)[:B * 3].view(B, 3).to(DEVICE, torch.int32)
    for b, n in enumerate(lens):
        t = torch.arange(n, device=DEVICE)
        cache.write(rand(n, R), rand(n, DR), table[b, t // block].long() * block + t % block)
    w = rand(H, DN + DV, R, scale=R ** -0.5)
    args = (rand(B, H, 1, DN), rand(B, H, 1, DR), w[:, :DN], w[:, DN:], 0.1352, table,
            torch.tensor(lens, device=DEVICE, dtype=torch.int32))
    return cache, args


def check_launch(kernel, calls, H, B, Sq, rows_per_program):
    """One launch; its tile and grid from the rule's one answer for the real rows; the
    kernel told the real head count; the fp32 partials and log-sum-exps sized for the real
    heads, never the padded rows."""
    assert calls == [(Sq * H, B)], calls  # asked once, with the rank's real rows
    assert len(kernel.launches) == 1
    grid, args, kwargs = kernel.launches[0]
    named = dict(zip(inspect.signature(kernel.kernel.fn).parameters, args))
    assert kwargs["BLOCK_H"] == rows_per_program
    groups, batch, splits = grid
    assert (groups, batch) == (triton.cdiv(Sq * H, rows_per_program), B)
    assert (named["H"], named["Sq"]) == (H, Sq)
    rows = B * H * Sq * splits
    assert named["OP"].shape == (rows, R) and named["LSE"].shape == (rows,)


@pytest.mark.parametrize("H", HEADS_PER_RANK)
def test_rank_heads_padded_by_the_one_rule(H, spies):
    kernel, calls, _ = spies
    cache, args = paged_case(H, zlib.crc32(f"heads{H}".encode()))
    out = cache.attend(*args, kernel="triton")
    B = args[0].shape[0]
    rows = _RULE(H, True, B)
    assert rows >= 16 and rows % 16 == 0  # tl.dot's smallest tile
    check_launch(kernel, calls, H, B, 1, rows)
    assert out.shape == (B, H, 1, DV)
    want = cache.attend(*args, kernel="reference")
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rows", [16, 32, 64])
def test_eight_heads_per_rank_any_padding(rows, spies):
    """Seed 002's case, 8 heads per rank, with the rule made to pad to 16, 32 or 64 rows
    (8, 24 or 56 padded rows): only the rule's answer moves the tile; buffers and output
    keep 8 heads and the numbers stay the reference's. A buffer sized from any other
    count would read or write out of bounds, or mix the heads."""
    kernel, calls, state = spies
    state["answer"] = lambda _rows, _batch: rows
    cache, args = paged_case(8, 2002)
    out = cache.attend(*args, kernel="triton")
    check_launch(kernel, calls, 8, 2, 1, rows)
    assert out.shape == (2, 8, 1, DV)
    torch.testing.assert_close(out, cache.attend(*args, kernel="reference"), rtol=1e-4, atol=1e-4)
