"""The command line, run as a real process: files, stdin/stdout, safety, exit codes."""

import os
import signal
import subprocess
import sys
import time

import pytest

import lmzip

from .conftest import corpus_slice

LMZIP = [sys.executable, "-m", "lmzip"]
FAST = ["-m", "order1"]


def run(*args, input=None, cwd=None, check=None):
    proc = subprocess.run([*LMZIP, *args], input=input, capture_output=True, cwd=cwd, timeout=600)
    if check is not None:
        assert proc.returncode == check, (proc.returncode, proc.stderr.decode())
    return proc


def assert_one_line_error(proc, code=1):
    err = proc.stderr.decode()
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert err.startswith("lmzip: ") and err.count("\n") == 1, err


def test_compress_decompress_files(tmp_path, sample):
    original = sample.read_bytes()
    os.utime(sample, (1_000_000_000, 1_000_000_000))
    run("compress", *FAST, str(sample), check=0)
    packed = tmp_path / "sample.txt.lmz"
    assert packed.exists() and sample.exists()  # the input is kept by default
    assert packed.stat().st_mtime == 1_000_000_000  # times carried over, as gzip does
    assert lmzip.decompress(packed.read_bytes()) == original
    sample.unlink()
    run("decompress", str(packed), check=0)
    assert sample.read_bytes() == original and packed.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_never_overwrites_without_force(tmp_path, sample):
    (tmp_path / "sample.txt.lmz").write_bytes(b"precious")
    proc = run("compress", *FAST, str(sample))
    assert_one_line_error(proc)
    assert "already exists" in proc.stderr.decode()
    assert (tmp_path / "sample.txt.lmz").read_bytes() == b"precious"
    run("compress", *FAST, "-f", str(sample), check=0)
    assert lmzip.decompress((tmp_path / "sample.txt.lmz").read_bytes()) == sample.read_bytes()
    proc = run("decompress", str(tmp_path / "sample.txt.lmz"))  # sample.txt exists
    assert_one_line_error(proc)


def test_stdin_to_stdout():
    data = b"piped through standard streams\n" * 20
    packed = run("compress", *FAST, input=data, check=0).stdout
    assert lmzip.decompress(packed) == data
    assert run("decompress", input=packed, check=0).stdout == data
    assert run("compress", *FAST, "-", input=data, check=0).stdout == packed
    assert run("decompress", "-c", "-", input=packed, check=0).stdout == data


def test_stdout_and_output_options(tmp_path, sample):
    packed = run("compress", *FAST, "-c", str(sample), check=0).stdout
    assert lmzip.decompress(packed) == sample.read_bytes()
    assert not (tmp_path / "sample.txt.lmz").exists()
    out = tmp_path / "elsewhere.bin"
    run("compress", *FAST, "-o", str(out), str(sample), check=0)
    run("decompress", "-o", str(tmp_path / "back.txt"), str(out), check=0)  # no .lmz suffix needed with -o
    assert (tmp_path / "back.txt").read_bytes() == sample.read_bytes()


def test_rm_removes_input_only_after_success(tmp_path, sample):
    original = sample.read_bytes()
    run("compress", *FAST, "--rm", str(sample), check=0)
    assert not sample.exists()
    run("decompress", "--rm", str(tmp_path / "sample.txt.lmz"), check=0)
    assert sample.read_bytes() == original and not (tmp_path / "sample.txt.lmz").exists()
    bad = tmp_path / "bad.txt.lmz"
    bad.write_bytes(b"not lmzip at all")
    assert_one_line_error(run("decompress", "--rm", str(bad)))
    assert bad.exists() and not (tmp_path / "bad.txt").exists()


def test_rm_verifies_with_a_model_given_by_path(tmp_path):
    from lmzip.predictors.registry import _smollm2_path

    path = tmp_path / "short.txt"
    path.write_bytes(b"A short text, compressed by a model named by its file path.\n")
    original = path.read_bytes()
    run("compress", "--rm", "--context", "64", "-m", str(_smollm2_path()), str(path), check=0)
    assert not path.exists()
    packed = tmp_path / "short.txt.lmz"
    run("decompress", "-m", str(_smollm2_path()), str(packed), check=0)
    assert path.read_bytes() == original


def test_usage_errors_exit_2(tmp_path, sample):
    proc = run("compress", "-o", str(tmp_path / "x"), str(sample), str(sample))
    assert proc.returncode == 2 and "single input" in proc.stderr.decode()
    assert run("compress", "--no-such-option").returncode == 2
    assert run("frobnicate").returncode == 2
    assert run("compress", "--context", "3", str(sample)).returncode == 2


