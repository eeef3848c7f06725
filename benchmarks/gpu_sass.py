"""What the GPU kernels compile to, without a GPU: a proxy for their speed between GPU runs.

    python benchmarks/gpu_sass.py [--model gemma3-270m | mixer] [--kernel attn_values]
        [--set UNROLL=4,STAGES=1] [--warps 1,2,4] [--capability 90]
    python benchmarks/gpu_sass.py --layer 64 [--depth 2048] [--tiles tokens=32,rows=64]

Each kernel launch of a step (lmzip.gpu.ptx's specs, the default tiles) is compiled ahead
of time as lmzip does (fusion off), for ``sm_<capability>``, with Triton's bundled
ptxas; its machine code (SASS, through the bundled nvdisasm and cuobjdump) is summed up:
registers, shared memory, spills (local memory), instructions, and for each loop (a
backward branch) the instructions of one trip, barriers, global loads, shared-memory
stores and loads, and shuffles.  Barriers and shared-memory round trips inside a loop
that is bound by memory latency are what to look at first (docs/gpu.md); a GPU run
decides (``benchmarks/gpu.py --sweep``).  ``--set`` overrides constexprs of the chosen
kernels, ``--warps`` compiles each with that many warps (Triton's num_warps).

``--layer STREAMS`` adds up a SmolLM2 layer of a step of that many streams, one token
each at ``--depth``, launch by launch as lmzip.gpu.forward launches it (the tiles of
lmzip.gpu.tiles.Blocks, ``--tiles`` changing some): each loop's trips times its period,
the larger of one warp's ``trip_cycles`` and its instructions times the warps on each of
the H200's 528 schedulers (one wave), plus the code outside the loops once.  A crude
model for choosing what to change, not a timing.
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


def cubin(spec, capability: int, warps: int, aligned: bool = True) -> bytes:
    """The kernel's machine code; ``aligned``: as Triton's JIT compiles a launch of a 64-stream
    step (aligned pointers, multiples of 16: ``KernelSpec.attrs``), else with no such facts."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    src = ASTSource(fn=spec.kernel(), signature=spec.signature(), constexprs=dict(spec.constexprs),
                    attrs=spec.attrs() if aligned else None)
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
    loops, inside = [], set()
    for addr, text in code:
        target = re.search(r"^BRA\b.*?`\((\.L_x_\d+)\)", text)
        if target and labels.get(target.group(1), addr) < addr:  # a backward branch: a loop
            start = labels[target.group(1)]
            trip = [t for a, t in code if start <= a <= addr]
            inside.update(a for a, _ in code if start <= a <= addr)
            ops = collections.Counter(t.split()[0].split(".")[0] for t in trip)
            loops.append({"instructions": len(trip), **{op: ops[op] for op in _LOOP_OPS},
                          "cycles": trip_cycles(trip), "start": start})
    # the code outside the loops once through, in order (branches around it not followed)
    once = trip_cycles([t for a, t in code if a not in inside and not t.startswith(("EXIT", "BRA"))], trips=1)
    return {"regs": res.get("REG", 0), "shared": res.get("SHARED", 0),
            "local": res.get("LOCAL", 0) + res.get("STACK", 0),  # spilled registers live on the stack
            "instructions": len(code), "once": once, "loops": sorted(loops, key=lambda lp: -lp["instructions"])}


#: the H200's warp schedulers (132 SMs of 4) and clock (GHz), for --layer
SCHEDULERS, CLOCK_GHZ = 528, 1.98
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


