"""Where the Triton kernel tests run: CPU tensors when Triton interprets (CI), a
CUDA device when it compiles (the GPU machine, TRITON_INTERPRET=0), else nowhere."""
from __future__ import annotations

import os

import torch


def kernel_test_device(jit_function) -> torch.device | None:
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover - the interpreter needs numpy
        InterpretedFunction = ()
    if InterpretedFunction and isinstance(jit_function, InterpretedFunction):
        return torch.device("cpu")
    if os.environ.get("TRITON_INTERPRET") != "1" and torch.cuda.is_available():
        return torch.device("cuda")
    return None
