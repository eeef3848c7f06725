"""The GPU kernels of a SmolLM2 and of a Gemma 3 step and of the mixer compiled ahead of time for sm_80 and
sm_90 (no GPU needed: Triton's bundled ptxas) and their PTX scanned for instructions that
break the engine's numerics: fused multiply-adds, approximate division, square root and
transcendentals, flushes of subnormals (lmzip.gpu.ptx).  The CPU interpreter cannot see those; this closes the hole.

The compilation runs in a child process: this one may run Triton's interpreter
(tests/test_gpu_kernels.py sets TRITON_INTERPRET=1), which cannot compile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from .conftest import ROOT

pytest.importorskip("torch", reason="the gpu extra (torch, triton) is not installed")
pytest.importorskip("triton", reason="the gpu extra (torch, triton) is not installed")

from lmzip.gpu import ptx  # noqa: E402

#: every launch of a SmolLM2 step and of a Gemma 3 step (a launch both have, once), and of
#: the GPU's mixer
SPECS = list({s.label(): s for s in ptx.smollm2_specs() + ptx.gemma3_specs() + ptx.mixer_specs()}.values())

_COMPILE = textwrap.dedent("""
    import json
    from lmzip.gpu import ptx
    out = {}
    for spec in {s.label(): s for s in ptx.smollm2_specs() + ptx.gemma3_specs() + ptx.mixer_specs()}.values():
        for cap in ptx.TARGETS:
            text = ptx.compile_ptx(spec, cap)
            out[f"{spec.label()} @ sm_{cap}"] = {"target": f".target sm_{cap}" in text,
                                                 "muls": text.count("mul.rn.f32") + text.count("mul.rn.f64"),
                                                 "found": ptx.scan_ptx(text)}
    fused = next(s for s in ptx.smollm2_specs() if s.name == "gate_quant_kernel")
    out["fused"] = ptx.scan_ptx(ptx.compile_ptx(fused, 90, fp_fusion=True))
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def compiled() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run([sys.executable, "-c", _COMPILE], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.parametrize("capability", ptx.TARGETS)
@pytest.mark.parametrize("spec", SPECS, ids=[s.label() for s in SPECS])
def test_kernel_ptx_is_clean(compiled, spec, capability):
    r = compiled[f"{spec.label()} @ sm_{capability}"]
    assert r["target"]  # the kernel's own code, for this GPU
    assert r["muls"] > 0 or spec.module == "mix_kernels"  # (some of the mixer's only add, compare or move)
    assert r["found"] == []


def test_scan_finds_fusion(compiled):
    """The same kernel compiled with fusion on holds fused multiply-adds: a scan that passed
    it would be a broken scan."""
    assert any(line.startswith("fused multiply-add") for line in compiled["fused"]), compiled["fused"]


@pytest.mark.parametrize("line, kind", [
    ("    fma.rn.f32 %f1, %f2, %f3, %f4;", "fused multiply-add"),
    ("    fma.rn.f64 %fd1, %fd2, %fd3, %fd4;", "fused multiply-add"),
    ("    mad.rn.f32 %f1, %f2, %f3, %f4;", "fused multiply-add"),
    ("    add.ftz.f32 %f1, %f2, %f3;", "flush to zero"),
    ("    div.full.f32 %f1, %f2, %f3;", "approximate division"),
    ("    ex2.approx.f32 %f1, %f2;", "approximate instruction"),
    ("    sqrt.approx.ftz.f32 %f1, %f2;", "approximate instruction"),
    ("    rcp.approx.ftz.f64 %fd1, %fd2;", "approximate instruction"),
])
def test_scan_rules(line, kind):
    assert any(f.startswith(kind) for f in ptx.scan_ptx(line)), ptx.scan_ptx(line)


@pytest.mark.parametrize("line", [
    "    mad.lo.s32 %r1, %r2, %r3, %r4;", "    div.rn.f32 %f1, %f2, %f3;", "    sqrt.rn.f64 %fd1, %fd2;",
    "    mul.rn.f32 %f1, %f2, %f3;", "    cvt.rn.f16.f32 %rs1, %f1;", "    // fma.rn.f32 in a comment",
    "    mad.wide.s32 %rd1, %r1, 4, %rd2;",
])
def test_scan_allows_exact_instructions(line):
    assert ptx.scan_ptx(line) == []


def test_sass_summary_of_a_kernel():
    """benchmarks/gpu_sass.py: the machine code of the attention values' kernel for sm_90,
    with 1 and 4 warps, summed up (registers, the loop's trip); a proxy between GPU runs."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_sass.py"), "--kernel", "attn_values",
                          "--set", "STAGES=1,UNROLL=1", "--warps", "1,4"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("attn_values_kernel(")]
    assert [r.split(": ")[0].rsplit(" ", 1)[1] for r in rows] == ["warps=1", "warps=4"]
    for r in rows:
        regs = int(r.split(": ", 1)[1].split(" registers")[0])
        trip = int(r.split("loops ")[1].split(":")[0])
        assert 16 <= regs <= 255 and trip > 100  # a loop of a chunk of 16 positions, not empty


def _gpu_sass():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_sass", ROOT / "benchmarks" / "gpu_sass.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_layer_launches_follow_the_tiles():
    """gpu_sass.py --layer's launches of a SmolLM2 layer: the grids and loop trips
    lmzip.gpu.forward makes with the tiles (a 64-stream step at depth 2048)."""
    from dataclasses import replace

    from lmzip.gpu.tiles import Blocks

    sass = _gpu_sass()
    got = {what: (spec.name, programs, warps, trips) for what, spec, programs, warps, trips
           in sass.layer_launches(64, 2048, Blocks())}
    assert [v[0] for v in got.values()].count("matmul_kernel") == 4 and len(got) == 12  # the values quantize
    b = Blocks()
    assert got["values"][1:] == (64 * 3 * (64 // b.dims), b.value_warps, [2048 // 64])
    assert got["scores"][1:] == (64 * 3 * (2048 // b.slots), b.score_warps, [8])
    assert got["down"][1:] == (-(-576 // b.rows) * (64 // b.tokens), 4, [1536 // 32])
    wider = {what: programs for what, _, programs, _, _ in sass.layer_launches(64, 2048, replace(b, slots=128))}
    assert wider["scores"] == 64 * 3 * 16 and wider["values"] == got["values"][1]
    narrow = {what: programs for what, _, programs, _, _ in sass.layer_launches(64, 2048, replace(b, dims=16))}
    assert narrow["values"] == 64 * 3 * 4 and narrow["out quant"] == 4 * 9  # quantized apart


def test_trip_cycles_counts_the_waits_on_memory():
    """benchmarks/gpu_sass.py's in-order model of a loop trip: a load whose use follows it
    waits out the latency, loads issued together wait once, a load a trip ahead of its use
    (two sets of registers) hides it behind the trip's work, and an asynchronous copy waits
    at its DEPBAR."""
    sass = _gpu_sass()
    M = sass.MEMORY
    one_by_one = ["LDG.E R4, desc[UR4][R2.64]", "FADD R8, R8, R4", "LDG.E R5, desc[UR4][R2.64+0x4]",
                  "FADD R8, R8, R5", "BRA `(.L_x_1)"]
    together = ["LDG.E R4, desc[UR4][R2.64]", "LDG.E R5, desc[UR4][R2.64+0x4]", "FADD R8, R8, R4",
                "FADD R8, R8, R5", "BRA `(.L_x_1)"]
    assert sass.trip_cycles(one_by_one) >= 2 * M
    assert M <= sass.trip_cycles(together) < M + 10
    work = [f"FMUL R{20 + k}, R{20 + k}, R9" for k in range(2 * M)]  # a trip longer than the latency
    ahead = ["LDG.E R4, desc[UR4][R2.64]", *work, "FADD R8, R8, R4", "BRA `(.L_x_1)"]
    assert sass.trip_cycles(ahead) == len(ahead)  # the load's wait hidden behind the work
    # a load's register copied at the trip's end (a loop-carried value) waits for it
    copied = ["LDG.E R4, desc[UR4][R2.64]", "FADD R8, R8, R6", "IMAD.MOV.U32 R6, RZ, RZ, R4", "BRA `(.L_x_1)"]
    assert sass.trip_cycles(copied) >= M
    # guards and 64-bit address pairs are sources; a predicate is a register
    guarded = ["ISETP.GE.AND P1, PT, R3, R7, PT", "LDG.E R4, desc[UR4][R2.64]", "@P1 STG.E desc[UR4][R10.64], R4",
               "BRA `(.L_x_1)"]
    assert sass.trip_cycles(guarded) >= M
    copies = ["LDGSTS.E [R23], desc[UR4][R36.64]", "LDGDEPBAR", "DEPBAR.LE SB0, 0x0", "LDS R4, [R23]",
              "BRA `(.L_x_1)"]
    assert sass.trip_cycles(copies) >= M
    assert sass.trip_cycles(["LDGSTS.E [R23], desc[UR4][R36.64]", "LDGDEPBAR", "DEPBAR.LE SB0, 0x1",
                             "BRA `(.L_x_1)"]) < M  # one group may stay in flight
