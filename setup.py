"""Build the optional C extensions lmzip._cdf, lmzip._mix, lmzip._ngram, lmzip._engine, lmzip._adapt
and lmzip._crashguard (metadata lives in pyproject.toml).

-ffp-contract=off keeps every a*b+c two correctly rounded operations: the
quantization rule must give the same bits as the numpy reference on every CPU.
Without a compiler the build continues and lmzip uses numpy (optional=True).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "lmzip._cdf",
            sources=["native/cdf.c"],
            depends=["native/cdf_rule.h"],
            extra_compile_args=["-O3", "-ffp-contract=off", "-fno-trapping-math", "-fno-fast-math", "-std=c99"],
            optional=True,
        ),
        # the mixer's vocabulary-wide work for a whole lockstep group, on several threads
        Extension(
            "lmzip._mix",
            sources=["native/mix.c"],
            depends=["native/cdf_rule.h"],
            extra_compile_args=["-O3", "-ffp-contract=off", "-fno-trapping-math", "-fno-fast-math", "-std=c99",
                                "-pthread"],
            extra_link_args=["-pthread"],
            optional=True,
        ),
        # the n-gram and match statistics (lmzip/predictors/ngram.py) in C
        Extension("lmzip._ngram", sources=["native/ngram.c"],
                  extra_compile_args=["-O2", "-ffp-contract=off", "-fno-fast-math", "-std=c99"], optional=True),
        # one line on stderr instead of a bare "Segmentation fault" when a model engine crashes
        Extension("lmzip._crashguard", sources=["native/crashguard.c"], extra_compile_args=["-O2", "-std=c99"],
                  optional=True),
        # online adaptation of the output rows on the engine's hidden state (issue 20)
        Extension("lmzip._adapt", sources=["native/adapt.c"],
                  extra_compile_args=["-O2", "-ffp-contract=off", "-fno-fast-math", "-std=c99"], optional=True),
        # the portable inference engine (docs/engine.md): SIMD kernels are chosen at run
        # time (target attributes), so this baseline build runs on any x86-64/aarch64 CPU
        Extension(
            "lmzip._engine",
            sources=["native/engine/pyengine.c", "native/engine/engine.c"],
            depends=["native/engine/engine.h", "native/engine/attn_simd.inc", "native/engine/vec_undef.inc",
                     "native/engine/kernels_x86.inc",
                     "native/engine/kernels_neon.inc",
                     "native/engine/gemma.inc"],
            extra_compile_args=["-O3", "-ffp-contract=off", "-fno-fast-math", "-fno-math-errno", "-std=c11",
                                "-pthread", "-Wno-psabi"],
            extra_link_args=["-pthread", "-lm"],
            optional=True,
        ),
    ]
)
