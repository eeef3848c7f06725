"""The ``.lmz`` container, versions 2 to 4: packing and unpacking, nothing else.

Version 4 (written by default; docs/format.md is the reference) is the compact one::

    stream header   magic(4) version(1)=4 code(1) [container(varint)]
                    [check(4) | model_sha256(32) params_len(varint) params]
    chunk record*   tag(varint) n_tokens(varint) payload_len(varint) data_crc(4)
                    record_crc(4) payload(payload_len)
    end record      0x00 n_chunks(varint) [crc(4) | index_len(varint) index crc(4) end_size(4)]

``code`` names the model and all its settings from a frozen table (:data:`PRESETS`), or
says that no model is used, or that the SHA-256 and JSON follow in full; ``check`` is the
first 4 bytes of the preset's fingerprint.  The container field is
``(streams - 1) + 64 * chunk``; a group wider than 64 sets the :data:`WIDE` flag on the
code and writes ``chunk(varint) streams-65(varint)`` instead.  The header has no CRC of its own: the CRC of
the first record after it (a chunk head, or the end record of an empty stream) covers
the header too.  Two kinds of codes describe a stream of exactly one chunk (most small
files), which then has no end record:

    model, one chunk  magic(4) version(1)=4 code|0x80(1) [check(4) | model_sha256(32)
                      params_len(varint) params]  chunk record
    no model, one     magic(4) version(1)=4 code(1)=8..10 raw_len(varint)
    chunk             [payload_len(varint), code 9 only] data_crc(4) payload

(no container field: the stream is its only chunk; the classic one-chunk form has no
record CRC, as its data CRC checks every field: a damaged one changes what it decodes to).

Versions 2 and 3 (read, and written on request) use this layout::

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
    "METHOD_RUN",
    "METHOD_NAMES",
    "GROUP_START",
    "READ_VERSIONS",
    "WRITE_VERSIONS",
    "PRESETS",
    "CODE_FULL",
    "CODE_NO_MODEL",
    "ONE_CHUNK",
    "WIDE",
    "NARROW_STREAMS",
    "MAX_STREAMS",
    "CODE_ONE_STORED",
    "CODE_ONE_LZMA",
    "CODE_ONE_RUN",
    "CONTAINER_PARAMS",
    "NO_MODEL_PARAMS",
    "StreamHeader",
    "ChunkInfo",
    "EndRecord",
    "fingerprint",
    "pack_header",
    "pack_one_chunk_stream",
    "one_chunk_record",
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
VERSION = 4
#: versions this lmzip reads (2: before lockstep groups; each model chunk is coded alone;
#: 3: the verbose container of lmzip 0.1) and can write (3 and 4)
READ_VERSIONS = (2, 3, 4)
WRITE_VERSIONS = (3, 4)
MAX_CHUNK_SIZE = 1 << 30  # a decoder refuses larger chunks: no allocation from untrusted sizes
MAX_PARAMS_LEN = 0xFFFF

#: the params of a stream whose chunks use no model (all stored or LZMA): it decompresses
#: without loading one; model_sha256 is zeros
NO_MODEL_PARAMS: dict[str, Any] = {}

#: chunk coding methods (the ``method`` byte of a chunk record)
METHOD_MODEL = 0  # the stream's model and the range coder: n_tokens symbols
METHOD_STORED = 1  # the original bytes, as they are
METHOD_LZMA = 2  # LZMA2 (lmzip/classic.py): for data the model would code worse
#: version 4 only: the chunk is one byte repeated raw_len times; the payload is that byte,
#: or empty for 0x00 (a zero byte as payload is damage: one encoding per chunk)
METHOD_RUN = 3
METHOD_NAMES = {METHOD_MODEL: "model", METHOD_STORED: "stored", METHOD_LZMA: "lzma", METHOD_RUN: "run"}
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
    #: version 4: the model code (CODE_FULL, CODE_NO_MODEL or a key of PRESETS)
    code: int | None = None
    #: version 4, presets: the first bytes of the fingerprint the compressor's model had
    check: bytes = b""
    #: the header's bytes (version 4: the first record's CRC covers them too)
    raw: bytes = b""
    #: version 4, one-chunk codes: the stream is one chunk and has no end record
    one_chunk: bool = False
    #: version 4, codes 8 to 10 (one chunk, no model): that chunk's head, read from the header;
    #: its payload follows the header
    chunk: ChunkInfo | None = None

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


def _pack_header_v3(model_sha256: bytes, params: dict[str, Any]) -> bytes:
    blob = canonical_json(params)
    if len(blob) > MAX_PARAMS_LEN:
        raise ValueError("model parameters too long for the header")
    if len(model_sha256) != 32:
        raise ValueError("model_sha256 must be 32 bytes")
    head = _FIXED.pack(MAGIC, 3, 0, len(blob), model_sha256) + blob
    return head + _CRC.pack(_crc(head))


def _header_size_v3(prefix: bytes) -> int | None:
    """Total header size once its first 8 bytes are known, else ``None``."""
    if len(prefix) < 8:
        return None
    params_len = struct.unpack_from("<H", prefix, 6)[0]
    return _FIXED.size + params_len + _CRC.size


def _check_magic(data: bytes) -> None:
    n = min(len(data), len(MAGIC))
    if data[:n] != MAGIC[:n]:
        raise FormatError("not an lmzip file (bad magic bytes)")


def _parse_header_v3(data: bytes, version: int) -> StreamHeader:
    size = _header_size_v3(data)
    assert size is not None
    if len(data) < size:
        raise TruncatedError("input ends inside the lmzip stream header")
    body = data[: size - _CRC.size]
    if _CRC.unpack_from(data, size - _CRC.size)[0] != _crc(body):
        raise CorruptError("stream header is damaged (header CRC mismatch)")
    _, _, flags, params_len, model_sha256 = _FIXED.unpack_from(data)
    if flags != 0:
        raise FormatError(f"unsupported lmzip header flags 0x{flags:02x}")
    params = _parse_params(body[_FIXED.size : _FIXED.size + params_len])
    return StreamHeader(model_sha256=model_sha256, params=params, flags=flags, version=version,
                        raw=bytes(data[:size]))


def _parse_params(blob: bytes) -> dict[str, Any]:
    try:
        params = json.loads(bytes(blob).decode("ascii"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: [[[[...
        raise CorruptError(f"stream header parameters are not valid JSON: {exc}") from None
    if not isinstance(params, dict):
        raise CorruptError("stream header parameters are not a JSON object")
    return params


# ---------------------------------------------------------------------------- chunks


def _pack_chunk_record_v3(info: ChunkInfo, payload: bytes) -> bytes:
    if not 0 < info.raw_len <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk size {info.raw_len} out of range")
    if len(payload) != info.payload_len:
        raise ValueError("payload length does not match the chunk info")
    validate_chunk_info(info, ValueError, version=3)
    head = _CHUNK.pack(info.raw_len, info.n_tokens, info.payload_len, info.data_crc, info.method_byte())
    return head + _CRC.pack(_crc(head)) + payload


def _parse_chunk_record_v3(data: bytes, offset: int = 0) -> ChunkInfo | None:
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
    validate_chunk_info(info, version=3)
    return info


def _info(fields: tuple[int, int, int, int, int]) -> ChunkInfo:
    raw_len, n_tokens, payload_len, data_crc, method = fields
    return ChunkInfo(raw_len, n_tokens, payload_len, data_crc, method & ~GROUP_START, bool(method & GROUP_START))


def validate_chunk_info(info: ChunkInfo, error: type[Exception] = CorruptError, version: int = VERSION) -> None:
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
        if info.payload_len % 4 and version < 4:
            raise error(f"chunk declares an impossible payload of {info.payload_len} bytes "
                        f"(not whole 32-bit words)")
    elif info.method in (METHOD_STORED, METHOD_LZMA):
        if info.method == METHOD_STORED and info.payload_len != info.raw_len:
            raise error(f"stored chunk declares {info.payload_len} payload bytes for {info.raw_len} bytes")
    elif info.method == METHOD_RUN and version >= 4:
        if info.payload_len > 1:
            raise error(f"run chunk declares {info.payload_len} payload bytes (at most 1)")
    else:
        raise error(f"chunk uses unknown coding method {info.method}")


# ---------------------------------------------------------------------------- end record


def _pack_end_record_v3(chunks: list[ChunkInfo]) -> bytes:
    original_len = sum(c.raw_len for c in chunks)
    body = _END_HEAD.pack(0, len(chunks), original_len)
    body += b"".join(_CHUNK.pack(c.raw_len, c.n_tokens, c.payload_len, c.data_crc, c.method_byte()) for c in chunks)
    body += _CRC.pack(_crc(body))
    return body + _END_TAIL.pack(len(body) + END_TAIL_SIZE, END_MAGIC)


def _end_record_size_v3(prefix: bytes, offset: int = 0, chunks_read: int | None = None) -> int | None:
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


def _parse_end_record_v3(data: bytes, offset: int = 0) -> EndRecord:
    size = _end_record_size_v3(data, offset)
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
        validate_chunk_info(c, version=3)
    if sum(c.raw_len for c in chunks) != original_len:
        raise CorruptError("end record (index) is inconsistent: chunk sizes do not add up")
    return EndRecord(chunks=chunks, original_len=original_len)


# ---------------------------------------------------------------------------- version 4
#
# The compact container: varints (LEB128, shortest form only) for lengths and counts, a
# one-byte model code from a frozen table, and no CRC of its own for the header (the
# first record's CRC covers it).  docs/format.md, "Version 4", is the reference.

#: version 4 model codes: the SHA-256 and canonical JSON follow in full
CODE_FULL = 0
#: version 4 model code: no chunk is coded by a model (nothing follows the code)
CODE_NO_MODEL = 1
#: version 4 code flag on CODE_FULL or a preset: the stream is exactly one chunk, so the
#: header has no container field and the stream no end record
ONE_CHUNK = 0x80
#: version 4 code flag on CODE_FULL or a preset (never with ONE_CHUNK): a lockstep group
#: wider than NARROW_STREAMS, so the container field is two varints, ``chunk`` and
#: ``streams - NARROW_STREAMS - 1``.  An lmzip from before it refuses the code ("unknown
#: model code ... written by a newer lmzip"): the old container could not hold the width
WIDE = 0x40
#: version 4 codes of a stream that is one chunk coded without a model, whose head
#: (raw_len, [payload_len,] data_crc) is in the header and whose payload follows it
CODE_ONE_STORED = 8
CODE_ONE_LZMA = 9
CODE_ONE_RUN = 10
_ONE_CHUNK_METHODS = {CODE_ONE_STORED: METHOD_STORED, CODE_ONE_LZMA: METHOD_LZMA, CODE_ONE_RUN: METHOD_RUN}
_ONE_CHUNK_CODES = {m: c for c, m in _ONE_CHUNK_METHODS.items()}
#: bytes of the model fingerprint a preset header keeps (another model or settings is refused)
CHECK_SIZE = 4
#: chunk size written as 0 in the container field (lmzip's default, frozen for version 4)
V4_DEFAULT_CHUNK_SIZE = 1 << 20
#: widest lockstep group the one-varint container field holds (without the WIDE flag):
#: ``(streams - 1) + 64 * chunk``.  FROZEN: every file up to this width is written as before
NARROW_STREAMS = 64
#: widest lockstep group lmzip writes and reads (every version; each stream holds its own
#: model cache, ~48 MB at depth 2048 for SmolLM2): a wider header is refused
MAX_STREAMS = 1024
_MAX_VARINT = 9  # bytes: 63 bits, more than any field needs

_SMOLLM2 = bytes.fromhex("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")
_GEMMA3 = bytes.fromhex("a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818")

#: version 4 model codes -> (model file SHA-256, the model's own params).  FROZEN: a code
#: means these exact settings forever; new defaults get new codes (a file written with
#: settings no code has gets CODE_FULL).  Codes 4 and 5 (llama.cpp) leave out the CPU
#: kernels of the build that wrote the file (``params["kernels"]``, which differ per
#: machine): the header's ``check`` covers them, so another build is still refused.
PRESETS: dict[int, tuple[bytes, dict[str, Any]]] = {
    2: (bytes(32), {"backend": "order1", "model": "order1"}),
    3: (bytes(32), {"backend": "ngram", "mix": "b1", "model": "ngram"}),
    4: (_SMOLLM2, {"backend": "llama.cpp 0.3.36", "context": 2048, "mix": "m2", "model": "smollm2-135m"}),
    5: (_GEMMA3, {"backend": "llama.cpp 0.3.36", "context": 2048, "mix": "m2", "model": "gemma3-270m"}),
    6: (_SMOLLM2, {"backend": "portable 1", "context": 2048, "mix": "m2", "model": "smollm2-135m"}),
    7: (_GEMMA3, {"backend": "portable 1", "context": 2048, "mix": "m2", "model": "gemma3-270m"}),
}
_CODE_OF = {(sha, canonical_json(p)): code for code, (sha, p) in PRESETS.items()}


def pack_varint(value: int) -> bytes:
    if value < 0:
        raise ValueError("varints are unsigned")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _peek_varint(data: bytes, pos: int, what: str = "a length") -> tuple[int, int] | None:
    """(value, position after it), or ``None`` if ``data`` ends first.  Refuses overlong
    and non-shortest encodings: every value has exactly one encoding."""
    value = 0
    for i in range(_MAX_VARINT):
        if pos + i >= len(data):
            return None
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if byte == 0 and i > 0:
                raise CorruptError(f"{what} is damaged (a number in a non-shortest form)")
            return value, pos + i + 1
    raise CorruptError(f"{what} is damaged (a number longer than {_MAX_VARINT} bytes)")


def _read_varint(data: bytes, pos: int, what: str) -> tuple[int, int]:
    got = _peek_varint(data, pos, what)
    if got is None:
        raise TruncatedError(f"input ends inside {what}")
    return got


def model_check(model_sha256: bytes, own_params: dict[str, Any]) -> bytes:
    """The bytes of the fingerprint a version 4 preset header keeps."""
    return fingerprint(model_sha256, own_params)[:CHECK_SIZE]


def preset_code(model_sha256: bytes, own_params: dict[str, Any]) -> int | None:
    """The frozen code of exactly this model file and these settings, if there is one."""
    return _CODE_OF.get((bytes(model_sha256), canonical_json(own_params)))


def _container(params: dict[str, Any]) -> tuple[int, bytes]:
    """The container field of ``params`` and the code flag it needs: one varint up to
    NARROW_STREAMS streams (as lmzip always wrote it), else WIDE and two varints."""
    streams = params.get("streams", 1)
    chunk = params.get("chunk_size", V4_DEFAULT_CHUNK_SIZE)
    if type(streams) is not int or not 1 <= streams <= MAX_STREAMS:
        raise ValueError(f"streams must be between 1 and {MAX_STREAMS} in a version 4 header")
    if type(chunk) is not int or not 1 <= chunk <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be between 1 and {MAX_CHUNK_SIZE}")
    chunk_field = 0 if chunk == V4_DEFAULT_CHUNK_SIZE else chunk
    if streams <= NARROW_STREAMS:
        return 0, pack_varint((streams - 1) + NARROW_STREAMS * chunk_field)
    return WIDE, pack_varint(chunk_field) + pack_varint(streams - NARROW_STREAMS - 1)


def _peek_container(data: bytes, pos: int, wide: bool) -> tuple[int, int, int] | None:
    """(streams, chunk size, position after the field), or ``None`` if ``data`` ends first.
    The width is not checked against MAX_STREAMS here: the header's CRC is checked first."""
    got = _peek_varint(data, pos, "the stream header")
    if got is None:
        return None
    value, pos = got
    if not wide:
        return value % NARROW_STREAMS + 1, value // NARROW_STREAMS or V4_DEFAULT_CHUNK_SIZE, pos
    got = _peek_varint(data, pos, "the stream header")
    if got is None:
        return None
    extra, pos = got
    return NARROW_STREAMS + 1 + extra, value or V4_DEFAULT_CHUNK_SIZE, pos


