"""LMZipFile and lmzip.open: the file-object surface, as lzma.LZMAFile offers it."""

import io

import pytest

import lmzip

from .conftest import corpus_slice


@pytest.fixture(scope="module")
def text():
    return corpus_slice("lcet10.txt", 0, 3000)


def test_write_then_read(tmp_path, order1, text):
    path = tmp_path / "a.lmz"
    with lmzip.open(path, "wb", model=order1, chunk_size=1000) as f:
        assert f.writable() and not f.readable()
        assert f.write(text[:1234]) == 1234
        f.write(memoryview(text[1234:]))
        assert f.tell() == len(text)
    assert lmzip.decompress(path.read_bytes()) == text
    with lmzip.open(path) as f:
        assert f.readable() and not f.writable()
        assert f.read(10) == text[:10]
        assert f.read1(5)
        f.seek(0)
        assert f.read() == text
        assert f.read() == b""


def test_readline_iteration_and_text_mode(tmp_path, order1, text):
    path = tmp_path / "t.lmz"
    path.write_bytes(lmzip.compress(text, model=order1, chunk_size=500))
    with lmzip.open(path, "rb") as f:
        assert list(f) == text.splitlines(keepends=True)
    with lmzip.open(path, "rt", encoding="latin-1", newline="") as f:
        assert f.read() == text.decode("latin-1")
    with lmzip.open(path, "wt", model=order1, encoding="utf-8") as f:
        f.write("héllo\n")
    assert lmzip.decompress(path.read_bytes()) == "héllo\n".encode()


def test_seek_forward_backward_and_from_end(tmp_path, order1, text):
    path = tmp_path / "s.lmz"
    path.write_bytes(lmzip.compress(text, model=order1, chunk_size=700))
    with lmzip.LMZipFile(path) as f:
        assert f.seek(2000) == 2000 and f.read(10) == text[2000:2010]
        assert f.seek(100) == 100 and f.read(5) == text[100:105]
        assert f.seek(-10, io.SEEK_END) == len(text) - 10 and f.read() == text[-10:]
        assert f.seek(5, io.SEEK_CUR) == len(text)  # past the end: stays at the end
        with pytest.raises(ValueError):
            f.seek(-1)


def test_append_mode_adds_a_stream(tmp_path, order1):
    path = tmp_path / "app.lmz"
    with lmzip.open(path, "wb", model=order1) as f:
        f.write(b"one ")
    with lmzip.open(path, "ab", model=order1) as f:
        f.write(b"two")
    with lmzip.open(path) as f:
        assert f.read() == b"one two"


def test_exclusive_mode(tmp_path, order1):
    path = tmp_path / "x.lmz"
    with lmzip.open(path, "x", model=order1) as f:
        f.write(b"x")
    with pytest.raises(FileExistsError):
        lmzip.open(path, "x", model=order1)


def test_wrap_a_file_object(order1, text):
    buf = io.BytesIO()
    with lmzip.LMZipFile(buf, "w", model=order1) as f:
        f.write(text)
    assert not buf.closed  # a file object we were given stays open
    assert buf.getvalue() == lmzip.compress(text, model=order1)
    buf.seek(0)
    with lmzip.LMZipFile(buf) as f:
        assert f.read() == text


def test_mode_and_argument_errors(tmp_path, order1):
    path = tmp_path / "m.lmz"
    path.write_bytes(lmzip.compress(b"abc", model=order1))
    for mode in ["rw", "z", "rbb", "wbt"]:
        with pytest.raises(ValueError):
            lmzip.open(path, mode)
    with pytest.raises(ValueError, match="encoding"):
        lmzip.open(path, "rb", encoding="utf-8")
    with pytest.raises(TypeError):
        lmzip.LMZipFile(123)
    with lmzip.open(path) as f:
        with pytest.raises(io.UnsupportedOperation):
            f.write(b"no")
    f = lmzip.open(path)
    f.close()
    f.close()  # idempotent
    assert f.closed
    with pytest.raises(ValueError, match="closed"):
        f.read()


def test_truncated_file_raises_eoferror(tmp_path, order1, text):
    path = tmp_path / "cut.lmz"
    path.write_bytes(lmzip.compress(text, model=order1)[:-30])
    with lmzip.open(path) as f:
        with pytest.raises(EOFError):
            f.read()
    with lmzip.open(path) as f:
        with pytest.raises(lmzip.TruncatedError):
            f.read()


def test_corrupt_file_raises_lmziperror(tmp_path, order1, text):
    raw = bytearray(lmzip.compress(text, model=order1))
    raw[60] ^= 0x80
    path = tmp_path / "bad.lmz"
    path.write_bytes(bytes(raw))
    with lmzip.open(path) as f:
        with pytest.raises(lmzip.LMZipError):
            f.read()
