"""Ahead-of-time compilation of the GPU kernels and the scan of their PTX.

The CPU interpreter runs the kernels on numpy, where every operation is exact: a kernel
that a GPU would compile into a fused multiply-add, an approximate division, square root
or exponential, or a flush of subnormals to zero passes there and computes other bits on
a GPU.  What closes that hole without a GPU: compile every kernel for a GPU target
(``triton.compile`` with ``GPUTarget("cuda", 80 | 90, 32)`` needs no GPU; it runs
Triton's bundled ptxas) with ``enable_fp_fusion=False``, and refuse PTX holding a
forbidden instruction (:data:`FORBIDDEN`).  On a GPU, :mod:`lmzip.gpu.trust` scans the
PTX of the kernels it actually launched, with the same rules.

(ptxas may implement a correctly rounded ``div.rn``/``sqrt.rn`` with FMA instructions
in SASS: exact by construction.  The rules are about the PTX.)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["FORBIDDEN", "scan_ptx", "KernelSpec", "smollm2_specs", "compile_ptx", "TARGETS"]

#: PTX instructions that break the engine's numerics: name -> pattern
FORBIDDEN: dict[str, re.Pattern] = {
    "fused multiply-add (f32/f64)": re.compile(r"\b(?:fma|mad)(?:\.[a-z0-9]+)*\.f(?:32|64)\b"),
    "flush to zero": re.compile(r"\.ftz\b"),
    "approximate division": re.compile(r"\bdiv\.(?:full|approx)\b"),
    "approximate instruction": re.compile(r"\.approx\b"),
}

#: the GPU generations checked ahead of time: Ampere (A100) and Hopper (H100, H200)
TARGETS = (80, 90)


def scan_ptx(ptx: str) -> list[str]:
    """The forbidden instructions in a PTX text: one line per kind found ("kind: instruction
    (n times)"); empty when the kernel computes the engine's numbers."""
    found = []
    lines = [ln.split("//", 1)[0] for ln in ptx.splitlines()]
    for what, pattern in FORBIDDEN.items():
        hits = [m.group(0) for ln in lines for m in [pattern.search(ln)] if m]
        if hits:
            found.append(f"{what}: {hits[0]} ({len(hits)} times)")
    return found


_POINTER_TYPES = {"tok_ptr": "*i32", "stream_ptr": "*i32", "rows_ptr": "*i32", "pos_ptr": "*i64",
                  "kc_ptr": "*i16", "vc_ptr": "*i16", "wq_ptr": "*i8", "aq_ptr": "*i8", "q_ptr": "*i8"}


@dataclass(frozen=True)
class KernelSpec:
    """One kernel with the constexpr values of one launch."""

    name: str
    constexprs: tuple[tuple[str, object], ...]

    def kernel(self):
        from . import kernels

        return getattr(kernels, self.name)

    def signature(self) -> dict[str, str]:
        fn = self.kernel()
        consts = dict(self.constexprs)
        sig = {}
        for arg in fn.arg_names:
            if arg in consts:
                sig[arg] = "constexpr"
            elif arg.endswith("_ptr"):
                sig[arg] = _POINTER_TYPES.get(arg, "*fp32")
            elif arg == "eps":
                sig[arg] = "fp32"
            else:
                sig[arg] = "i32"
        return sig

    def label(self) -> str:
        return self.name + "(" + ", ".join(f"{k}={v}" for k, v in self.constexprs) + ")"


def smollm2_specs(blocks=None, n_embd: int = 576, n_ff: int = 1536, n_head: int = 9, n_kv: int = 3,
                  n_vocab: int = 49152) -> list[KernelSpec]:
    """Every kernel launch of a SmolLM2 step (:meth:`lmzip.gpu.forward.GPUEngine._step`), with the
    GPU tile sizes (``blocks``, default :class:`lmzip.gpu.tiles.Blocks`)."""
    from .tiles import Blocks, _blocks, _pow2, product_tokens

    b = blocks or Blocks()
    E, F, G = n_embd, n_ff, n_head // n_kv
    specs = [("embed_kernel", dict(E=E, BT=b.norm_tokens))]
    for norm, gather, store in ((True, False, False), (False, False, False), (True, True, True)):
        specs.append(("norm_quant_kernel", dict(E=E, NORM=norm, GATHER=gather, STORE_Y=store, BT=b.norm_tokens,
                                                NBLK=_blocks(E, b.quant_blocks))))
    for bt in sorted({product_tokens(n, b.tokens) for n in (1, 2 * b.tokens)} | {b.tokens // 2}):
        for K, q4, residual in ((E, True, False), (E, True, True), (F, True, True), (E, False, False)):
            specs.append(("matmul_kernel", dict(K=K, Q4=q4, RESIDUAL=residual, BT=bt, BR=b.rows,
                                                DOT_F32=b.dot_f32)))
    specs += [
        ("silu_quant_kernel", dict(F=F, BT=b.norm_tokens, NBLK=_blocks(F, b.quant_blocks))),
        ("rope_cache_kernel", dict(NH=n_head, NKV=n_kv, HP=_pow2(n_head), KP=_pow2(n_kv), BT=b.norm_tokens)),
        ("sink_rope_kernel", dict(NKV=n_kv, KP=_pow2(n_kv), BT=b.norm_tokens)),
        ("attn_scores_kernel", dict(NH=n_head, NKV=n_kv, G=G, GP=_pow2(G), BT=b.attn_tokens, BS=b.slots)),
        ("attn_values_kernel", dict(NH=n_head, NKV=n_kv, G=G, GP=_pow2(G), BT=b.attn_tokens, BD=b.dims,
                                    STAGES=b.stages)),
        ("attn_values_kernel", dict(NH=n_head, NKV=n_kv, G=G, GP=_pow2(G), BT=b.attn_tokens, BD=b.dims, STAGES=3)),
    ]
    return [KernelSpec(name, tuple(c.items())) for name, c in specs]


def compile_ptx(spec: KernelSpec, capability: int, fp_fusion: bool = False) -> str:
    """The PTX of one kernel compiled for ``sm_<capability>`` (no GPU needed)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    src = ASTSource(fn=spec.kernel(), signature=spec.signature(), constexprs=dict(spec.constexprs))
    compiled = triton.compile(src, target=GPUTarget("cuda", capability, 32),
                              options={"enable_fp_fusion": fp_fusion})
    return compiled.asm["ptx"]


def scan_all(specs: Iterable[KernelSpec], capabilities: Iterable[int] = TARGETS) -> dict[str, list[str]]:
    """{kernel label @ sm_N: forbidden instructions} for every spec and target (empty lists: clean)."""
    return {f"{s.label()} @ sm_{c}": scan_ptx(compile_ptx(s, c)) for s in specs for c in capabilities}
