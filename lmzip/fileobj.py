"""File objects: :class:`LMZipFile` and :func:`open`, in the shape of ``lzma.LZMAFile``."""

from __future__ import annotations

import builtins
import io
import os
from typing import IO, Any

from .core import DEFAULT_CHUNK_SIZE, LMZipCompressor, ModelArg, iter_decompress

__all__ = ["LMZipFile", "open"]

_READ_SIZE = 1 << 16


class _DecompressReader(io.RawIOBase):
    """Raw reader over concatenated lmzip streams, for io.BufferedReader."""

    def __init__(self, fp: IO[bytes], **decomp_args: Any):
        self._args = decomp_args
        self._chunks = iter_decompress(fp, **decomp_args)
        self._left = memoryview(b"")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        with memoryview(b) as view, view.cast("B") as byte_view:
            if not self._left:
                self._left = memoryview(next(self._chunks, b""))
            n = min(len(byte_view), len(self._left))
            byte_view[:n] = self._left[:n]
            self._left = self._left[n:]
        self._pos += n
        return n

    def tell(self) -> int:
        return self._pos


class LMZipFile(io.BufferedIOBase):
    """A file object that reads or writes ``.lmz`` data.

    Args:
        filename: a path, or a binary file object to wrap.
        mode: ``"r"`` (read), ``"w"`` (write, truncating), ``"x"`` (create) or
            ``"a"`` (append a new stream); ``"b"`` may follow.
        model, context, threads, chunk_size: as for :class:`~lmzip.LMZipCompressor`
            (writing) and :class:`~lmzip.LMZipDecompressor` (reading).

    Reading supports ``read``, ``read1``, ``readline``, iteration and forward
    ``seek``; writing buffers a chunk at a time and codes it.
    """

    def __init__(self, filename: str | bytes | os.PathLike | IO[bytes], mode: str = "r", *,
                 model: ModelArg = None, context: int | None = None, threads: int | None = None,
                 chunk_size: int = DEFAULT_CHUNK_SIZE):
        self._fp: IO[bytes] | None = None
        self._closefp = False
        self._mode = mode.replace("b", "")
        if self._mode not in ("r", "w", "x", "a") or mode.count("b") > 1:
            raise ValueError(f"invalid mode: {mode!r}")
        if isinstance(filename, (str, bytes, os.PathLike)):
            self._fp = builtins.open(filename, self._mode + "b")
            self._closefp = True
        elif hasattr(filename, "read") or hasattr(filename, "write"):
            self._fp = filename
        else:
            raise TypeError("filename must be a str, bytes, os.PathLike or file object")
        self.name = getattr(self._fp, "name", None)
        if self._mode == "r":
            raw = _DecompressReader(self._fp, model=model, threads=threads)
            self._buffer: io.BufferedReader | None = io.BufferedReader(raw)
            self._compressor = None
        else:
            self._buffer = None
            try:
                self._compressor = LMZipCompressor(model, context=context, threads=threads,
                                                   chunk_size=chunk_size)
            except BaseException:
                self.close()
                raise
        self._pos = 0

    # -- state

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")

    def _check_readable(self) -> None:
        self._check_open()
        if self._buffer is None:
            raise io.UnsupportedOperation("file not open for reading")

    def _check_writable(self) -> None:
        self._check_open()
        if self._compressor is None:
            raise io.UnsupportedOperation("file not open for writing")

    @property
    def closed(self) -> bool:
        return self._fp is None

    def readable(self) -> bool:
        self._check_open()
        return self._buffer is not None

    def writable(self) -> bool:
        self._check_open()
        return self._compressor is not None

    def seekable(self) -> bool:
        return self.readable() and self._fp is not None and self._fp.seekable()

    def fileno(self) -> int:
        self._check_open()
        assert self._fp is not None
        return self._fp.fileno()

    def close(self) -> None:
        if self._fp is None:
            return
        try:
            if self._buffer is not None:
                self._buffer.close()
            elif self._compressor is not None:
                self._fp.write(self._compressor.flush())
                self._compressor = None
        finally:
            try:
                if self._closefp:
                    self._fp.close()
            finally:
                self._fp = None
                self._buffer = None
                self._compressor = None

    # -- reading

    def read(self, size: int | None = -1) -> bytes:
        self._check_readable()
        assert self._buffer is not None
        return self._buffer.read(-1 if size is None else size)

    def read1(self, size: int = -1) -> bytes:
        self._check_readable()
        assert self._buffer is not None
        return self._buffer.read1(size if size >= 0 else io.DEFAULT_BUFFER_SIZE)

    def readinto(self, b) -> int:
        self._check_readable()
        assert self._buffer is not None
        return self._buffer.readinto(b)

    def readline(self, size: int | None = -1) -> bytes:
        self._check_readable()
        assert self._buffer is not None
        return self._buffer.readline(-1 if size is None else size)

    def peek(self, size: int = -1) -> bytes:
        self._check_readable()
        assert self._buffer is not None
        return self._buffer.peek(size)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Seek forward by decoding; seeking backward restarts from the beginning (slow)."""
        self._check_readable()
        assert self._buffer is not None and self._fp is not None
        current = self._buffer.tell()
        if whence == io.SEEK_CUR:
            offset = current + offset
        elif whence == io.SEEK_END:
            while self._buffer.read(_READ_SIZE):
                pass
            offset = self._buffer.tell() + offset
        elif whence != io.SEEK_SET:
            raise ValueError(f"invalid whence: {whence}")
        if offset < 0:
            raise ValueError("negative seek position")
        if offset < self._buffer.tell():
            self._fp.seek(0)
            raw: _DecompressReader = self._buffer.raw  # type: ignore[assignment]
            self._buffer = io.BufferedReader(_DecompressReader(self._fp, **raw._args))
        while self._buffer.tell() < offset:
            if not self._buffer.read(min(_READ_SIZE, offset - self._buffer.tell())):
                break
        return self._buffer.tell()

    def tell(self) -> int:
        self._check_open()
        if self._buffer is not None:
            return self._buffer.tell()
        return self._pos

    # -- writing

    def write(self, data) -> int:
        self._check_writable()
        assert self._compressor is not None and self._fp is not None
        with memoryview(data) as view:
            n = view.nbytes
            self._fp.write(self._compressor.compress(view.cast("B")))
        self._pos += n
        return n


def open(filename, mode: str = "rb", *, model: ModelArg = None, context: int | None = None,
         threads: int | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE,
         encoding: str | None = None, errors: str | None = None, newline: str | None = None):
    """Open an ``.lmz`` file in binary or text mode (as ``lzma.open`` does).

    ``mode`` is one of "r", "rb", "w", "wb", "x", "xb", "a", "ab" for binary, or
    "rt", "wt", "xt", "at" for text (wrapped in :class:`io.TextIOWrapper`).
    """
    if "t" in mode:
        if "b" in mode:
            raise ValueError(f"invalid mode: {mode!r}")
    else:
        if encoding is not None:
            raise ValueError("argument 'encoding' not supported in binary mode")
        if errors is not None:
            raise ValueError("argument 'errors' not supported in binary mode")
        if newline is not None:
            raise ValueError("argument 'newline' not supported in binary mode")
    binary = LMZipFile(filename, mode.replace("t", ""), model=model, context=context, threads=threads,
                       chunk_size=chunk_size)
    if "t" in mode:
        encoding = io.text_encoding(encoding)
        return io.TextIOWrapper(binary, encoding, errors, newline)
    return binary