def _pack_header_v4(model_sha256: bytes, params: dict[str, Any], one_chunk: bool = False) -> bytes:
    if len(model_sha256) != 32:
        raise ValueError("model_sha256 must be 32 bytes")
    own = {k: v for k, v in params.items() if k not in CONTAINER_PARAMS}
    if own == NO_MODEL_PARAMS and not any(model_sha256):
        if one_chunk:
            raise ValueError("a one-chunk stream without a model is written by pack_one_chunk_stream")
        return MAGIC + bytes([4, CODE_NO_MODEL])
    flag, container = (ONE_CHUNK, b"") if one_chunk else _container(params)  # one chunk: no width, no chunk size
    # llama.cpp's kernel family is not in its presets: the check below still covers it
    code = preset_code(model_sha256, {k: v for k, v in own.items() if k != "kernels"})
    if code is not None:
        return MAGIC + bytes([4, code | flag]) + container + model_check(model_sha256, own)
    blob = canonical_json(own)
    if len(blob) > MAX_PARAMS_LEN:
        raise ValueError("model parameters too long for the header")
    return (MAGIC + bytes([4, CODE_FULL | flag]) + container + bytes(model_sha256) + pack_varint(len(blob))
            + blob)


def _pack_one_classic_chunk(info: ChunkInfo, payload: bytes) -> bytes:
    """A whole version 4 stream of one chunk coded without a model (codes 8 to 10)."""
    code = _ONE_CHUNK_CODES.get(info.method)
    if code is None or info.n_tokens or info.starts_group:
        raise ValueError("only an unscheduled stored, LZMA or run chunk is written without a model")
    if info.method == METHOD_RUN:  # the byte itself, also 0x00 (no payload_len to say "empty")
        payload = payload or b"\0"
        info = ChunkInfo(info.raw_len, 0, 1, info.data_crc, METHOD_RUN)
    if len(payload) != info.payload_len:
        raise ValueError("payload length does not match the chunk info")
    validate_chunk_info(info, ValueError, version=4)  # raw_len 1 .. MAX_CHUNK_SIZE among the rest
    length = pack_varint(info.payload_len) if code == CODE_ONE_LZMA else b""
    return MAGIC + bytes([4, code]) + pack_varint(info.raw_len) + length + _CRC.pack(info.data_crc) + payload


