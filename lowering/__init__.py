"""Lowering decisions, one place each: which kernel backend runs an op."""
from .kernel_choice import KERNEL_CHOICES, select_backend

__all__ = ["KERNEL_CHOICES", "select_backend"]
