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

__all__ = ["FORBIDDEN", "scan_ptx", "KernelSpec", "StepShape", "SMOLLM2", "GEMMA3_270M", "step_specs", "smollm2_specs",
           "gemma3_specs", "mixer_specs", "compile_ptx", "TARGETS"]

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
#: the kernels' float arguments (the others are integers)
_FLOAT_ARGS = {"eps", "scale", "qscale"}
#: integer arguments that are multiples of 16 in a step of 64 streams (its tokens, the ring's
#: slots, a score row's length, a matrix's rows and leading dimension, the vocabulary); Triton's JIT compiles
#: such values, and 16-byte aligned pointers, as divisible by 16 (vector loads)
_MULTIPLES_OF_16 = frozenset({"T", "C", "NS", "R", "ldo", "V"})


@dataclass(frozen=True)
class KernelSpec:
    """One kernel with the constexpr values of one launch."""

    name: str
    constexprs: tuple[tuple[str, object], ...]
    #: the module that holds it: the engine's kernels, or the mixer's (mix_kernels)
    module: str = "kernels"

    def kernel(self):
        from . import kernels, mix_kernels

        return getattr(mix_kernels if self.module == "mix_kernels" else kernels, self.name)

    def signature(self) -> dict[str, str]:
        from .mix_kernels import ARG_TYPES

        fn = self.kernel()
        consts = dict(self.constexprs)
        sig = {}
        for arg in fn.arg_names:
            if arg in consts:
                sig[arg] = "constexpr"
            elif self.module == "mix_kernels":  # float64 pointers unless named
                sig[arg] = ARG_TYPES.get(arg, "*fp64" if arg.endswith("_ptr") else "i32")
            elif arg.endswith("_ptr"):
                sig[arg] = _POINTER_TYPES.get(arg, "*fp32")
            elif arg in _FLOAT_ARGS:
                sig[arg] = "fp32"
            else:
                sig[arg] = "i32"
        return sig

    def attrs(self) -> dict:
        """Triton's compile attributes for a launch as the JIT specializes one of a 64-stream
        step: every pointer 16-byte aligned (torch's allocations) and the integers of
        :data:`_MULTIPLES_OF_16` divisible by 16."""
        sig = self.signature()
        return {(i,): [["tt.divisibility", 16]] for i, arg in enumerate(self.kernel().arg_names)
                if sig[arg].startswith("*") or (arg in _MULTIPLES_OF_16 and sig[arg] == "i32")}

    def label(self) -> str:
        return self.name + "(" + ", ".join(f"{k}={v}" for k, v in self.constexprs) + ")"


@dataclass(frozen=True)
class StepShape:
    """What a model's step launches depend on: its sizes, its architecture, and its matrix
    products as (K, kind, residual), kind the weights file's type (1 Q4_1, 2 Q8_0, 3 K16)."""

    n_embd: int
    n_ff: int
    n_head: int
    n_kv: int
    head_dim: int
    gemma: bool
    products: tuple[tuple[int, int, bool], ...]


#: SmolLM2-135M: Q4_1 matrices (q, k, v, gate, up; the output and down projections add to the
#: residual stream), the Q8_0 head
SMOLLM2 = StepShape(576, 1536, 9, 3, 64, False, ((576, 1, False), (576, 1, True), (1536, 1, True), (576, 2, False)))
#: Gemma 3 270M as its weights file holds it: q, k, v, gate, up and the head Q8_0 (Q5_0 and
#: Q8_0 in the GGUF), the output and down projections K16 (Q4_K and Q6_K)
GEMMA3_270M = StepShape(640, 2048, 4, 1, 256, True, ((640, 2, False), (1024, 3, False), (2048, 3, False)))


def step_specs(shape: StepShape, blocks=None) -> list[KernelSpec]:
    """Every kernel launch of a step of a model of this shape
    (:meth:`lmzip.gpu.forward.GPUEngine._forward`), with the GPU tile sizes (``blocks``,
    default :class:`lmzip.gpu.tiles.Blocks`)."""
    from .tiles import Blocks, _blocks, _pow2, head_split, product_tokens, rope_tokens

    b = blocks or Blocks()
    E, F, HD, gemma = shape.n_embd, shape.n_ff, shape.head_dim, shape.gemma
    NH, KV, G, QD = shape.n_head, shape.n_kv, shape.n_head // shape.n_kv, shape.n_head * shape.head_dim
    specs = [("embed_kernel", dict(E=E, BT=b.norm_tokens, SCALED=gemma))]
    norms = [(E, True, False, False, False), (QD, False, False, False, False), (E, True, True, True, False)]
    if gemma:
        norms.append((E, True, False, False, True))  # the post-norms, added to the residual stream
    for width, norm, gather, store, residual in norms:
        specs.append(("norm_quant_kernel", dict(E=width, NORM=norm, GATHER=gather, STORE_Y=store, BT=b.norm_tokens,
                                                NBLK=_blocks(width, b.quant_blocks), RESIDUAL=residual,
                                                QUANT=not residual, GROUPS=1, STAGES=b.norm_stages)))
    for bt in sorted({product_tokens(n, b.tokens) for n in (1, 2 * b.tokens)} | {2 * b.tokens}):  # and --sweep's
        for K, kind, residual in shape.products:
            specs.append(("matmul_kernel", dict(K=K, KIND=kind, RESIDUAL=residual, BT=bt, BR=b.rows,
                                                DOT_F32=b.dot_f32, STAGES=b.product_stages)))
    rt = rope_tokens(b, HD)
    specs += [
        ("gate_quant_kernel", dict(F=F, BT=b.norm_tokens, NBLK=_blocks(F, b.quant_blocks), GELU=gemma)),
        ("rope_cache_kernel", dict(NH=NH, NKV=KV, HP=_pow2(NH), KP=_pow2(KV), BT=rt, HD=HD, NEOX=gemma,
                                   QK_NORM=gemma, STAGES=b.norm_stages)),
        ("sink_rope_kernel", dict(NKV=KV, KP=_pow2(KV), BT=rt, HD=HD, NEOX=gemma)),
        ("attn_scores_kernel", dict(NH=NH, NKV=KV, G=G, GP=_pow2(G), BT=b.attn_tokens, BS=b.slots, HD=HD,
                                    GA=head_split(G))),
        ("attn_softmax_kernel", dict(NKV=KV, GP=_pow2(G), BT=b.attn_tokens, ROWS=b.soft_rows, STAGES=b.soft_stages)),
    ]
    for stages in sorted({b.stages, 3}):  # 3: the pipelined loop of --sweep
        for unroll in sorted({b.unroll, 2}):  # 2: the unrolled loop --sweep tries
            specs.append(("attn_values_kernel", dict(NH=NH, NKV=KV, G=G, GP=_pow2(G), BT=b.attn_tokens, BD=b.dims,
                                                     STAGES=stages, HD=HD, UNROLL=unroll, QUANT=b.values_quantize)))
    return [KernelSpec(name, tuple(c.items())) for name, c in specs]


def smollm2_specs(blocks=None) -> list[KernelSpec]:
    """Every kernel launch of a SmolLM2 step."""
    return step_specs(SMOLLM2, blocks)


def gemma3_specs(blocks=None) -> list[KernelSpec]:
    """Every kernel launch of a Gemma 3 270M step."""
    return step_specs(GEMMA3_270M, blocks)


def mixer_specs() -> list[KernelSpec]:
    """Every kernel launch of the GPU's mixer (lmzip.gpu.mixer), each variant."""
    from .mix_kernels import launch_variants

    return [KernelSpec(name, tuple(c.items()), "mix_kernels") for name, c in launch_variants()]


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