def _one_chunk_head(data: bytes) -> tuple[ChunkInfo, int] | None:
    """The chunk head a code 8..10 header holds and the header's size (``None``: more
    bytes needed)."""
    code = data[5]
    got = _peek_varint(data, 6, "the stream header")
    if got is None:
        return None
    raw_len, pos = got
    payload_len = {CODE_ONE_STORED: raw_len, CODE_ONE_RUN: 1}.get(code)
    if payload_len is None:
        got = _peek_varint(data, pos, "the stream header")
        if got is None:
            return None
        payload_len, pos = got
    if len(data) < pos + _CRC.size:
        return None
    info = ChunkInfo(raw_len, 0, payload_len, _CRC.unpack_from(data, pos)[0], _ONE_CHUNK_METHODS[code])
    return info, pos + _CRC.size


def _base_code(code: int) -> int:
    """The model code without the one-chunk and wide flags, checked (a one-chunk stream
    has width 1: the two flags together are no code)."""
    if code in _ONE_CHUNK_METHODS or code == CODE_NO_MODEL:
        return code
    base = code & ~(ONE_CHUNK | WIDE)
    if (base == CODE_FULL or base in PRESETS) and not (code & ONE_CHUNK and code & WIDE):
        return base
    raise FormatError(f"unknown model code {code} in the lmzip stream header "
                      f"(damaged, or written by a newer lmzip)")