def test_file_errors_exit_1_and_other_files_continue(tmp_path, sample):
    proc = run("compress", *FAST, str(tmp_path / "missing.txt"), str(sample))
    assert proc.returncode == 1
    assert "missing.txt: no such file" in proc.stderr.decode()
    assert (tmp_path / "sample.txt.lmz").exists()  # the good file was still done
    assert_one_line_error(run("compress", *FAST, str(tmp_path)))  # a directory
    assert "is a directory" in run("compress", *FAST, str(tmp_path)).stderr.decode()
    assert_one_line_error(run("decompress", str(sample)))  # no .lmz suffix
    assert_one_line_error(run("compress", *FAST, str(tmp_path / "sample.txt.lmz")))  # already .lmz


def test_damaged_and_truncated_input(tmp_path, sample):
    run("compress", *FAST, str(sample), check=0)
    packed = (tmp_path / "sample.txt.lmz").read_bytes()
    cut = tmp_path / "cut.lmz"
    cut.write_bytes(packed[: len(packed) // 2])
    proc = run("decompress", str(cut))
    assert_one_line_error(proc)
    assert "ended before" in proc.stderr.decode() and not (tmp_path / "cut").exists()
    flipped = bytearray(packed)
    flipped[len(flipped) // 2] ^= 0x20
    bad = tmp_path / "bad.lmz"
    bad.write_bytes(bytes(flipped))
    assert_one_line_error(run("test", str(bad)))
    assert_one_line_error(run("decompress", "-c", str(bad)))
    assert_one_line_error(run("info", str(cut)))


def test_model_mismatch_is_one_line(tmp_path, sample):
    run("compress", *FAST, "--method", "model", str(sample), check=0)  # (auto may pick LZMA: no model)
    proc = run("decompress", "-c", "-m", "smollm2-135m", str(tmp_path / "sample.txt.lmz"))
    assert_one_line_error(proc)
    assert "another model" in proc.stderr.decode()


def test_test_info_models_version_help(tmp_path, sample):
    run("compress", *FAST, "--method", "model", str(sample), check=0)
    packed = tmp_path / "sample.txt.lmz"
    proc = run("test", str(packed), check=0)
    assert b"OK" in proc.stderr and proc.stdout == b""
    info = run("info", str(packed), check=0).stdout.decode()
    assert "order1" in info and f"{sample.stat().st_size} bytes" in info and "bits per byte" in info
    # the container's cost beside the payload's, in bytes and bits per byte
    import io
    import re

    s = lmzip.core.scan_streams(io.BytesIO(packed.read_bytes()))[0]
    assert re.search(rf"payload +{s.payload_size} bytes, [0-9.]+ bits per byte", info)
    assert re.search(rf"container +{s.container_size} bytes, [0-9.]+ bits per byte", info)
    assert s.container_size <= 29 and "lmzip version 4 (model code 2, one chunk: no end record)" in info
    models = run("models", check=0).stdout.decode()
    assert "smollm2-135m" in models and "order1" in models
    version = run("--version", check=0).stdout.decode()
    assert lmzip.__version__ in version and "CDF backend: c" in version
    helptext = run("--help", check=0).stdout.decode()
    assert "Exit status" in helptext and "130" in helptext
    assert "Exit status" in run("compress", "--help", check=0).stdout.decode()


def test_info_lists_concatenated_streams(tmp_path, sample):
    run("compress", *FAST, str(sample), check=0)
    packed = (tmp_path / "sample.txt.lmz").read_bytes()
    (tmp_path / "two.lmz").write_bytes(packed + packed)
    info = run("info", str(tmp_path / "two.lmz"), check=0).stdout.decode()
    assert "stream 2" in info and info.count("lmzip version 4") == 2


def test_progress_line(sample):
    proc = run("compress", *FAST, "--progress", "-c", str(sample), check=0)
    assert b"%" in proc.stderr and b"bpb" in proc.stderr and b"/s" in proc.stderr
    assert run("compress", *FAST, "-c", str(sample), check=0).stderr == b""  # not a terminal: quiet


def test_verbose_reports_bpb(sample):
    proc = run("compress", *FAST, "-v", "-c", str(sample), check=0)
    assert b"bpb" in proc.stderr
    quiet = run("compress", *FAST, "-q", "-c", str(sample), check=0)
    assert quiet.stderr == b""


def test_default_model_round_trip(tmp_path):
    # the README's flow, with the real embedded model (small file, small window)
    path = tmp_path / "alice.txt"
    path.write_bytes(corpus_slice("alice29.txt", 3000, 800))
    run("compress", "--context", "128", "-v", str(path), check=0)
    info = run("info", str(tmp_path / "alice.txt.lmz"), check=0).stdout.decode()
    assert "smollm2-135m" in info and "context       128" in info
    restored = run("decompress", "-c", str(tmp_path / "alice.txt.lmz"), check=0).stdout
    assert restored == path.read_bytes()


def test_ctrl_c_leaves_no_partial_output(tmp_path):
    path = tmp_path / "long.txt"
    path.write_bytes(corpus_slice("plrabn12.txt", 0, 60_000))
    before = path.read_bytes()
    # a test run started in the background (nohup, `&`) ignores SIGINT, and children inherit
    # that: give the compressor the default disposition, as a terminal's foreground job has
    proc = subprocess.Popen([*LMZIP, "compress", str(path)], stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 600  # loading the model takes minutes on a loaded machine
        while not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]:  # wait until it writes
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # the test failed: do not leave the compressor running
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert b"interrupted" in err and b"Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.txt"]  # no output, no temp file
    assert path.read_bytes() == before


@pytest.mark.parametrize("args", [["decompress", "-c"], ["-dc"], ["info"]])
def test_a_reader_that_stops_early_ends_lmzip_quietly(tmp_path, args):
    """lmzcat big.lmz | head: exit 141 (gzip's SIGPIPE status) without a message, and the
    files after the one being written are not decoded for nothing."""
    packed = tmp_path / "big.lmz"
    packed.write_bytes(lmzip.compress(corpus_slice("alice29.txt", 0, 100_000), model="order1"))
    names = [str(packed)] * (1 if args == ["info"] else 3)
    proc = subprocess.Popen([*LMZIP, *args, *names, *([str(packed)] * 2000 if args == ["info"] else [])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout.read(10)
        proc.stdout.close()  # the reader goes away with most of the output unwritten
        err = proc.stderr.read()
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 141, err
    assert err == b"", err
    if os.path.exists("/dev/full"):  # another write error on standard output stays a per-file error
        with open("/dev/full", "wb") as full:
            proc = subprocess.run([*LMZIP, "-dc", str(packed)], stdout=full, stderr=subprocess.PIPE, timeout=600)
        assert_one_line_error(proc)


# ---------------------------------------------------------------------------- no data loss


def run_here(*args) -> int:
    """The CLI in this process (so a test can break one of its parts); returns the exit status."""
    from lmzip import cli

    try:
        cli.main.main(args=list(args), prog_name="lmzip", standalone_mode=False)
    except SystemExit as exc:
        return exc.code
    return 0


def test_rm_verification_failure_writes_nothing_and_keeps_the_input(tmp_path, sample, monkeypatch, capsys):
    from lmzip.cli import files  # where --rm verifies the output

    original = sample.read_bytes()
    (tmp_path / "sample.txt.lmz").write_bytes(b"older output")

    def lossy(fp, **kw):  # a decompressor that loses a byte
        data = b"".join(lmzip.core.iter_decompress(fp, **kw))
        yield data[:-1]

    monkeypatch.setattr(files, "iter_decompress", lossy)
    assert run_here("compress", *FAST, "--rm", "-f", str(sample)) == 1
    err = capsys.readouterr().err
    assert "verification failed (decompressed data is shorter than the input); no output written, input kept" in err
    assert sample.read_bytes() == original
    assert (tmp_path / "sample.txt.lmz").read_bytes() == b"older output"  # -f did not replace it by a bad one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample.txt", "sample.txt.lmz"]  # no temp file

    def damaged(fp, **kw):
        raise lmzip.ChecksumError("chunk is damaged")
        yield b""

    (tmp_path / "sample.txt.lmz").unlink()
    monkeypatch.setattr(files, "iter_decompress", damaged)
    assert run_here("compress", *FAST, "--rm", str(sample)) == 1
    assert "verification failed (chunk is damaged)" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample.txt"]


def _file_size_limit(limit: int):
    def apply() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_disk_full_while_writing_a_file_leaves_nothing(tmp_path):
    # RLIMIT_FSIZE makes writes fail part way, as a full disk does (EFBIG instead of ENOSPC)
    path = tmp_path / "data.bin"
    path.write_bytes(corpus_slice("kennedy.xls", 0, 200_000))
    before = path.read_bytes()
    for args in (["compress", *FAST, "--rm", str(path)], ["compress", *FAST, str(path)]):
        proc = subprocess.run([*LMZIP, *args], capture_output=True, timeout=600,
                              preexec_fn=_file_size_limit(4096))
        assert_one_line_error(proc)
        assert "too large" in proc.stderr.decode().lower()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]  # no output, no temp file
        assert path.read_bytes() == before  # --rm or not, the input is kept
    run("compress", *FAST, str(path), check=0)
    packed = tmp_path / "data.bin.lmz"
    path.unlink()
    proc = subprocess.run([*LMZIP, "decompress", "--rm", str(packed)], capture_output=True, timeout=600,
                          preexec_fn=_file_size_limit(4096))
    assert_one_line_error(proc)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin.lmz"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_disk_full_on_stdout(sample):
    with open("/dev/full", "wb") as full:
        proc = subprocess.run([*LMZIP, "compress", *FAST, "-c", str(sample)], stdout=full,
                              stderr=subprocess.PIPE, timeout=600)
    assert_one_line_error(proc)
    assert "No space left on device" in proc.stderr.decode()
    assert sample.exists()


def test_unreadable_input(tmp_path, sample, monkeypatch, capsys):
    if os.geteuid() != 0:  # a real permission error
        sample.chmod(0)
        try:
            proc = run("compress", *FAST, str(sample))
        finally:
            sample.chmod(0o644)
        assert_one_line_error(proc)
        assert "permission denied" in proc.stderr.decode()
    # as root (or anyone), simulated: open() refuses the file
    import builtins

    real_open = builtins.open

    def refusing_open(file, *args, **kwargs):
        if str(file) == str(sample):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing_open)
    assert run_here("compress", *FAST, "--rm", str(sample)) == 1
    assert f"{sample}: permission denied" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample.txt"]


def test_unwritable_output_directory(tmp_path, sample, monkeypatch, capsys):
    import tempfile

    def refusing_mkstemp(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refusing_mkstemp)
    assert run_here("compress", *FAST, "--rm", str(sample)) == 1
    assert "Permission denied" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample.txt"]


def test_missing_file_and_directory_messages(tmp_path):
    for command in ("compress", "decompress", "test", "info"):
        extra = [*FAST] if command == "compress" else []
        name = "missing.txt.lmz" if command != "compress" else "missing.txt"
        proc = run(command, *extra, str(tmp_path / name))
        assert_one_line_error(proc)
        assert "no such file" in proc.stderr.decode()
        proc = run(command, *extra, *(["-c"] if command in ("compress", "decompress") else []), str(tmp_path))
        assert_one_line_error(proc)
        assert "is a directory" in proc.stderr.decode()


def test_method_option_and_info_lists_methods(tmp_path):
    path = tmp_path / "mixed.bin"
    path.write_bytes(corpus_slice("alice29.txt", 0, 12_000) + corpus_slice("kennedy.xls", 1, 30_000))
    for method, shown, absent in (("auto", "lzma chunks", "stored chunks"), ("model", "model chunks", "lzma"),
                                  ("classic", "lzma chunks", "model chunks")):
        run("compress", *FAST, "-f", "--method", method, str(path), check=0)
        info = run("info", str(tmp_path / "mixed.bin.lmz"), check=0).stdout.decode()
        assert shown in info and absent not in info, (method, info)
        assert run("decompress", "-c", str(tmp_path / "mixed.bin.lmz"), check=0).stdout == path.read_bytes()
    assert run("compress", *FAST, "--method", "xz", str(path)).returncode == 2


def test_mixing_options_reach_the_file_and_bad_combinations_are_usage_errors(tmp_path, sample):
    text = corpus_slice("alice29.txt", 5000, 1500)
    sample.write_bytes(text + corpus_slice("alice29.txt", 60_000, 500) + text)
    run("compress", "-m", "ngram", "--method", "model", "--skip", "16", "--orders", "1,3", str(sample), check=0)
    packed = tmp_path / "sample.txt.lmz"
    info = run("info", str(packed), check=0).stdout.decode()
    assert "skip at 15/16" in info and "n-gram orders 1,3" in info
    assert lmzip.decompress(packed.read_bytes()) == sample.read_bytes()
    for bad in (["-m", "ngram", "--no-mix"], ["--no-mix", "--skip", "8"], ["-m", "ngram", "--skip", "1"],
                ["-m", "ngram", "--orders", "none", "--match", "0", "--skip", "8"]):
        proc = run("compress", *bad, "-c", str(sample))
        assert proc.returncode == 2, (bad, proc.stderr.decode())
        assert "Traceback" not in proc.stderr.decode() and not proc.stdout
