"""native/cdf.c and native/mix.c compiled three ways give the same bits: the plain
scalar loops (-DLMZIP_SCALAR, what a compiler without vector extensions builds), 16-byte
SSE2 vectors only (-DLMZIP_NO_CLONES: one code path, no AVX2 or AVX-512 clone), and the
installed modules (which pick their AVX-512 or AVX2 clone on CPUs that have it).  This
is what makes files independent of the CPU's vector width."""

from __future__ import annotations

import importlib.util
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from lmzip import cdf

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {"scalar": ["-DLMZIP_SCALAR", "-DLMZIP_NO_CLONES"], "sse2": ["-DLMZIP_NO_CLONES"]}


def _build(name: str, macros: list[str], tmp: Path, module: str = "_cdf"):
    """Compile native/<module>.c with the package's flags plus ``macros``; skips without a compiler."""
    from setuptools import Distribution
    from setuptools.command.build_ext import build_ext

    try:
        from distutils.errors import CCompilerError, DistutilsError
    except ImportError:  # pragma: no cover - Python 3.12+ without distutils
        from setuptools.errors import CCompilerError
        from setuptools.errors import PlatformError as DistutilsError

    from setuptools import Extension

    ext = Extension(f"lmzip.{module}", [str(ROOT / "native" / f"{module[1:]}.c")],
                    extra_compile_args=["-O3", "-ffp-contract=off", "-fno-trapping-math", "-fno-fast-math",
                                        "-std=c99", "-pthread", *macros], extra_link_args=["-pthread"])
    cmd = build_ext(Distribution({"ext_modules": [ext]}))
    cmd.build_temp = str(tmp / name / "tmp")
    cmd.build_lib = str(tmp / name / "lib")
    cmd.ensure_finalized()
    try:
        cmd.run()
    except (CCompilerError, DistutilsError, OSError) as exc:
        pytest.skip(f"no working C compiler: {exc}")
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    path = tmp / name / "lib" / "lmzip" / f"{module}{suffix}"
    spec = importlib.util.spec_from_file_location(f"lmzip.{module}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    if cdf._cdf is None:
        pytest.fail("the C extension lmzip._cdf is not built")
    tmp = tmp_path_factory.mktemp("cdf-builds")
    return {"installed": cdf._cdf, **{name: _build(name, macros, tmp) for name, macros in VARIANTS.items()}}


def _cases():
    rng = np.random.default_rng(2026)
    for n in (2, 3, 7, 8, 9, 15, 17, 1000, 49_173, 262_144):
        for scale in (0.0, 0.5, 3.0, 30.0, 1e4):
            x = rng.normal(size=n) * scale
            if n > 8 and scale == 3.0:  # specials scattered through the vector body and the tail
                idx = rng.integers(0, n, size=6)
                x[idx] = [np.nan, -np.inf, x.max(), -1e300, np.nan, x.max()]
            with np.errstate(over="ignore"):  # -1e300 becomes -inf in float32, as intended
                yield x.astype(np.float32)
            yield x
    yield np.array([np.inf, 0.0, np.inf, np.nan, -np.inf, 1.0, 2.0, 3.0, np.inf])
    yield np.full(11, -np.inf)
    yield np.array([np.nan] * 9 + [0.0])


def test_every_build_gives_the_same_bits(builds):
    for x in _cases():
        want = np.empty(len(x))
        want_top, want_sum = cdf._quantize_numpy(x, want)
        for name, module in builds.items():
            got = np.empty(len(x))
            top, total = module.quantize(x, got)
            assert np.array_equal(got, want), (name, len(x), x.dtype)
            assert total == want_sum and (top == want_top or (np.isnan(top) and np.isnan(want_top))), name


def test_every_build_expects_the_same_bits(builds):
    rng = np.random.default_rng(7)
    for x in _cases():
        q = np.empty(len(x))
        cdf._quantize_numpy(rng.normal(size=len(x)), q)
        want = cdf._expect_numpy(q, x)
        for name, module in builds.items():
            assert module.expect(q, x) == want, (name, len(x), x.dtype)


@pytest.fixture(scope="module")
def mix_builds(tmp_path_factory):
    installed = pytest.importorskip("lmzip._mix")
    tmp = tmp_path_factory.mktemp("mix-builds")
    return {"installed": installed, **{name: _build(name, macros, tmp, "_mix") for name, macros in VARIANTS.items()}}


def test_every_mix_build_gives_the_same_bits(mix_builds):
    rng = np.random.default_rng(8)
    for x in _cases():
        n = len(x)
        if n < 2:
            continue
        bias = rng.normal(scale=0.5, size=n)
        tokens = rng.choice(n, size=min(n, 5), replace=False).astype(np.int64)
        adds = rng.normal(size=len(tokens))
        q_in = np.empty(n)
        cdf._quantize_numpy(rng.normal(size=n), q_in)
        results = {}
        for name, module in mix_builds.items():
            s, q, b = np.empty(n), np.empty(n), bias.copy()
            (dist,) = module.distributions([(x, 1.25, bias, tokens, adds, s, q)], 2)
            (expected,) = module.learn([(q_in, x, b, int(tokens[0]), 0.01 / cdf.TOTAL, 0.01)], 2)
            results[name] = (s.tobytes(), q.tobytes(), np.array([*dist, expected]), b.tobytes())
        want = results.pop("installed")
        for name, got in results.items():
            assert got[0] == want[0] and got[1] == want[1] and got[3] == want[3], (name, n, x.dtype)
            assert np.array_equal(got[2], want[2], equal_nan=True), (name, n)