def _header_size_v4(data: bytes) -> int | None:
    """The header's own size (without the first record), or ``None`` until known."""
    if len(data) < 6:
        return None
    code = data[5]
    base = _base_code(code)
    if code == CODE_NO_MODEL:
        return 6
    if code in _ONE_CHUNK_METHODS:
        got = _one_chunk_head(data)
        return None if got is None else got[1]
    pos = 6
    if not code & ONE_CHUNK:
        got = _peek_container(data, 6, bool(code & WIDE))
        if got is None:
            return None
        pos = got[2]
    if base != CODE_FULL:
        return pos + CHECK_SIZE
    got = _peek_varint(data, pos + 32, "the stream header")
    if got is None:
        return None
    length, pos = got
    if length > MAX_PARAMS_LEN:
        raise CorruptError("stream header is damaged (impossible parameter length)")
    return pos + length


def _chunk_head_size_v4(data: bytes, offset: int) -> int | None:
    pos = offset
    for _ in range(3):
        got = _peek_varint(data, pos, "a chunk header")
        if got is None:
            return None
        pos = got[1]
    return pos - offset + 8


def _first_unit_size(data: bytes, at: int) -> int | None:
    """Size of the head of the first record after a version 4 header (its CRC covers both)."""
    if len(data) <= at:
        return None
    if data[at] == 0 and not data[5] & ONE_CHUNK:  # the end record of an empty stream
        return _end_record_size_v4(data, at, 0)
    return _chunk_head_size_v4(data, at)


