"""Build the optional C extensions lmzip._cdf and lmzip._crashguard (metadata lives in pyproject.toml).

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
            extra_compile_args=["-O3", "-ffp-contract=off", "-fno-trapping-math", "-fno-fast-math", "-std=c99"],
            optional=True,
        ),
        # one line on stderr instead of a bare "Segmentation fault" when a model engine crashes
        Extension("lmzip._crashguard", sources=["native/crashguard.c"], extra_compile_args=["-O2", "-std=c99"],
                  optional=True),
    ]
)
