"""The ``.lmz`` container, version 3: packing and unpacking, nothing else.

Layout (all integers little-endian; docs/format.md is the reference)::

    stream header   magic(4) version(1) flags(1) params_len(2) model_sha256(32)
                    params(params_len) header_crc(4)
    chunk record*   raw_len(4) n_tokens(4) payload_len(4) data_crc(4) method(1)
                    record_crc(4) payload(payload_len)
    end record      zero(4) n_chunks(4) original_len(8) index(17 * n_chunks)
                    index_crc(4) end_size(4) end_magic(4)

``method`` says how a chunk's payload is coded: by the stream's model (range-coded
tokens), stored as is, or by LZMA (binary data the model would code worse); its high
bit marks the first chunk of a *lockstep group*.  Chunks with ``n_tokens > 0`` are
*scheduled*: they were run through the model together with the other scheduled chunks
of their group, one batch per token (a scheduled chunk that came out smaller by LZMA
is stored so, and the decoder replays its tokens to keep the batches the same).
Version 2 files (no groups: every model chunk alone) are still read.

``model_sha256`` (the SHA-256 of the model file, zeros for built-in models) and
``params`` (canonical JSON, sorted keys, no spaces: the model's name and every
setting that changes probabilities) together are the model fingerprint.  The
range coder cannot notice damaged input, so every part carries a CRC-32 and each
chunk the CRC-32 of its original bytes.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from .errors import CorruptError, FormatError, TruncatedError

__all__ = [
    "MAGIC",
    "END_MAGIC",
    "VERSION",
    "MAX_CHUNK_SIZE",
    "METHOD_MODEL",
    "METHOD_STORED",
    "METHOD_LZMA",
    "METHOD_NAMES",
    "GROUP_START",
    "READ_VERSIONS",
    "CONTAINER_PARAMS",
    "NO_MODEL_PARAMS",
    "StreamHeader",
    "ChunkInfo",
    "EndRecord",
    "fingerprint",
    "pack_header",
    "parse_header",
    "header_size",
    "pack_chunk_record",
    "parse_chunk_record",
    "pack_end_record",
    "parse_end_record",
    "payload_limit",
]

MAGIC = b"\x89LMZ"  # high bit first, as PNG: catches 7-bit mangling
END_MAGIC = b"LMZE"
VERSION = 3
#: versions this lmzip reads (2: before lockstep groups; each model chunk is coded alone)
READ_VERSIONS = (2, 3)
MAX_CHUNK_SIZE = 1 << 30  # a decoder refuses larger chunks: no allocation from untrusted sizes
MAX_PARAMS_LEN = 0xFFFF

#: the params of a stream whose chunks use no model (all stored or LZMA): it decompresses
#: without loading one; model_sha256 is zeros
NO_MODEL_PARAMS: dict[str, Any] = {}

#: chunk coding methods (the ``method`` byte of a chunk record)
METHOD_MODEL = 0  # the stream's model and the range coder: n_tokens symbols
METHOD_STORED = 1  # the original bytes, as they are
METHOD_LZMA = 2  # LZMA2 (lmzip/classic.py): for data the model would code worse
METHOD_NAMES = {METHOD_MODEL: "model", METHOD_STORED: "stored", METHOD_LZMA: "lzma"}
#: high bit of the method byte (version 3): this scheduled chunk starts a lockstep group
GROUP_START = 0x80

#: header params that describe the container, not the model (not part of the
#: fingerprint a model is checked against): the chunk size and the lockstep width
CONTAINER_PARAMS = ("chunk_size", "streams")

_FIXED = struct.Struct("<4sBBH32s")  # magic, version, flags, params_len, model_sha256
_CHUNK = struct.Struct("<IIIIB")  # raw_len, n_tokens, payload_len, data_crc, method
_CRC = struct.Struct("<I")
_END_HEAD = struct.Struct("<IIQ")  # zero, n_chunks, original_len
_END_TAIL = struct.Struct("<I4s")  # end_size, end_magic

CHUNK_RECORD_SIZE = _CHUNK.size + _CRC.size
END_HEAD_SIZE = _END_HEAD.size
END_TAIL_SIZE = _END_TAIL.size


def _crc(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def canonical_json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def fingerprint(model_sha256: bytes, params: dict[str, Any]) -> bytes:
    """One digest for the model file and every setting that changes probabilities."""
    return hashlib.sha256(model_sha256 + canonical_json(params)).digest()


def payload_limit(raw_len: int) -> int:
    """Largest payload a chunk of ``raw_len`` bytes can legitimately have.

    A token costs at most 24 bits (the smallest quantized probability is 2**-24) and
    covers at least one byte, so 3 bytes per input byte plus the coder's flush words.
    """
    return 3 * raw_len + 16


@dataclass(frozen=True)
class StreamHeader:
    model_sha256: bytes
    params: dict[str, Any]
    flags: int = 0
    version: int = VERSION

    @property
    def fingerprint(self) -> bytes:
        return fingerprint(self.model_sha256, self.params)

    @property
    def names_no_model(self) -> bool:
        """True for a stream that uses no model (no chunk may be model-coded)."""
        return self.params == NO_MODEL_PARAMS and not any(self.model_sha256)


@dataclass(frozen=True)
class ChunkInfo:
    raw_len: int
    #: symbols coded (METHOD_MODEL), 0 for the other methods
    n_tokens: int
    payload_len: int
    data_crc: int
    method: int = METHOD_MODEL
    #: first chunk of a lockstep group (version 3; see ``scheduled``)
    starts_group: bool = False

    @property
    def method_name(self) -> str:
        return METHOD_NAMES.get(self.method, f"unknown ({self.method})")

    @property
    def scheduled(self) -> bool:
        """Run through the model in its group: model-coded, or LZMA/stored after the model ran."""
        return self.n_tokens > 0

    def method_byte(self) -> int:
        return self.method | (GROUP_START if self.starts_group else 0)

    def opens_group(self, version: int) -> bool:
        """Starts a lockstep group in a stream of format ``version`` (version 2 had no
        groups: every model chunk was coded alone)."""
        return self.starts_group or (version == 2 and self.method == METHOD_MODEL)


@dataclass(frozen=True)
class EndRecord:
    chunks: tuple[ChunkInfo, ...]
    original_len: int


# ---------------------------------------------------------------------------- header


def pack_header(model_sha256: bytes, params: dict[str, Any]) -> bytes:
    blob = canonical_json(params)
    if len(blob) > MAX_PARAMS_LEN:
        raise ValueError("model parameters too long for the header")
    if len(model_sha256) != 32:
        raise ValueError("model_sha256 must be 32 bytes")
    head = _FIXED.pack(MAGIC, VERSION, 0, len(blob), model_sha256) + blob
    return head + _CRC.pack(_crc(head))


def header_size(prefix: bytes) -> int | None:
    """Total header size once its first 8 bytes are known, else ``None``."""
    _check_magic(prefix)
    if len(prefix) < 8:
        return None
    params_len = struct.unpack_from("<H", prefix, 6)[0]
    return _FIXED.size + params_len + _CRC.size


def _check_magic(data: bytes) -> None:
    n = min(len(data), len(MAGIC))
    if data[:n] != MAGIC[:n]:
        raise FormatError("not an lmzip file (bad magic bytes)")


def parse_header(data: bytes) -> StreamHeader:
    """Parse a stream header from the start of ``data`` (which may hold more)."""
    _check_magic(data)
    if len(data) < 8:
        raise TruncatedError("input ends inside the lmzip stream header")
    version = data[4]
    if version not in READ_VERSIONS:
        raise FormatError(f"unsupported lmzip format version {version} "
                          f"(this lmzip reads versions {', '.join(map(str, READ_VERSIONS))})")
    size = header_size(data)
    assert size is not None
    if len(data) < size:
        raise TruncatedError("input ends inside the lmzip stream header")
    body = data[: size - _CRC.size]
    if _CRC.unpack_from(data, size - _CRC.size)[0] != _crc(body):
        raise CorruptError("stream header is damaged (header CRC mismatch)")
    _, _, flags, params_len, model_sha256 = _FIXED.unpack_from(data)
    if flags != 0:
        raise FormatError(f"unsupported lmzip header flags 0x{flags:02x}")
    blob = body[_FIXED.size : _FIXED.size + params_len]
    try:
        params = json.loads(blob.decode("ascii"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: [[[[...
        raise CorruptError(f"stream header parameters are not valid JSON: {exc}") from None
    if not isinstance(params, dict):
        raise CorruptError("stream header parameters are not a JSON object")
    return StreamHeader(model_sha256=model_sha256, params=params, flags=flags, version=version)


# ---------------------------------------------------------------------------- chunks


def pack_chunk_record(info: ChunkInfo, payload: bytes) -> bytes:
    if not 0 < info.raw_len <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk size {info.raw_len} out of range")
    if len(payload) != info.payload_len:
        raise ValueError("payload length does not match the chunk info")
    validate_chunk_info(info, ValueError)
    head = _CHUNK.pack(info.raw_len, info.n_tokens, info.payload_len, info.data_crc, info.method_byte())
    return head + _CRC.pack(_crc(head)) + payload


def parse_chunk_record(data: bytes, offset: int = 0) -> ChunkInfo | None:
    """Parse the 21-byte record head at ``offset``.

    Returns ``None`` when the head is the start of the end record (raw_len 0).
    Needs at least 4 bytes; at least 21 unless it is the end record.
    """
    if len(data) - offset < 4:
        raise TruncatedError("input ends before the end of the lmzip stream")
    if _CRC.unpack_from(data, offset)[0] == 0:
        return None
    if len(data) - offset < CHUNK_RECORD_SIZE:
        raise TruncatedError("input ends inside a chunk header")
    fields = _CHUNK.unpack_from(data, offset)
    stored_crc = _CRC.unpack_from(data, offset + _CHUNK.size)[0]
    if stored_crc != _crc(data[offset : offset + _CHUNK.size]):
        raise CorruptError("chunk header is damaged (CRC mismatch)")
    info = _info(fields)
    validate_chunk_info(info)
    return info


def _info(fields: tuple[int, int, int, int, int]) -> ChunkInfo:
    raw_len, n_tokens, payload_len, data_crc, method = fields
    return ChunkInfo(raw_len, n_tokens, payload_len, data_crc, method & ~GROUP_START, bool(method & GROUP_START))


def validate_chunk_info(info: ChunkInfo, error: type[Exception] = CorruptError) -> None:
    """Refuse sizes no compressor writes, before anything is allocated or decoded."""
    if info.raw_len > MAX_CHUNK_SIZE:
        raise error(f"chunk declares {info.raw_len} bytes, above the limit of {MAX_CHUNK_SIZE}")
    if info.raw_len == 0:
        raise error("chunk declares zero bytes")
    if info.payload_len > payload_limit(info.raw_len):
        raise error(f"chunk declares an impossible payload of {info.payload_len} bytes for {info.raw_len} bytes")
    if info.n_tokens > info.raw_len:  # every token spells at least one byte
        raise error(f"chunk declares {info.n_tokens} tokens for {info.raw_len} bytes")
    if info.starts_group and not info.scheduled:
        raise error("chunk starts a lockstep group but declares no tokens")
    if info.method == METHOD_MODEL:
        if info.n_tokens == 0:
            raise error(f"chunk declares {info.n_tokens} tokens for {info.raw_len} bytes")
        if info.payload_len % 4:
            raise error(f"chunk declares an impossible payload of {info.payload_len} bytes "
                        f"(not whole 32-bit words)")
    elif info.method in (METHOD_STORED, METHOD_LZMA):
        if info.method == METHOD_STORED and info.payload_len != info.raw_len:
            raise error(f"stored chunk declares {info.payload_len} payload bytes for {info.raw_len} bytes")
    else:
        raise error(f"chunk uses unknown coding method {info.method}")


# ---------------------------------------------------------------------------- end record


def pack_end_record(chunks: list[ChunkInfo]) -> bytes:
    original_len = sum(c.raw_len for c in chunks)
    body = _END_HEAD.pack(0, len(chunks), original_len)
    body += b"".join(_CHUNK.pack(c.raw_len, c.n_tokens, c.payload_len, c.data_crc, c.method_byte()) for c in chunks)
    body += _CRC.pack(_crc(body))
    return body + _END_TAIL.pack(len(body) + END_TAIL_SIZE, END_MAGIC)


def end_record_size(prefix: bytes, offset: int = 0, chunks_read: int | None = None) -> int | None:
    """Total end record size once its first 16 bytes are known, else ``None``.

    With ``chunks_read`` (the chunks the reader has seen), a declared chunk count that
    differs is refused at once: the index size is never taken from an untrusted field.
    """
    if len(prefix) - offset < END_HEAD_SIZE:
        return None
    n_chunks = _END_HEAD.unpack_from(prefix, offset)[1]
    if chunks_read is not None and n_chunks != chunks_read:
        raise CorruptError(f"end record (index) is damaged: it lists {n_chunks} chunks, "
                           f"the stream has {chunks_read}")
    return END_HEAD_SIZE + _CHUNK.size * n_chunks + _CRC.size + END_TAIL_SIZE


def parse_end_record(data: bytes, offset: int = 0) -> EndRecord:
    size = end_record_size(data, offset)
    if size is None or len(data) - offset < size:
        raise TruncatedError("input ends inside the lmzip end record (index)")
    zero, n_chunks, original_len = _END_HEAD.unpack_from(data, offset)
    if zero != 0:
        raise CorruptError("end record (index) is damaged (bad marker)")
    crc_at = offset + size - END_TAIL_SIZE - _CRC.size
    if _CRC.unpack_from(data, crc_at)[0] != _crc(data[offset:crc_at]):
        raise CorruptError("end record (index) is damaged (CRC mismatch)")
    end_size, end_magic = _END_TAIL.unpack_from(data, crc_at + _CRC.size)
    if end_magic != END_MAGIC or end_size != size:
        raise CorruptError("end record (index) is damaged (bad trailer)")
    chunks = tuple(
        _info(_CHUNK.unpack_from(data, offset + END_HEAD_SIZE + i * _CHUNK.size)) for i in range(n_chunks)
    )
    for c in chunks:
        validate_chunk_info(c)
    if sum(c.raw_len for c in chunks) != original_len:
        raise CorruptError("end record (index) is inconsistent: chunk sizes do not add up")
    return EndRecord(chunks=chunks, original_len=original_len)