def _parse_header_v4(data: bytes) -> StreamHeader:
    need = header_need(data)
    if need is None or len(data) < need:
        raise TruncatedError("input ends inside the lmzip stream header")
    size = _header_size_v4(data)
    assert size is not None
    code = data[5]
    raw = bytes(data[:size])
    if code in _ONE_CHUNK_METHODS:  # no CRC to check here: the data CRC covers every field
        got = _one_chunk_head(data)
        assert got is not None
        info = got[0]
        validate_chunk_info(info, version=4)
        return StreamHeader(bytes(32), dict(NO_MODEL_PARAMS), version=4, code=code, raw=raw,
                            one_chunk=True, chunk=info)
    if _CRC.unpack_from(data, need - _CRC.size)[0] != _crc(bytes(data[: need - _CRC.size])):
        raise CorruptError("stream header is damaged (CRC mismatch of the header and the record after it)")
    if code == CODE_NO_MODEL:
        return StreamHeader(bytes(32), dict(NO_MODEL_PARAMS), version=4, code=code, raw=raw)
    one_chunk = bool(code & ONE_CHUNK)
    base = _base_code(code)
    extra: dict[str, Any] = {}
    pos = 6
    if not one_chunk:  # one chunk: width 1, and the chunk size says nothing
        got = _peek_container(data, 6, bool(code & WIDE))
        assert got is not None  # header_need read it
        streams, chunk, pos = got
        if streams > MAX_STREAMS:  # the CRC holds: not damage, but more than this lmzip runs
            raise FormatError(f"stream header asks for {streams} lockstep streams (this lmzip reads 1 to "
                              f"{MAX_STREAMS}; written by a newer lmzip?)")
        if chunk > MAX_CHUNK_SIZE:
            raise CorruptError(f"stream header declares a chunk size of {chunk} bytes, above the limit")
        extra["chunk_size"] = chunk
        if streams > 1:  # absent: 1, as in versions 2 and 3
            extra["streams"] = streams
    if base == CODE_FULL:
        sha = raw[pos : pos + 32]
        length, pos = _read_varint(data, pos + 32, "the stream header")
        own = _parse_params(raw[pos : pos + length])
        if any(k in own for k in CONTAINER_PARAMS):
            raise CorruptError("stream header is damaged (container settings inside the model's)")
        return StreamHeader(sha, {**own, **extra}, version=4, code=code, raw=raw, one_chunk=one_chunk)
    sha, own = PRESETS[base]
    return StreamHeader(sha, {**own, **extra}, version=4, code=code, check=raw[pos : pos + CHECK_SIZE], raw=raw,
                        one_chunk=one_chunk)


