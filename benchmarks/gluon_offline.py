"""Compiling a Gluon program for sm_90 without a GPU, and what ptxas says of it: the part
compile_gluon_prefill.py and compile_gluon_seesaw.py share. Runs under whichever Triton
imports it (the GPU machine's 3.6, a 3.8 venv); ptxas and nvdisasm ship with Triton's
NVIDIA backend.
"""
import importlib
import os
import re
import subprocess
import sys
import tempfile
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_custom_op_module(name: str):
    """mla_compile.custom_ops.<name>, the two packages without their __init__ (no torch
    ops registered, no CUDA needed)."""
    for pkg_name, path in (("mla_compile", ROOT + "/mla_compile"), ("mla_compile.custom_ops", ROOT + "/custom_ops")):
        pkg = types.ModuleType(pkg_name)
        pkg.__path__ = [path]
        sys.modules[pkg_name] = pkg
    return importlib.import_module("mla_compile.custom_ops." + name)


def compile_and_report(fn, sig: dict, const: dict, attrs: dict, num_warps: int, tag: str) -> str:
    """Compile `fn` for sm_90a, write its PTX / TTGIR / cubin / SASS under the temp dir as
    <tag>.*, and return one line: shared memory, wgmma / TMA / cp.async counts, local
    memory traffic (spills), the highest register the SASS names (under setmaxnreg, what a
    partition really uses: ptxas -v reports the launch's cap) and ptxas's own summary."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    k = triton.compile(GluonASTSource(fn, sig, const, attrs), target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": num_warps})
    out = os.path.join(tempfile.gettempdir(), f"{tag}_triton{triton.__version__}")
    ptx = k.asm["ptx"]
    open(out + ".ptx", "w").write(ptx)
    open(out + ".ttgir", "w").write(k.asm["ttgir"])
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    r = subprocess.run([ptxas, "-arch=sm_90a", "-v", out + ".ptx", "-o", out + ".cubin"], capture_output=True, text=True)
    sass = subprocess.run([os.path.join(os.path.dirname(ptxas), "nvdisasm"), out + ".cubin"], capture_output=True,
                          text=True).stdout
    open(out + ".sass", "w").write(sass)
    max_reg = max((int(x) for x in re.findall(r"\bR(\d+)\b", sass)), default=-1)
    info = " | ".join(ln.strip() for ln in r.stderr.splitlines()
                      if "registers" in ln or "spill" in ln or "error" in ln.lower() or "warn" in ln.lower())
    counts = {
        "shared": k.metadata.shared,
        "wgmma": len(re.findall(r"wgmma.mma_async", ptx)),
        "tma": len(re.findall(r"cp.async.bulk.tensor", ptx)),
        "cp.async": len(re.findall(r"cp.async.cg|cp.async.ca", ptx)),
        "setmaxnreg": sorted(set(re.findall(r"setmaxnreg\.(\w+)\.sync\.aligned\.u32\s+(\d+)", ptx))),
        "ld/st.local": len(re.findall(r"(?:ld|st)\.local", ptx)),
        "SASS STL/LDL": len(re.findall(r"\b(?:STL|LDL)\b", sass)),
    }
    return " ".join([f"{tag}_triton{triton.__version__}"] + [f"{n} {v}" for n, v in counts.items()]
                    + [f"highest register R{max_reg}", "|", info])


def signature(params, const: dict, descs: dict, pointers: dict, floats: set) -> dict:
    """The compile signature: constexprs, descriptor types, `*dtype` pointers, fp32 for the
    float scalars, i32 for every other argument."""
    def kind(p):
        if p in const:
            return "constexpr"
        if p in descs:
            return descs[p]
        if p in pointers:
            return "*" + pointers[p]
        return "fp32" if p in floats else "i32"
    return {p: kind(p) for p in params}


def descriptor_type(dtype: str, block, layout) -> str:
    """The signature string of a host TMA descriptor argument."""
    return f"tensordesc<{dtype}[{','.join(map(str, block))}],{layout!r}>"
