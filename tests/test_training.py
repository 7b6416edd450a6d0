"""Training graphs: the joint forward/backward graph is rewritten only where the
forward value is replaced by an equal one; gradients stay eager's."""
import torch
from torch import nn


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RopeBlock(nn.Module):
    def __init__(self, hidden=32, heads=4, d=16):
        super().__init__()
        self.heads, self.d = heads, d
        self.q = nn.Linear(hidden, heads * d)
        self.k = nn.Linear(hidden, d)

    def forward(self, x, cos, sin):
        b, s, _ = x.shape
        q = self.q(x).view(b, s, self.heads, self.d).transpose(1, 2)
        k = self.k(x).view(b, 1, s, self.d)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        return (q * k).sum(-1).pow(2).mean()


def grads(model, x, *args):
    model.zero_grad()
    x.grad = None
    loss = model(x, *args)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()] + [x.grad.clone()]


def test_forward_and_backward_equal_eager():
    torch.manual_seed(0)
    model = RopeBlock()
    x = torch.randn(2, 8, 32, requires_grad=True)
    cos, sin = torch.randn(8, 16), torch.randn(8, 16)
    reports = []
    compiled = torch.compile(model, backend="mla", options={"report": reports.append})
    loss, got = grads(compiled, x, cos, sin)
    expected_loss, expected = grads(model, x, cos, sin)
    torch.testing.assert_close(loss, expected_loss)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)
    assert reports[0].counts() == {"rope.neox": 2, "rope.one_launch": 1}