def _tag(info: ChunkInfo) -> int:
    return info.raw_len << 3 | (4 if info.starts_group else 0) | info.method


def _pack_chunk_record_v4(info: ChunkInfo, payload: bytes, prefix: bytes = b"") -> bytes:
    if not 0 < info.raw_len <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk size {info.raw_len} out of range")
    if len(payload) != info.payload_len:
        raise ValueError("payload length does not match the chunk info")
    if not 0 <= info.method <= 3:
        raise ValueError(f"method {info.method} does not fit a version 4 chunk record")
    validate_chunk_info(info, ValueError, version=4)
    head = (pack_varint(_tag(info)) + pack_varint(info.n_tokens) + pack_varint(info.payload_len)
            + _CRC.pack(info.data_crc))
    return head + _CRC.pack(_crc(prefix + head)) + payload


def _parse_chunk_record_v4(data: bytes, offset: int, prefix: bytes) -> ChunkInfo | None:
    if len(data) <= offset:
        raise TruncatedError("input ends before the end of the lmzip stream")
    if data[offset] == 0:
        return None
    size = _chunk_head_size_v4(data, offset)
    if size is None or len(data) - offset < size:
        raise TruncatedError("input ends inside a chunk header")
    end = offset + size - _CRC.size
    if _CRC.unpack_from(data, end)[0] != _crc(prefix + bytes(data[offset:end])):
        raise CorruptError("chunk header is damaged (CRC mismatch)" if not prefix else
                           "stream header or first chunk header is damaged (CRC mismatch)")
    tag, pos = _read_varint(data, offset, "a chunk header")
    n_tokens, pos = _read_varint(data, pos, "a chunk header")
    payload_len, pos = _read_varint(data, pos, "a chunk header")
    info = ChunkInfo(tag >> 3, n_tokens, payload_len, _CRC.unpack_from(data, pos)[0], tag & 3, bool(tag & 4))
    validate_chunk_info(info, version=4)
    return info


def _end_record_size_v4(data: bytes, offset: int, chunks_read: int | None) -> int | None:
    got = _peek_varint(data, offset + 1, "the end record (index)")
    if got is None:
        return None
    n_chunks, pos = got
    if chunks_read is not None and n_chunks != chunks_read:
        raise CorruptError(f"end record (index) is damaged: it lists {n_chunks} chunks, "
                           f"the stream has {chunks_read}")
    if n_chunks == 0:
        return pos - offset + _CRC.size
    if n_chunks == 1:
        return pos - offset
    got = _peek_varint(data, pos, "the end record (index)")
    if got is None:
        return None
    index_len, pos = got
    if not 3 * n_chunks <= index_len <= 15 * n_chunks:  # three varints of 1 to 5 bytes each
        raise CorruptError(f"end record (index) is damaged: {index_len} bytes cannot index {n_chunks} chunks")
    return pos - offset + index_len + 2 * _CRC.size


def _pack_end_record_v4(chunks: list[ChunkInfo], prefix: bytes = b"") -> bytes:
    body = b"\0" + pack_varint(len(chunks))
    if not chunks:  # the first record after the header: its CRC covers the header too
        return body + _CRC.pack(_crc(prefix + body))
    if len(chunks) == 1:  # no index: each byte is checked against the chunk read
        return body
    index = b"".join(pack_varint(_tag(c)) + pack_varint(c.n_tokens) + pack_varint(c.payload_len) for c in chunks)
    body += pack_varint(len(index)) + index
    body += _CRC.pack(_crc(body))
    return body + _CRC.pack(len(body) + _CRC.size)


