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



def test_joint_graph_found_by_structure_not_names(monkeypatch):
    """The joint graph is recognised from the roles AOT gives its nodes: with every
    input renamed while the mla passes run (no tangents_* or primals_* left), attention
    is still left alone in training, with the reason, and the gradients are eager's;
    inference still fuses. (The names are put back afterwards: torch's partitioner
    itself finds the tangents by name.)"""
    import os
    import sys

    from mla_compile import pass_manager
    from mla_compile.compat import is_joint_graph
    from mla_compile.passes import GraphPass

    sys.path.insert(0, os.path.dirname(__file__))
    from attention_models import SHAPES, AttnSize

    seen, names = [], {}

    def rename(graph, options, record):
        for i, node in enumerate(n for n in graph.nodes if n.op == "placeholder"):
            names[node] = (node.name, node.target)
            node.name = node.target = f"input_{i}"
        assert not any(n.name.startswith(("tangents", "primals")) for n in graph.nodes)
        seen.append(is_joint_graph(graph))

    def restore(graph, options, record):
        for node, (name, target) in names.items():
            node.name, node.target = name, target
        names.clear()

    monkeypatch.setattr(pass_manager, "PIPELINE", (GraphPass("rename", "rope", rename), *pass_manager.PIPELINE,
                                                   GraphPass("restore", "rope", restore)))
    model = next(s for s in SHAPES if s.name == "hf_v3").build(AttnSize(B=2, S=7, H=2), torch.float32)
    x, *rest = model.example_inputs(seed=6)
    reports = []
    compiled = torch.compile(model, backend="mla", options={"report": reports.append})
    grads = []
    for fn in (model, compiled):
        model.zero_grad()
        xi = x.clone().requires_grad_(True)
        fn(xi, *rest).square().mean().backward()
        grads.append([xi.grad.clone()] + [p.grad.clone() for p in model.parameters()])
    for g_eager, g_compiled in zip(*grads):
        torch.testing.assert_close(g_compiled, g_eager, rtol=1e-4, atol=1e-5)
    assert seen == [True] and len(reports) == 1, seen
    assert "attention.mla" not in reports[0].counts(), reports[0].format()
    assert any("training" in n.reason for n in reports[0].near_misses), reports[0].format()

    torch._dynamo.reset()
    with torch.no_grad():  # the same renaming in an inference graph: not joint, fused
        reports.clear()
        torch.compile(model, backend="mla", options={"report": reports.append})(x, *rest)
    assert seen == [True, False] and reports[0].counts().get("attention.mla") == 1, reports[0].format()
