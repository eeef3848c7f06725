"""lmzip without a command, as gzip/xz/zstd: tar -I lmzip, -d/-t/-l, lmzcat, terminals, the routing rule."""

import os
import pty
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import lmzip

from .conftest import corpus_slice
from .test_cli import assert_one_line_error

ROOT = Path(lmzip.__file__).resolve().parent.parent
LMZIP = [sys.executable, "-m", "lmzip"]
LMZCAT = [sys.executable, "-c", "from lmzip.cli import lmzcat; lmzcat()"]
FAST = ["-m", "ngram", "--method", "model"]  # model: so that -l names the model, not LZMA


def env(**extra):
    e = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    e.pop("LMZIP_MODEL", None)
    e.update(extra)
    return e


def run(*args, input=None, cwd=None, check=None, command=LMZIP, **extra_env):
    proc = subprocess.run([*command, *args], input=input, capture_output=True, cwd=cwd, env=env(**extra_env),
                          timeout=600)
    if check is not None:
        assert proc.returncode == check, (proc.returncode, proc.stderr.decode())
    return proc


@pytest.fixture()
def tree(tmp_path):
    """A small tree: a text file, a binary file, an empty file, in a subfolder too."""
    root = tmp_path / "tree"
    (root / "sub").mkdir(parents=True)
    (root / "notes.txt").write_bytes(corpus_slice("xargs.1", 0, 3000))
    (root / "sub" / "blob.bin").write_bytes(bytes(range(256)) * 4 + os.urandom(500))
    (root / "sub" / "empty").write_bytes(b"")
    return root


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


needs_tar = pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar")


def tar(*args, cwd, **extra_env):
    return subprocess.run(["tar", *args], capture_output=True, cwd=cwd, env=env(**extra_env), timeout=600)


PROGRAM = shlex.join(LMZIP)


@needs_tar
@pytest.mark.parametrize("how", ["option", "environment"])
def test_tar_round_trip(tmp_path, tree, how):
    """tar -I PROG calls PROG (stdin to stdout) to create and PROG -d to extract."""
    # --method model: the one chunk holds binary data too, which auto would give to LZMA
    if how == "option":
        proc = tar("-I", f"{PROGRAM} -m ngram --method model", "-cf", "x.tar.lmz", "tree", cwd=tmp_path)
    else:
        proc = tar("-I", f"{PROGRAM} --method model", "-cf", "x.tar.lmz", "tree", cwd=tmp_path,
                   LMZIP_MODEL="ngram")
    assert proc.returncode == 0, proc.stderr.decode()
    archive = tmp_path / "x.tar.lmz"
    listing = run("-l", str(archive), check=0).stdout.decode()
    assert "ngram" in listing  # the model came from -m or $LMZIP_MODEL
    out = tmp_path / "out"
    out.mkdir()
    proc = tar("-I", PROGRAM, "-xf", str(archive), "-C", str(out), cwd=tmp_path)  # no model needed
    assert proc.returncode == 0, proc.stderr.decode()
    assert files_of(out / "tree") == files_of(tree)
    assert (out / "tree" / "sub" / "empty").read_bytes() == b""
    # the same through a pipe, and through lmzcat
    assert run("-d", input=archive.read_bytes(), check=0).stdout == run(
        "-d", "-c", str(archive), check=0).stdout == run(str(archive), command=LMZCAT, check=0).stdout


