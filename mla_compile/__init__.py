"""mla-compile: `torch.compile(model, backend="mla")` fuses MLA attention and RoPE.

The backend is registered through the `torch_dynamo_backends` entry point, so no
import is needed; importing this package gives the report types and options.
"""
from .backend import mla_backend
from .options import Options
from .report import GraphReport, LeftAloneError, Match, NearMiss, PassRecord

__version__ = "0.1.0"
__all__ = ["mla_backend", "Options", "GraphReport", "LeftAloneError", "Match", "NearMiss", "PassRecord"]
