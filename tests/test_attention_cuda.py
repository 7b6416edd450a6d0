"""On a CUDA device, SDPA is a fused op at the pass (flash / efficient / cudnn, not
the CPU math decomposition): every attention code shape and transformers' DeepSeek
V2/V3 are still fused and equal eager. CI has no GPU; the GPU machine runs this
with TRITON_INTERPRET=0."""
import os
import sys

import pytest
import torch

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
    reason="needs a CUDA device and compiled (not interpreted) Triton: TRITON_INTERPRET=0")

sys.path.insert(0, os.path.dirname(__file__))
from attention_models import SHAPES, AttnSize  # noqa: E402

SIZE = AttnSize(B=2, S=29, H=4, nope=128, rope=64, v=128, latent=512)  # S <= the RoPE cache (32)


def _cuda(inputs):
    return tuple(t.cuda() if isinstance(t, torch.Tensor) else t for t in inputs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("shape", SHAPES, ids=[s.name for s in SHAPES])
def test_shape_on_cuda(shape, dtype):
    torch._dynamo.reset()
    model = shape.build(SIZE, dtype).cuda()
    inputs = _cuda(model.example_inputs(seed=7))
    reports = []
    with torch.no_grad():
        out = torch.compile(model, backend="mla", options={"report": reports.append})(*inputs)
        ref = model(*inputs)
    counts = {}
    for r in reports:
        counts.update(r.counts())
    assert counts.get("attention.mla", 0) == model.expected_matches, [r.format() for r in reports]
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-3  # fp32 eager matmuls use TF32-free cuBLAS
    scale = ref.float().abs().max().item()
    torch.testing.assert_close(out.float(), ref.float(), rtol=tol, atol=tol * max(1.0, scale))


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("family", ["v3", "v2"])
def test_transformers_on_cuda(family, impl):
    pytest.importorskip("transformers")
    from test_transformers_rope import TINY, build

    torch._dynamo.reset()
    model = build(family, impl).cuda().to(torch.bfloat16)
    ids = torch.randint(0, 128, (2, 33), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    reports = []
    with torch.no_grad():
        expected = model(ids, use_cache=False).logits
        actual = torch.compile(model, backend="mla", options={"report": reports.append})(ids, use_cache=False).logits
    assert reports[0].counts().get("attention.mla") == TINY["num_hidden_layers"], reports[0].format()
    scale = expected.float().abs().max().item()
    torch.testing.assert_close(actual.float(), expected.float(), rtol=2e-2, atol=2e-2 * scale)
