"""Attention the reader cannot read is never left alone silently (issue 17): a softmax
whose result reaches a bmm, not rewritten, is a near miss with a reason, and
strict=True raises for it. And no noise: a bmm no softmax reaches, or a softmax
behind another matmul, is not attention and gets no near miss."""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from attention_models import HFMLA, AttnSize  # noqa: E402

from mla_compile.report import LeftAloneError  # noqa: E402

SIZE = AttnSize(B=2, S=7, H=2)
ATTN = "attention.mla"


class GatedProbsAttention(HFMLA):
    """The probabilities multiplied by a learned per-head gate before P @ V: no longer
    softmax(q k^T) v, so not what the fused op computes."""

    expected_matches = 0

    def __init__(self, size: AttnSize, dtype: torch.dtype, seed: int = 0, **kw):
        super().__init__(size, dtype, seed, **kw)
        self.gate = torch.nn.Parameter(torch.rand(size.H, generator=self.gen).to(dtype) + 0.5)

    def _probs(self, scores, dtype):
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(dtype)
        return probs * self.gate.view(1, -1, 1, 1)


def _compile(model, options):
    reports = []
    compiled = torch.compile(model, backend="mla", options={"report": reports.append, **options})
    inputs = model.example_inputs(seed=3)
    with torch.no_grad():
        out, ref = compiled(*inputs), model(*inputs)
    return out, ref, reports


def _attention_misses(reports):
    return [n.reason for r in reports for n in r.near_misses if n.pattern == ATTN]


# (model, dtype, a substring of the reason)
QUIET_BEFORE = {
    "gated_probs": (GatedProbsAttention, torch.float32, "through aten.mul.Tensor"),
}


@pytest.mark.parametrize("name", QUIET_BEFORE)
def test_unread_attention_is_a_near_miss(name):
    cls, dtype, because = QUIET_BEFORE[name]
    model = cls(SIZE, dtype)
    out, ref, reports = _compile(model, {})
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.float(), ref.float(), rtol=tol, atol=tol * ref.float().abs().max().item())
    assert all(ATTN not in r.counts() for r in reports), [r.format() for r in reports]
    reasons = _attention_misses(reports)
    assert any(because in r for r in reasons), reasons


@pytest.mark.parametrize("name", QUIET_BEFORE)
def test_strict_raises_for_unread_attention(name):
    cls, dtype, because = QUIET_BEFORE[name]
    model = cls(SIZE, dtype)
    with pytest.raises(torch._dynamo.exc.BackendCompilerFailed, match=because) as err, torch.no_grad():
        torch.compile(model, backend="mla", options={"strict": True})(*model.example_inputs(seed=3))
    assert isinstance(err.value.inner_exception, LeftAloneError)


class _BmmNoSoftmax(torch.nn.Module):
    """A batched matmul with no softmax anywhere before it."""

    def forward(self, a, b):
        return torch.bmm(torch.relu(a), b.transpose(1, 2)) * 2


class _SoftmaxBehindMatmul(torch.nn.Module):
    """A router-style softmax whose result reaches a bmm only through another matmul
    (a mixture-of-experts gate feeding an expert GEMM): not this bmm's attention."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 8, bias=False)

    def forward(self, a, b):
        weights = torch.softmax(a, dim=-1)
        return torch.bmm(self.proj(weights), b.transpose(1, 2))


class _RouterWeightedInput(torch.nn.Module):
    """A router's top-k softmax weight scales a bmm's input (as a mixture-of-experts
    router's weights reach the next layer through the residual stream): the top-k
    selection stands between, so this is not attention probabilities."""

    def forward(self, a, b):
        top = torch.softmax(a.sum(-1), dim=-1).topk(2, dim=-1).values  # [B, 2]
        return torch.bmm(a * top[:, :1, None], b.transpose(1, 2))


@pytest.mark.parametrize("cls", [_BmmNoSoftmax, _SoftmaxBehindMatmul, _RouterWeightedInput])
def test_no_near_miss_where_no_attention(cls):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 5, 8, generator=g), torch.randn(3, 4, 8, generator=g)
    model = cls()
    reports = []
    with torch.no_grad():
        out = torch.compile(model, backend="mla", options={"report": reports.append, "strict": True})(a, b)
        torch.testing.assert_close(out, model(a, b))
    assert len(reports) == 1 and reports[0].near_misses == [], reports[0].format()


def test_training_graph_without_attention_has_no_near_miss():
    """A joint graph with a bmm and no softmax: nothing looks like attention, so no
    'training graph' near miss (only graphs with attention get one)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 5, 8, generator=g, requires_grad=True)
    b = torch.randn(3, 4, 8, generator=g)
    reports = []
    out = torch.compile(_BmmNoSoftmax(), backend="mla", options={"report": reports.append})(a, b)
    out.sum().backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()
    assert len(reports) == 1 and reports[0].near_misses == [], reports[0].format()
