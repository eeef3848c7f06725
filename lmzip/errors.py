"""The one exception hierarchy of lmzip.

Every problem with compressed input (not an lmzip file, damaged, truncated, made
with another model) raises a subclass of :class:`LMZipError` whose message says
what is wrong.  Bad arguments raise the usual ``ValueError``/``TypeError``.
"""

from __future__ import annotations

__all__ = [
    "LMZipError",
    "FormatError",
    "CorruptError",
    "ChecksumError",
    "TruncatedError",
    "ModelMismatchError",
    "ModelNotFoundError",
]


class LMZipError(Exception):
    """Base class of every error lmzip raises about data or models."""


class FormatError(LMZipError):
    """The input is not an lmzip stream, or uses a version or feature we do not know."""


class CorruptError(LMZipError):
    """The input is an lmzip stream but its structure is damaged."""


class ChecksumError(CorruptError):
    """Decoded data does not match the checksum stored beside it."""


class TruncatedError(LMZipError, EOFError):
    """The input ends before the end of the lmzip stream.

    Also an ``EOFError``, as truncated input is for ``lzma`` and ``gzip``.
    """


class ModelMismatchError(LMZipError):
    """The stream was made with another model or other probability settings."""


class ModelNotFoundError(LMZipError):
    """The requested model is unknown or not installed."""
