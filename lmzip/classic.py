"""The classic coders for chunks a language model would code badly: LZMA, or stored.

A ``METHOD_LZMA`` payload is two bytes of settings and a raw LZMA2 stream::

    bcj(1)    branch-call-jump filter before LZMA2: 0 none, 1 x86, 2 SPARC, 3 ARM,
              4 ARM-Thumb, 5 PowerPC, 6 IA-64 (machine code compresses better)
    props(1)  LZMA literal settings, (pb * 5 + lp) * 9 + lc, with lc + lp <= 4, pb <= 4
    data      raw LZMA2 (no .xz container: the chunk record has the length and CRC)

The dictionary size is not stored: both sides derive it from the chunk's length
(``dict_size``), so a damaged record cannot make the decoder reserve more memory
than ``MAX_DICT`` however large its declared length.

A ``METHOD_RUN`` chunk (version 4) is one byte repeated ``raw_len`` times: its payload
is that byte, or nothing for ``0x00`` (zeroed images, sparse regions: LZMA's raw stream
alone takes about 20 bytes for them).

The compressor tries a few settings with xz's strongest preset (``-9e``) and keeps
the smallest; the decoder only reads what was chosen.
"""

from __future__ import annotations

import lzma
import zlib

from . import format as fmt
from .errors import ChecksumError, CorruptError

__all__ = ["compress_classic", "decompress_classic", "dict_size", "MAX_DICT"]

MAX_DICT = 64 << 20  # xz -9's dictionary: the most a classic chunk makes the decoder reserve
_MIN_DICT = 4096  # LZMA2's smallest dictionary
_PRESET = 9 | lzma.PRESET_EXTREME

_BCJ_FILTERS = [None, lzma.FILTER_X86, lzma.FILTER_SPARC, lzma.FILTER_ARM, lzma.FILTER_ARMTHUMB,
                lzma.FILTER_POWERPC, lzma.FILTER_IA64]

# (lc, lp, pb) tried on every chunk: xz's default, then the settings that win on
# byte-oriented data (spreadsheets, images, small texts) in the Canterbury corpus
_LITERAL_SETTINGS = [(3, 0, 2), (0, 0, 0), (1, 0, 0), (4, 0, 0)]
# machine-code signatures that make trying a BCJ filter worthwhile: ELF e_machine, PE
_ELF_MACHINES = {2: 2, 18: 2, 43: 2, 3: 1, 62: 1, 40: 3, 20: 5, 21: 5, 50: 6}  # e_machine -> bcj index

# a chunk that deflate (level 1, ~100 MB/s) shrinks by less than 2 % is stored without
# trying LZMA (~1 MB/s at -9e): random or already-compressed data, where LZMA gains no more
_INCOMPRESSIBLE = 0.98
_SAMPLE = 256 << 10  # bytes on which the literal settings of a larger chunk are chosen


def dict_size(raw_len: int) -> int:
    """LZMA2 dictionary for a chunk of ``raw_len`` bytes: the chunk itself, within bounds."""
    return min(max(raw_len, _MIN_DICT), MAX_DICT)


def _filters(raw_len: int, bcj: int, lc: int, lp: int, pb: int, nice_len: int = 273) -> list[dict]:
    lzma2 = {"id": lzma.FILTER_LZMA2, "preset": _PRESET, "dict_size": dict_size(raw_len),
             "lc": lc, "lp": lp, "pb": pb}
    if nice_len != 273:
        lzma2["nice_len"] = nice_len
    bcj_id = _BCJ_FILTERS[bcj]
    return ([{"id": bcj_id}] if bcj_id is not None else []) + [lzma2]


def _bcj_guess(data: bytes) -> int:
    """The BCJ filter for executables we recognise (ELF by e_machine, PE as x86), else 0."""
    if data[:4] == b"\x7fELF" and len(data) >= 20:
        big_endian = data[5] == 2
        machine = int.from_bytes(data[18:20], "big" if big_endian else "little")
        return _ELF_MACHINES.get(machine, 0)
    if data[:2] == b"MZ" and b"PE\x00\x00" in data[:1024]:
        return 1
    return 0


def _lzma(data: bytes, bcj: int, lc: int, lp: int, pb: int, nice_len: int = 273) -> bytes:
    body = lzma.compress(data, format=lzma.FORMAT_RAW, filters=_filters(len(data), bcj, lc, lp, pb, nice_len))
    return bytes([bcj, (pb * 5 + lp) * 9 + lc]) + body


