"""What the GPU kernels compile to, without a GPU: a proxy for their speed between GPU runs.

    python benchmarks/gpu_sass.py [--model gemma3-270m | mixer] [--kernel attn_values]
        [--set UNROLL=4,STAGES=1] [--warps 1,2,4] [--capability 90]

Each kernel launch of a step (lmzip.gpu.ptx's specs, the default tiles) is compiled ahead
of time as lmzip does (fusion off), for ``sm_<capability>``, with Triton's bundled
ptxas; its machine code (SASS, through the bundled nvdisasm and cuobjdump) is summed up:
registers, shared memory, spills (local memory), instructions, and for each loop (a
backward branch) the instructions of one trip, barriers, global loads, shared-memory
stores and loads, and shuffles.  Barriers and shared-memory round trips inside a loop
that is bound by memory latency are what to look at first (docs/gpu.md); a GPU run
decides (``benchmarks/gpu.py --sweep``).  ``--set`` overrides constexprs of the chosen
kernels, ``--warps`` compiles each with that many warps (Triton's num_warps).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.pop("TRITON_INTERPRET", None)  # compiling, not interpreting

_LOOP_OPS = ("BAR", "LDG", "STS", "LDS", "SHFL")


def _tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def cubin(spec, capability: int, warps: int) -> bytes:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    src = ASTSource(fn=spec.kernel(), signature=spec.signature(), constexprs=dict(spec.constexprs))
    compiled = triton.compile(src, target=GPUTarget("cuda", capability, 32),
                              options={"enable_fp_fusion": False, "num_warps": warps})
    return compiled.asm["cubin"]


def summary(binary: bytes) -> dict:
    """Registers, shared and local memory, instructions and each loop's trip (see above)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(binary)
    try:
        usage = subprocess.run([_tool("cuobjdump"), "-res-usage", f.name], capture_output=True, text=True).stdout
        sass = subprocess.run([_tool("nvdisasm"), "-c", f.name], capture_output=True, text=True).stdout
    finally:
        os.unlink(f.name)
    res = {k: int(v) for k, v in re.findall(r"\b(REG|SHARED|LOCAL):(\d+)", usage)}
    code, labels, waiting = [], {}, []
    for line in sass.splitlines():
        label = re.match(r"\s*(\.L_x_\d+):", line)
        if label:
            waiting.append(label.group(1))
            continue
        m = re.search(r"/\*([0-9a-f]{4,6})\*/\s+(.*?);", line)
        if m:
            addr = int(m.group(1), 16)
            labels.update((name, addr) for name in waiting)
            waiting = []
            code.append((addr, re.sub(r"^@!?U?P\w+\s+", "", m.group(2))))
    loops = []
    for addr, text in code:
        target = re.search(r"^BRA\b.*?`\((\.L_x_\d+)\)", text)
        if target and labels.get(target.group(1), addr) < addr:  # a backward branch: a loop
            body = [t.split()[0].split(".")[0] for a, t in code if labels[target.group(1)] <= a <= addr]
            ops = collections.Counter(body)
            loops.append({"instructions": len(body), **{op: ops[op] for op in _LOOP_OPS}})
    return {"regs": res.get("REG", 0), "shared": res.get("SHARED", 0), "local": res.get("LOCAL", 0),
            "instructions": len(code), "loops": sorted(loops, key=lambda lp: -lp["instructions"])}


def main() -> int:
    from lmzip.gpu import ptx

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m", choices=["smollm2-135m", "gemma3-270m", "mixer"],
                    help="a model's step, or the GPU's mixer (lmzip.gpu.mix_kernels)")
    ap.add_argument("--kernel", default="", help="only kernels whose name holds this")
    ap.add_argument("--set", default="", help="constexpr overrides, e.g. UNROLL=4,STAGES=1")
    ap.add_argument("--warps", default="4", help="warps per program to compile with, e.g. 1,2,4")
    ap.add_argument("--capability", type=int, default=90, help="the GPU generation: 80 (A100), 90 (H100, H200)")
    a = ap.parse_args()
    over = {k.strip(): int(v) for k, _, v in (item.partition("=") for item in a.set.split(",") if item)}
    specs = {"smollm2-135m": ptx.smollm2_specs, "gemma3-270m": ptx.gemma3_specs, "mixer": ptx.mixer_specs}[a.model]()
    chosen = {}
    for spec in specs:
        if a.kernel in spec.name:
            spec = ptx.KernelSpec(spec.name, tuple({**dict(spec.constexprs), **{k: v for k, v in over.items()
                                                                              if k in dict(spec.constexprs)}}.items()),
                                  spec.module)
            chosen[spec.label()] = spec
    if not chosen:
        sys.exit(f"no kernel of a {a.model} step holds {a.kernel!r}")
    print(f"sm_{a.capability}, fusion off; loops: instructions of one trip, then {', '.join(_LOOP_OPS)}")
    for label, spec in chosen.items():
        for warps in map(int, a.warps.split(",")):
            s = summary(cubin(spec, a.capability, warps))
            loops = "; ".join(f"{lp['instructions']}: " + " ".join(str(lp[op]) for op in _LOOP_OPS)
                              for lp in s["loops"][:3]) or "none"
            print(f"{label} warps={warps}: {s['regs']} registers, {s['shared']} B shared, {s['local']} B spilled, "
                  f"{s['instructions']} instructions; loops {loops}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