@needs_tar
def test_damaged_archive_fails_in_tar_and_alone(tmp_path, tree):
    assert tar("-I", f"{PROGRAM} -m ngram", "-cf", "x.tar.lmz", "tree", cwd=tmp_path).returncode == 0
    packed = bytearray((tmp_path / "x.tar.lmz").read_bytes())
    packed[len(packed) // 2] ^= 0x20
    damaged = tmp_path / "damaged.tar.lmz"
    damaged.write_bytes(bytes(packed))
    out = tmp_path / "out"
    out.mkdir()
    proc = tar("-I", PROGRAM, "-xf", str(damaged), "-C", str(out), cwd=tmp_path)
    assert proc.returncode != 0
    assert "lmzip: " in proc.stderr.decode() and "status 1" in proc.stderr.decode()
    assert_one_line_error(run("-d", input=bytes(packed)))
    assert_one_line_error(run("-t", str(damaged)))
    assert_one_line_error(run(str(damaged), command=LMZCAT))


def test_files_like_gzip(tmp_path, sample):
    original = sample.read_bytes()
    run(*FAST, str(sample), check=0)
    packed = tmp_path / "sample.txt.lmz"
    assert lmzip.decompress(packed.read_bytes()) == original and sample.exists()
    # the same bytes as the compress command
    assert run("compress", *FAST, "-c", str(sample), check=0).stdout == packed.read_bytes()
    assert run(*FAST, "-c", str(sample), check=0).stdout == packed.read_bytes()
    sample.unlink()
    run("-d", str(packed), check=0)
    assert sample.read_bytes() == original
    assert_one_line_error(run("-d", str(packed)))  # sample.txt exists: never overwritten
    run("-d", "-f", str(packed), check=0)
    assert b"OK" in run("-t", str(packed), check=0).stderr
    lines = run("-l", str(packed), str(packed), check=0).stdout.decode().splitlines()
    assert len(lines) == 3 and "compressed" in lines[0] and "original" in lines[0]
    assert str(len(original)) in lines[1] and "ngram" in lines[1] and lines[1].endswith(str(packed))
    assert len(run("-l", "-q", str(packed), check=0).stdout.decode().splitlines()) == 1
    out = tmp_path / "copy.txt"
    run("-d", "-o", str(out), str(packed), check=0)
    assert out.read_bytes() == original
    proc = run(*FAST, "-v", "-k", str(sample), "-o", str(tmp_path / "v.lmz"), check=0)
    assert b"bpb" in proc.stderr
    assert run("-d", "--range", "10:20", str(packed), check=0).stdout == original[10:20]
    # --device (an option with no value of its own) in every mode
    assert run("-dc", "--device", "cpu", str(packed), check=0).stdout == original
    assert b"OK" in run("-t", "--device", "cpu", str(packed), check=0).stderr
    assert run(*FAST, "--device", "cpu", "-c", str(sample), check=0).stdout == packed.read_bytes()


def test_stdin_to_stdout(sample):
    data = sample.read_bytes()
    packed = run(*FAST, input=data, check=0).stdout
    assert lmzip.decompress(packed) == data
    assert run(*FAST, "-", input=data, check=0).stdout == packed
    assert run("-d", input=packed, check=0).stdout == data
    assert run("-dc", "-", input=packed, check=0).stdout == data
    assert run("-", input=packed, command=LMZCAT, check=0).stdout == data
    assert run("--method", "model", input=data, check=0, LMZIP_MODEL="ngram").stdout == packed
    empty = run(*FAST, input=b"", check=0).stdout
    assert run("-d", input=empty, check=0).stdout == b""


def test_a_word_is_a_command_only_if_it_is_exactly_one(tmp_path):
    (tmp_path / "compress").write_bytes(b"a file named like a command\n" * 10)
    run(*FAST, "--", "compress", cwd=tmp_path, check=0)
    assert (tmp_path / "compress.lmz").exists()
    run(*FAST, "-f", "./compress", cwd=tmp_path, check=0)
    run("-f", *FAST, "compress", cwd=tmp_path, check=0)  # not the first word: a file
    assert lmzip.decompress((tmp_path / "compress.lmz").read_bytes()) == (tmp_path / "compress").read_bytes()
    # the first word exactly a command's name: that command, unchanged
    assert b"Compress FILES" in run("compress", "--help", cwd=tmp_path, check=0).stdout
    # a first word that is neither command, option nor file: a usage error (a mistyped command)
    proc = run("compres", cwd=tmp_path)
    assert proc.returncode == 2 and "neither a command nor a file" in proc.stderr.decode()
    assert_one_line_error(run("--", "compres", cwd=tmp_path))  # a file: missing, exit 1
    assert_one_line_error(run("-d", "missing.lmz", cwd=tmp_path))


def test_usage_errors_help_and_version():
    for args in (["-d", "-t"], ["-t", "-l"], ["--range", "1:2"], ["--no-such-option"], ["--context", "3"]):
        assert run(*args, input=b"").returncode == 2, args
    helptext = run("-h", check=0).stdout.decode()
    assert helptext == run("--help", check=0).stdout.decode() == run("-d", "--help", check=0).stdout.decode()
    for text in ("lmzip [OPTIONS] [FILE]...", "COMMAND [ARGS]...", "--decompress", "--list", "compress",
                 "Exit status", "LMZIP_MODEL", "lmzip -- compress"):
        assert text in helptext, text
    version = run("-V", check=0).stdout.decode()
    assert lmzip.__version__ in version and version == run("--version", check=0).stdout.decode()


def run_on_terminal(*args, stdin_tty=True, stdout_tty=False):
    """Run lmzip with its stdin and/or stdout on a pseudo-terminal."""
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run([*LMZIP, *args], stdin=follower if stdin_tty else subprocess.DEVNULL,
                              stdout=follower if stdout_tty else subprocess.PIPE, stderr=subprocess.PIPE,
                              env=env(), timeout=120)
    finally:
        os.close(follower)
        os.close(leader)
    return proc


def test_terminals_are_refused_as_gzip_does(tmp_path, sample):
    proc = run_on_terminal(stdin_tty=True, stdout_tty=True)  # `lmzip` typed alone
    assert proc.returncode == 2 and b"not written to a terminal" in proc.stderr
    proc = run_on_terminal(*FAST, stdin_tty=True)
    assert proc.returncode == 2 and b"not reading data to compress from a terminal" in proc.stderr
    proc = run_on_terminal(*FAST, "-c", str(sample), stdin_tty=False, stdout_tty=True)
    assert proc.returncode == 2 and b"not written to a terminal" in proc.stderr
    assert b"Traceback" not in proc.stderr
    proc = run_on_terminal("-d", stdin_tty=True)
    assert_one_line_error(proc)  # as the decompress command: no compressed data from a terminal
    proc = run_on_terminal(*FAST, "-f", "-c", str(sample), stdin_tty=False, stdout_tty=True)
    assert proc.returncode == 0, proc.stderr  # -f forces
    run_on_terminal(*FAST, str(sample), stdin_tty=True, stdout_tty=True)  # a file to a file: fine
    assert (tmp_path / "sample.txt.lmz").exists()


def test_lmzcat_is_an_entry_point():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'lmzcat = "lmzip.cli:lmzcat"' in text
    from lmzip.cli import lmzcat

    assert callable(lmzcat)
