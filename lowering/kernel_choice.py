"""Which kernel backend runs an op: decided here and nowhere else."""
from __future__ import annotations

import os

import torch

from ..custom_ops.backend import KernelBackend
from ..custom_ops.reference import ReferenceBackend
from ..custom_ops.triton_backend import TritonBackend

KERNEL_CHOICES = ("auto", "triton", "reference")


def select_backend(device: torch.device, kernel: str) -> type[KernelBackend]:
    """`auto`: Triton where it can run (CUDA, or CPU with TRITON_INTERPRET=1),
    else the PyTorch reference. `triton` insists; `reference` forces PyTorch."""
    if kernel == "reference":
        return ReferenceBackend
    if kernel == "triton":
        if not TritonBackend.supports(device):
            raise RuntimeError(
                f"kernel='triton' cannot run on {device}: Triton needs a CUDA device, "
                "or TRITON_INTERPRET=1 set before triton is imported for CPU tensors"
            )
        return TritonBackend
    if kernel == "auto":
        return TritonBackend if TritonBackend.supports(device) else ReferenceBackend
    raise ValueError(f"kernel must be one of {KERNEL_CHOICES}, got {kernel!r}")


def inductor_launches(device: torch.device, kernel: str) -> bool:
    """Whether an op's kernels are launched by Inductor's generated code inside a
    compiled graph (passes/inline_launches.py): compiled Triton on CUDA. The
    interpreter and the reference stay behind the op call."""
    return (device.type == "cuda" and kernel in ("auto", "triton") and TritonBackend.supports(device)
            and os.environ.get("TRITON_INTERPRET") != "1")