def _same_head(a: ChunkInfo, b: ChunkInfo) -> bool:
    return (a.raw_len, a.n_tokens, a.payload_len, a.method, a.starts_group) == \
        (b.raw_len, b.n_tokens, b.payload_len, b.method, b.starts_group)


def _parse_end_record_v4(data: bytes, offset: int, chunks: list[ChunkInfo] | None, prefix: bytes) -> EndRecord:
    if len(data) <= offset:
        raise TruncatedError("input ends inside the lmzip end record (index)")
    if data[offset] != 0:
        raise CorruptError("end record (index) is damaged (bad marker)")
    size = _end_record_size_v4(data, offset, None if chunks is None else len(chunks))
    if size is None or len(data) - offset < size:
        raise TruncatedError("input ends inside the lmzip end record (index)")
    n_chunks, pos = _read_varint(data, offset + 1, "the end record (index)")
    if n_chunks == 0:
        crc_at = offset + size - _CRC.size
        if _CRC.unpack_from(data, crc_at)[0] != _crc(prefix + bytes(data[offset:crc_at])):
            raise CorruptError("end record is damaged (CRC mismatch)" if not prefix else
                               "stream header or end record is damaged (CRC mismatch)")
        return EndRecord(chunks=(), original_len=0)
    if n_chunks == 1:
        if chunks is None:
            raise ValueError("a version 4 stream of one chunk has no index: pass the chunk read")
        return EndRecord(chunks=tuple(chunks), original_len=sum(c.raw_len for c in chunks))
    crc_at = offset + size - 2 * _CRC.size
    if _CRC.unpack_from(data, crc_at)[0] != _crc(bytes(data[offset:crc_at])):
        raise CorruptError("end record (index) is damaged (CRC mismatch)")
    if _CRC.unpack_from(data, crc_at + _CRC.size)[0] != size:
        raise CorruptError("end record (index) is damaged (bad trailer)")
    index_len, pos = _read_varint(data, pos, "the end record (index)")
    entries = []
    for i in range(n_chunks):
        tag, pos = _read_varint(data, pos, "the end record (index)")
        n_tokens, pos = _read_varint(data, pos, "the end record (index)")
        payload_len, pos = _read_varint(data, pos, "the end record (index)")
        crc = chunks[i].data_crc if chunks is not None else None
        info = ChunkInfo(tag >> 3, n_tokens, payload_len, crc, tag & 3, bool(tag & 4))  # type: ignore[arg-type]
        validate_chunk_info(info, version=4)
        entries.append(info)
    if pos != crc_at:
        raise CorruptError("end record (index) is damaged (its entries do not fill it)")
    if chunks is not None:
        if not all(_same_head(a, b) for a, b in zip(entries, chunks)):
            raise CorruptError("end record (index) does not match the chunks read")
        entries = list(chunks)
    return EndRecord(chunks=tuple(entries), original_len=sum(c.raw_len for c in entries))


# ---------------------------------------------------------------------------- any version


def _version_of(data: bytes) -> int | None:
    _check_magic(data)
    if len(data) < 5:
        return None
    version = data[4]
    if version not in READ_VERSIONS:
        raise FormatError(f"unsupported lmzip format version {version} "
                          f"(this lmzip reads versions {', '.join(map(str, READ_VERSIONS))})")
    return version


def pack_header(model_sha256: bytes, params: dict[str, Any], version: int = VERSION) -> bytes:
    """A stream header.  Version 4: without a CRC (the first record's CRC covers it, see
    ``prefix`` of :func:`pack_chunk_record` and :func:`pack_end_record`)."""
    if version == 4:
        return _pack_header_v4(model_sha256, params)
    if version == 3:
        return _pack_header_v3(model_sha256, params)
    raise ValueError(f"lmzip writes format versions {WRITE_VERSIONS}, not {version}")


def header_size(prefix: bytes) -> int | None:
    """The header's own size once enough of it is known (8 bytes for versions 2 and 3),
    else ``None``.  Version 4: without the first record, whose CRC covers the header."""
    version = _version_of(prefix)
    if version is None:
        return None
    return _header_size_v4(prefix) if version == 4 else _header_size_v3(prefix)


def header_need(data: bytes) -> int | None:
    """Bytes :func:`parse_header` needs (version 4: the header and the head of the record
    after it), once ``data`` holds enough to tell, else ``None``."""
    version = _version_of(data)
    if version is None:
        return None
    if version < 4:
        return _header_size_v3(data)
    size = _header_size_v4(data)
    if size is None or data[5] in _ONE_CHUNK_METHODS:  # those hold their chunk's head themselves
        return size
    unit = _first_unit_size(data, size)
    return None if unit is None else size + unit


