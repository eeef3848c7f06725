"""The classic compressors lmzip is measured against, through Python libraries.

gzip, bzip2 and xz come with Python; zstd and brotli need the ``zstandard`` and
``brotli`` packages (``pip install "lmzip[bench]"``).  Each is run at its
strongest usual setting, as a user would call it from the command line.

>>> gz = CLASSIC["gzip -9"]
>>> gz.decompress(gz.compress(b"abc" * 100)) == b"abc" * 100
True
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import zlib
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Classic", "CLASSIC", "NAMES", "available"]


@dataclass(frozen=True)
class Classic:
    name: str
    compress: Callable[[bytes], bytes]
    decompress: Callable[[bytes], bytes]
    #: library and version: part of the results cache key
    version: str


def _zstd() -> Classic | None:
    try:
        import zstandard
    except ImportError:
        return None
    return Classic("zstd -19", lambda d: zstandard.ZstdCompressor(level=19).compress(d),
                   lambda d: zstandard.ZstdDecompressor().decompress(d),
                   f"zstandard {zstandard.__version__} (zstd {zstandard.ZSTD_VERSION})")


def _brotli() -> Classic | None:
    try:
        import brotli
    except ImportError:
        return None
    return Classic("brotli -q 11", lambda d: brotli.compress(d, quality=11), brotli.decompress,
                   f"brotli {getattr(brotli, '__version__', '?')}")


def _all() -> dict[str, Classic | None]:
    # gzip with mtime=0 so the output does not depend on the clock; xz -9e is PRESET_EXTREME
    return {
        "gzip -9": Classic("gzip -9", lambda d: gzip.compress(d, 9, mtime=0), gzip.decompress,
                           f"zlib {zlib.ZLIB_RUNTIME_VERSION}"),
        "bzip2 -9": Classic("bzip2 -9", lambda d: bz2.compress(d, 9), bz2.decompress, "bz2"),
        "xz -9e": Classic("xz -9e", lambda d: lzma.compress(d, preset=9 | lzma.PRESET_EXTREME),
                          lzma.decompress, "lzma"),
        "zstd -19": _zstd(),
        "brotli -q 11": _brotli(),
    }


#: the compressors whose library is installed, by name
CLASSIC: dict[str, Classic] = {k: v for k, v in _all().items() if v is not None}
#: every name, installed or not, in table order
NAMES = list(_all())


def available() -> tuple[list[Classic], list[str]]:
    """(installed compressors, names of the missing ones)."""
    return [CLASSIC[n] for n in NAMES if n in CLASSIC], [n for n in NAMES if n not in CLASSIC]
