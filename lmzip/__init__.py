"""lmzip: lossless compression of text with the probabilities of a language model.

>>> import lmzip
>>> packed = lmzip.compress(b"hello, hello, hello", model="order1")
>>> lmzip.decompress(packed)
b'hello, hello, hello'

The pipeline (bytes -> tokens -> probabilities -> CDF -> range coder -> container) is
in the modules of ``lmzip`` itself, the models that give the probabilities in
``lmzip.predictors``, the measuring tools in ``lmzip.measure`` and the command line
in ``lmzip.cli`` (docs/how-it-works.md, "The code").
"""

from .core import DEFAULT_CHUNK_SIZE, LMZipCompressor, LMZipDecompressor, compress, decompress
from .errors import (
    ChecksumError,
    CorruptError,
    FormatError,
    LMZipError,
    ModelMismatchError,
    ModelNotFoundError,
    TruncatedError,
)

__version__ = "0.1.0"

__all__ = [
    "compress",
    "decompress",
    "decompress_range",
    "open",
    "LMZipFile",
    "LMZipCompressor",
    "LMZipDecompressor",
    "DEFAULT_CHUNK_SIZE",
    "LMZipError",
    "FormatError",
    "CorruptError",
    "ChecksumError",
    "TruncatedError",
    "ModelMismatchError",
    "ModelNotFoundError",
    "__version__",
]

from .fileobj import LMZipFile, open  # noqa: E402  (after the names it uses)
from .ranges import decompress_range  # noqa: E402
