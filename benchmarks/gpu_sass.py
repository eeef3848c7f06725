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
    res = {k: int(v) for k, v in re.findall(r"\b(REG|SHARED|LOCAL|STACK):(\d+)", usage)}
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
            trip = [t for a, t in code if labels[target.group(1)] <= a <= addr]
            ops = collections.Counter(t.split()[0].split(".")[0] for t in trip)
            loops.append({"instructions": len(trip), **{op: ops[op] for op in _LOOP_OPS},
                          "cycles": trip_cycles(trip)})
    return {"regs": res.get("REG", 0), "shared": res.get("SHARED", 0),
            "local": res.get("LOCAL", 0) + res.get("STACK", 0),  # spilled registers live on the stack
            "instructions": len(code), "loops": sorted(loops, key=lambda lp: -lp["instructions"])}


#: the latencies trip_cycles assumes, in cycles: a global load (DRAM or L2, not told apart),
#: a shared-memory load, anything else
MEMORY, SHARED, OTHER = 500, 30, 5
_REG = re.compile(r"\b(U?R\d+|U?P\d+)(?:\.64)?")
_NO_DEST = ("ST", "LDGSTS", "RED", "ATOM", "BRA", "BAR", "DEPBAR", "LDGDEPBAR", "EXIT", "NOP", "WARPSYNC",
            "BSYNC", "BSSY", "MEMBAR", "CALL", "RET", "YIELD")


def _registers(token: str) -> list[str]:
    """A register operand's registers: R4.64 is R4 and R5."""
    out = []
    for m in _REG.finditer(token):
        name = m.group(1)
        out.append(name)
        if m.group(0).endswith(".64") and name.startswith("R"):
            out.append(f"R{int(name[1:]) + 1}")
    return [r for r in out if r not in ("RZ", "PT", "URZ", "UPT")]


def trip_cycles(trip: list[str], trips: int = 4) -> int:
    """Cycles of one loop trip for a single warp in steady state, by a crude in-order model:
    one instruction a cycle, each waits for its source registers; a global load's result
    comes MEMORY cycles after it is issued, asynchronous copies (LDGSTS) complete
    MEMORY cycles after theirs and DEPBAR.LE SB0, n waits until at most n groups are
    pending.  What it shows: how many memory latencies a trip waits out (whether its loads
    are issued together or one after another's use), not a timing; other warps on the
    same scheduler fill those waits only if there are enough of them."""
    ready: dict[str, int] = {}
    groups: list[int] = []  # completion cycle of each committed group of async copies
    pending_copies: list[int] = []
    now, starts = 0, []
    for _ in range(trips):
        starts.append(now)
        for text in trip:
            guard, _, rest = text.partition(" ") if text.startswith("@") else ("", "", text)
            op, _, args = rest.partition(" ")
            name = op.split(".")[0]
            operands = [a.strip() for a in args.split(",")] if args else []
            dest: list[str] = []
            if operands and not name.startswith(_NO_DEST) and _registers(operands[0]):
                dest = _registers(operands[0])
                wide = 4 if ".128" in op else 2 if ".64" in op or op.startswith("IMAD.WIDE") else len(dest)
                if dest[0].startswith("R") and wide > len(dest):  # a vector or pair written
                    dest = [f"R{int(dest[0][1:]) + k}" for k in range(wide)]
                sources = [r for o in operands[1:] for r in _registers(o)]
            else:
                sources = [r for o in operands for r in _registers(o)]
            sources += _registers(guard)
            now = max([now] + [ready.get(r, 0) for r in sources])
            if name == "DEPBAR" and "SB0" in args:  # wait until at most `allowed` groups are pending
                allowed = int(operands[-1], 0)
                groups = [g for g in groups if g > now]
                while len(groups) > allowed:
                    now = min(groups)
                    groups = [g for g in groups if g > now]
            if name == "LDGSTS":
                pending_copies.append(now + MEMORY)
            elif name == "LDGDEPBAR":
                groups.append(max(pending_copies, default=now))
                pending_copies = []
            latency = MEMORY if name == "LDG" else SHARED if name == "LDS" else OTHER
            for r in dest:
                ready[r] = now + latency
            now += 1
    return (now - starts[trips // 2]) // (trips - trips // 2)


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
    print(f"sm_{a.capability}, fusion off; loops: instructions of one trip, then {', '.join(_LOOP_OPS)}, "
          f"then ~cycles a trip takes one warp (trip_cycles: loads {MEMORY} cycles)")
    for label, spec in chosen.items():
        for warps in map(int, a.warps.split(",")):
            s = summary(cubin(spec, a.capability, warps))
            loops = "; ".join(f"{lp['instructions']}: " + " ".join(str(lp[op]) for op in _LOOP_OPS)
                              + f" ~{lp['cycles']} cycles" for lp in s["loops"][:3]) or "none"
            print(f"{label} warps={warps}: {s['regs']} registers, {s['shared']} B shared, {s['local']} B spilled, "
                  f"{s['instructions']} instructions; loops {loops}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
