"""Fused ops in namespace `mla` (`torch.ops.mla.*`); importing registers them."""
from . import rope  # noqa: F401  (registers torch.ops.mla.rope)
from .backend import KernelBackend
from .reference import ReferenceBackend, rope_reference

__all__ = ["KernelBackend", "ReferenceBackend", "rope_reference"]