def layer_launches(streams: int, depth: int, blocks) -> list[tuple]:
    """The launches of one SmolLM2 layer in a step of ``streams`` streams of one token at
    ``depth``, as lmzip.gpu.forward.GPUEngine._forward makes them with these tiles: (what,
    spec, programs, warps a program, the trips of each loop in code order)."""
    from lmzip.gpu import ptx
    from lmzip.gpu.tiles import _blocks, product_tokens, triton_cdiv

    b, T, shape = blocks, streams, ptx.SMOLLM2
    E, F, HD, KV, G = shape.n_embd, shape.n_ff, shape.head_dim, shape.n_kv, shape.n_head // shape.n_kv
    QKV = (shape.n_head + 2 * KV) * HD
    specs = ptx.smollm2_specs(b)

    def spec(name, **c):
        return next(s for s in specs if s.name == name and all(dict(s.constexprs).get(k) == v for k, v in c.items()))

    NS = (min(depth, 2048) + 63) // 64 * 64  # the score rows (forward._score_len)
    nt = triton_cdiv(T, b.norm_tokens)
    per_row = E // 32 // _blocks(E, b.quant_blocks)
    bt = product_tokens(T, b.tokens, b.least_tokens)

    def product(what, rows, K, residual):
        return (what, spec("matmul_kernel", K=K, KIND=1, RESIDUAL=residual, BT=bt),
                triton_cdiv(rows, b.rows) * triton_cdiv(T, bt), 4, [K // 32])

    out_quant = [] if b.values_quantize else [  # else the values' kernel quantizes its blocks
        ("out quant", spec("norm_quant_kernel", E=E, NORM=False), nt * per_row, 4, [])]
    return [
        ("attn norm", spec("norm_quant_kernel", E=E, NORM=True, GATHER=False), nt * per_row, 4, [E // 16]),
        product("q, k, v", QKV, E, False),
        ("rope, cache", spec("rope_cache_kernel"), nt, 4, []),
        ("sink rope", spec("sink_rope_kernel"), nt, 4, []),
        ("scores", spec("attn_scores_kernel"), T * KV * triton_cdiv(NS, b.slots), b.score_warps, [HD // 8]),
        ("softmax", spec("attn_softmax_kernel"), T * KV * G, b.soft_warps, [NS // (16 * b.soft_rows)] * 2),
        ("values", spec("attn_values_kernel", STAGES=b.stages, UNROLL=b.unroll), T * KV * (HD // b.dims),
         b.value_warps, [NS // 64]),
        *out_quant,
        product("output", E, E, True),
        ("ffn norm", spec("norm_quant_kernel", E=E, NORM=True, GATHER=False), nt * per_row, 4, [E // 16]),
        product("gate, up", 2 * F, E, False),
        ("gate quant", spec("gate_quant_kernel"), nt * (F // 32 // _blocks(F, b.quant_blocks)), 4, []),
        product("down", E, F, True),
    ]


def layer_table(streams: int, depth: int, blocks, capability: int = 90) -> int:
    """Print --layer's table; returns the layer's cycles."""
    print(f"| launch ({streams} streams, depth {depth}) | programs x warps | loops: trips x (instructions, "
          f"~cycles) -> period | once | ~cycles |\n|---|---|---|---:|---:|")
    total = 0
    for what, spec, programs, warps, trips in layer_launches(streams, depth, blocks):
        s = summary(cubin(spec, capability, warps))
        loops = sorted(s["loops"], key=lambda lp: lp["start"])
        if len(loops) != len(trips):
            raise SystemExit(f"{spec.label()}: {len(loops)} loops compiled, {len(trips)} expected")
        per_scheduler = -(-programs * warps // SCHEDULERS)
        cycles, parts = s["once"], []
        for lp, n in zip(loops, trips):
            period = max(lp["cycles"], lp["instructions"] * per_scheduler)
            cycles += n * period
            parts.append(f"{n} x ({lp['instructions']}, {lp['cycles']}) -> {period}")
        total += cycles
        print(f"| {what} | {programs} x {warps} | {'; '.join(parts) or '-'} | {s['once']} | {cycles} |", flush=True)
    step = 30 * total / (CLOCK_GHZ * 1e9)
    print(f"| a layer | | | | {total} |\n\na step of 30 layers: ~{step * 1e3:.2f} ms at {CLOCK_GHZ} GHz, "
          f"~{streams / step:,.0f} tokens/s at {streams} streams (the logits' head and the launches aside)")
    return total


def main() -> int:
    from lmzip.gpu import ptx

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m", choices=["smollm2-135m", "gemma3-270m", "mixer"],
                    help="a model's step, or the GPU's mixer (lmzip.gpu.mix_kernels)")
    ap.add_argument("--kernel", default="", help="only kernels whose name holds this")
    ap.add_argument("--set", default="", help="constexpr overrides, e.g. UNROLL=4,STAGES=1")
    ap.add_argument("--warps", default="4", help="warps per program to compile with, e.g. 1,2,4")
    ap.add_argument("--capability", type=int, default=90, help="the GPU generation: 80 (A100), 90 (H100, H200)")
    ap.add_argument("--unaligned", action="store_true",
                    help="compile without the JIT's facts about the arguments (aligned pointers, multiples of 16)")
    ap.add_argument("--layer", type=int, default=0, metavar="STREAMS",
                    help="add up a SmolLM2 layer of a step of this many streams (one token each)")
    ap.add_argument("--depth", type=int, default=2048, help="--layer: the streams' depth")
    ap.add_argument("--tiles", default="", help="--layer: tiles other than Blocks' defaults, e.g. tokens=32,rows=64")
    a = ap.parse_args()
    if a.layer:
        from lmzip.gpu.tiles import Blocks

        try:
            blocks = Blocks.parse(a.tiles, "--tiles")
        except ValueError as exc:
            sys.exit(str(exc))
        layer_table(a.layer, a.depth, blocks, a.capability)
        return 0
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
            s = summary(cubin(spec, a.capability, warps, not a.unaligned))
            loops = "; ".join(f"{lp['instructions']}: " + " ".join(str(lp[op]) for op in _LOOP_OPS)
                              + f" ~{lp['cycles']} cycles" for lp in s["loops"][:3]) or "none"
            print(f"{label} warps={warps}: {s['regs']} registers, {s['shared']} B shared, {s['local']} B spilled, "
                  f"{s['instructions']} instructions; loops {loops}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
