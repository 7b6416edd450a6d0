"""`torch.compile(..., backend="mla", options={...})`: what can be asked, checked once."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable, Mapping, Union

from torch._inductor import list_mode_options

from .lowering.kernel_choice import KERNEL_CHOICES

LAUNCH_CHOICES = ("inductor", "op")
ReportSink = Union[bool, Callable[[Any], None]]

_HELP = {
    "rope": "bool: fuse RoPE subgraphs into torch.ops.mla.rope (default True)",
    "attention": "bool: fuse MLA attention (q_nope, q_pe, the latent c_kv, k_pe and the kv "
    "up-projection) into torch.ops.mla.prefill_attention, and attention written over the latent "
    "into torch.ops.mla.latent_attention (default True)",
    "kernel": f"one of {KERNEL_CHOICES}: which kernels the fused ops run (default 'auto'; "
    "'reference' forces the PyTorch reference implementations)",
    "report": "False, True (print each graph's match report to stderr) or a callable "
    "that receives each GraphReport; a report compiles without Inductor's caches so "
    "that every pass runs (default False)",
    "inductor": "dict of extra Inductor config patches, e.g. {'max_autotune': True}",
    "strict": "bool: raise instead of leaving a look-alike subgraph alone, so that a user can "
    "assert that the model was fully rewritten (default False)",
    "launch": "'inductor' (default): inside compiled graphs on CUDA, Inductor's generated code "
    "launches the fused ops' Triton kernels itself (no per-call op dispatch or Python checks); "
    "'op': every fused op stays a torch.ops.mla call",
    "mode": "an Inductor mode such as 'reduce-overhead' (torch.compile refuses mode= "
    "together with options=, so it can be given here instead)",
}


@dataclass(frozen=True)
class Options:
    rope: bool = True
    attention: bool = True
    kernel: str = "auto"
    report: ReportSink = False
    inductor: Mapping[str, Any] = field(default_factory=dict)
    mode: str | None = None
    strict: bool = False
    launch: str = "inductor"

    @classmethod
    def from_user(cls, options: Mapping[str, Any] | None) -> "Options":
        options = dict(options or {})
        unknown = sorted(set(options) - set(_HELP))
        if unknown:
            raise ValueError(f"mla backend: unknown option(s) {unknown}; valid options:\n{describe()}")
        opts = cls(**options)
        for name in ("rope", "attention"):
            if not isinstance(getattr(opts, name), bool):
                raise ValueError(f"mla backend: option '{name}' must be a bool, got {getattr(opts, name)!r}")
        if opts.kernel not in KERNEL_CHOICES:
            raise ValueError(f"mla backend: option 'kernel' must be one of {KERNEL_CHOICES}, got {opts.kernel!r}")
        if not isinstance(opts.strict, bool):
            raise ValueError(f"mla backend: option 'strict' must be a bool, got {opts.strict!r}")
        if opts.launch not in LAUNCH_CHOICES:
            raise ValueError(f"mla backend: option 'launch' must be one of {LAUNCH_CHOICES}, got {opts.launch!r}")
        if not (isinstance(opts.report, bool) or callable(opts.report)):
            raise ValueError(f"mla backend: option 'report' must be a bool or a callable, got {opts.report!r}")
        if not isinstance(opts.inductor, Mapping) or "joint_custom_pre_pass" in opts.inductor:
            raise ValueError("mla backend: option 'inductor' must be a dict of Inductor config "
                             "patches and may not set joint_custom_pre_pass (the mla passes run there)")
        if opts.mode is not None and opts.mode not in list_mode_options():
            raise ValueError(f"mla backend: option 'mode' must be one of {sorted(list_mode_options())}, "
                             f"got {opts.mode!r}")
        return opts

    def cache_key(self) -> str:
        """What changes the generated code (the report sink does not)."""
        parts = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "report"}
        parts["inductor"] = sorted((k, repr(v)) for k, v in self.inductor.items())
        return repr(sorted(parts.items()))


def describe() -> str:
    return "\n".join(f"  {k}: {v}" for k, v in _HELP.items())