def parse_header(data: bytes) -> StreamHeader:
    """Parse and check a stream header from the start of ``data`` (which may hold more;
    version 4: at least :func:`header_need` bytes)."""
    version = _version_of(data)
    if version is None or (version < 4 and len(data) < 8):
        raise TruncatedError("input ends inside the lmzip stream header")
    return _parse_header_v4(data) if version == 4 else _parse_header_v3(data, version)


def pack_one_chunk_stream(model_sha256: bytes, params: dict[str, Any], info: ChunkInfo, payload: bytes) -> bytes:
    """A whole version 4 stream of exactly one chunk: a one-chunk code and no end record.

    A chunk coded without a model (zero ``model_sha256`` and ``params`` ``{}``) has its
    head in the header (codes 8 to 10); a model's stream has the ``ONE_CHUNK`` flag on its
    code and an ordinary chunk record, whose CRC covers the header.
    """
    own = {k: v for k, v in params.items() if k not in CONTAINER_PARAMS}
    if own == NO_MODEL_PARAMS and not any(model_sha256):
        return _pack_one_classic_chunk(info, payload)
    head = _pack_header_v4(model_sha256, params, one_chunk=True)
    return head + _pack_chunk_record_v4(info, payload, head)


def one_chunk_record(info: ChunkInfo, payload: bytes) -> tuple[ChunkInfo, bytes]:
    """The chunk of a code 8..10 stream (its head from the header, ``info``, and the
    payload after it) as a chunk record would hold it (a run of 0x00: no payload byte)."""
    if info.method == METHOD_RUN:
        payload = payload.lstrip(b"\0")
        info = ChunkInfo(info.raw_len, 0, len(payload), info.data_crc, METHOD_RUN)
    return info, payload


def pack_chunk_record(info: ChunkInfo, payload: bytes, version: int = VERSION, prefix: bytes = b"") -> bytes:
    """A chunk record.  ``prefix``: the version 4 header, when this is its first record."""
    if version == 4:
        return _pack_chunk_record_v4(info, payload, prefix)
    if prefix:
        raise ValueError("only version 4 records cover the header")
    return _pack_chunk_record_v3(info, payload)


def chunk_head_size(data: bytes, offset: int = 0, version: int = VERSION) -> int | None:
    """Size of the chunk record head at ``offset`` (``None``: more bytes needed)."""
    if version < 4:
        return CHUNK_RECORD_SIZE
    return _chunk_head_size_v4(data, offset)


def is_end_record(data: bytes, offset: int = 0, version: int = VERSION) -> bool | None:
    """Whether the record at ``offset`` is the end record (``None``: more bytes needed)."""
    need = 4 if version < 4 else 1
    if len(data) - offset < need:
        return None
    return not any(data[offset : offset + need])


def parse_chunk_record(data: bytes, offset: int = 0, version: int = VERSION, prefix: bytes = b"") -> ChunkInfo | None:
    """Parse the record head at ``offset``; ``None`` for the end record's marker."""
    if version == 4:
        return _parse_chunk_record_v4(data, offset, prefix)
    return _parse_chunk_record_v3(data, offset)


def pack_end_record(chunks: list[ChunkInfo], version: int = VERSION, prefix: bytes = b"") -> bytes:
    if version == 4:
        return _pack_end_record_v4(chunks, prefix)
    if prefix:
        raise ValueError("only version 4 records cover the header")
    return _pack_end_record_v3(chunks)


def end_record_size(prefix: bytes, offset: int = 0, chunks_read: int | None = None,
                    version: int = VERSION) -> int | None:
    """Total end record size once its head is known, else ``None``.

    With ``chunks_read`` (the chunks the reader has seen), a declared chunk count that
    differs is refused at once: the index size is never taken from an untrusted field.
    """
    if version == 4:
        return _end_record_size_v4(prefix, offset, chunks_read)
    return _end_record_size_v3(prefix, offset, chunks_read)


def parse_end_record(data: bytes, offset: int = 0, version: int = VERSION,
                     chunks: list[ChunkInfo] | None = None, prefix: bytes = b"") -> EndRecord:
    """Parse and check the end record at ``offset``.  Version 4 needs ``chunks`` (those
    read) for a stream of one chunk, which has no index, and checks the index against
    them; ``prefix``: the header, for an empty stream's end record."""
    if version == 4:
        return _parse_end_record_v4(data, offset, chunks, prefix)
    end = _parse_end_record_v3(data, offset)
    if chunks is not None and list(end.chunks) != list(chunks):
        raise CorruptError("end record (index) does not match the chunks read")
    return end