def looks_incompressible(data: bytes) -> bool:
    """Cheap test (deflate level 1) for already-compressed or random data."""
    return len(zlib.compress(data, 1)) >= _INCOMPRESSIBLE * len(data)


def compress_classic(data: bytes, version: int = fmt.VERSION) -> tuple[int, bytes]:
    """The smallest classic coding of ``data`` (non-empty) for a container of format
    ``version`` (runs need 4): (method, payload)."""
    if version >= 4 and data.count(data[:1]) == len(data):
        return fmt.METHOD_RUN, data[:1].lstrip(b"\0")
    if looks_incompressible(data):
        return fmt.METHOD_STORED, data
    bcj = _bcj_guess(data)
    # the literal settings are chosen on a sample of large chunks (-9e runs at ~1 MB/s)
    sample = data if len(data) <= _SAMPLE else data[(len(data) - _SAMPLE) // 2 :][:_SAMPLE]
    trials = [len(_lzma(sample, 0, *settings)) for settings in _LITERAL_SETTINGS]
    lc, lp, pb = _LITERAL_SETTINGS[trials.index(min(trials))]
    candidates = [_lzma(data, 0, lc, lp, pb)]
    candidates.append(_lzma(data, 0, lc, lp, pb, nice_len=128))  # shorter matches parse better, at times
    if bcj:
        candidates += [_lzma(data, bcj, lc, lp, pb), _lzma(data, bcj, lc, lp, pb, nice_len=128)]
    payload = min(candidates, key=len)
    if len(payload) >= len(data):
        return fmt.METHOD_STORED, data
    return fmt.METHOD_LZMA, payload


def decompress_classic(info: fmt.ChunkInfo, payload: bytes) -> bytes:
    """Decode a stored or LZMA chunk and check its length and CRC-32."""
    if info.method == fmt.METHOD_STORED:
        data = payload
    elif info.method == fmt.METHOD_LZMA:
        data = _decode_lzma(info.raw_len, payload)
    elif info.method == fmt.METHOD_RUN:
        if payload == b"\0":
            raise CorruptError("run chunk is damaged: its payload spells 0x00, which is written as none")
        if len(payload) > 1:  # pragma: no cover - the record parser refuses these
            raise CorruptError(f"run chunk is damaged: payload of {len(payload)} bytes")
        data = (payload or b"\0") * info.raw_len
    else:  # pragma: no cover - the record parser refuses other methods
        raise CorruptError(f"chunk uses unknown coding method {info.method}")
    if len(data) != info.raw_len:
        raise ChecksumError(f"chunk is damaged: {info.method_name} data has {len(data)} bytes, "
                            f"expected {info.raw_len}")
    if zlib.crc32(data) & 0xFFFFFFFF != info.data_crc:
        raise ChecksumError(f"chunk is damaged: {info.method_name} data does not match its CRC-32")
    return data


def _decode_lzma(raw_len: int, payload: bytes) -> bytes:
    if len(payload) < 3:
        raise CorruptError(f"lzma chunk is damaged: payload of {len(payload)} bytes is too short")
    bcj, props = payload[0], payload[1]
    if bcj >= len(_BCJ_FILTERS):
        raise CorruptError(f"lzma chunk is damaged: unknown filter {bcj}")
    lc, rest = props % 9, props // 9
    lp, pb = rest % 5, rest // 5
    if pb > 4 or lc + lp > 4:
        raise CorruptError(f"lzma chunk is damaged: invalid settings byte 0x{props:02x}")
    decoder = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_filters(raw_len, bcj, lc, lp, pb))
    try:
        # at most one byte more than declared: enough to tell "too long", never more
        data = decoder.decompress(payload[2:], max_length=raw_len + 1)
    except lzma.LZMAError as exc:
        raise CorruptError(f"lzma chunk is damaged ({exc})") from None
    if len(data) > raw_len:
        raise ChecksumError(f"chunk is damaged: lzma data is longer than the declared {raw_len} bytes")
    if not decoder.eof or decoder.unused_data:
        raise CorruptError("lzma chunk is damaged: its LZMA2 stream does not end where the payload ends")
    return data
