"""`torch.compile(model, backend="mla")`: Inductor with the mla passes at
`joint_custom_pre_pass`, the one place the MLA pattern is still intact."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch._inductor import list_mode_options
from torch._inductor.compile_fx import compile_fx

from . import custom_ops  # noqa: F401  (registers torch.ops.mla.*)
from .compat import launch_patches
from .options import Options
from .pass_manager import MlaPassManager


def mla_backend(
    gm: torch.fx.GraphModule,
    example_inputs: list[Any],
    *,
    mode: str | None = None,
    options: Mapping[str, Any] | None = None,
    **_: Any,  # e.g. name= from torch 2.15; nothing else reaches a backend
):
    opts = Options.from_user(options)
    if mode and opts.mode and mode != opts.mode:
        raise ValueError(f"mla backend: mode={mode!r} and options['mode']={opts.mode!r} disagree")
    mode = mode or opts.mode
    patches: dict[str, Any] = dict(list_mode_options(mode)) if mode else {}
    patches.update(launch_patches())
    patches.update(opts.inductor)
    patches["joint_custom_pre_pass"] = MlaPassManager(opts)
    if not opts.report:
        return compile_fx(gm, example_inputs, config_patches=patches)
    # A graph served from Inductor's FX graph cache or AOTAutograd's cache skips the
    # passes, and so the report: those two are off. The kernel caches stay on (keyed by
    # the generated source, they cannot skip a pass): force_disable_caches would also
    # compile every kernel afresh, in a new temporary cache directory never deleted.
    patches.update(fx_graph_cache=False, fx_graph_remote_cache=False)
    with torch._functorch.config.patch(enable_autograd_cache=False):
        return compile_fx(gm, example_inputs, config_patches=patches)
