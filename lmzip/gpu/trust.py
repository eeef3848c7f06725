"""The run-time check before a GPU codes anything (issue 28, "Trust at run time").

The kernels are compiled on the user's machine by the installed Triton for the installed
GPU and driver: lmzip checks that this combination computes the engine's numbers.  A
short sequence (the start token and 16 tokens, one token a call, and again in blocks of
4 as the compressor's lookahead calls) must give the C engine's logits bit for bit (for
SmolLM2 and Gemma 3 270M the tests' golden hashes, for other models the CPU engine's
logits), and the PTX of every kernel that ran must hold no forbidden instruction
(lmzip.gpu.ptx).  The result is kept per device for the process.  On failure the caller
warns in one line and uses the CPU engine.

The GPU's mixer (lmzip.gpu.mixer) has a check of its own, :func:`check_mixer`: a few
streams' mixed distributions and learned state against the host's mixer; on failure the
model mixes on the host (its logits are still the GPU's).
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["check", "check_mixer", "GOLDEN", "GOLDEN_TOKENS", "GOLD_16"]

#: the first 16 tokens of alice29.txt for SmolLM2 (tests/data/engine_alice64.txt)
GOLDEN_TOKENS = [2738, 16980, 1047, 9206, 15799, 23, 67, 5236, 48932, 42606, 5622, 408, 2154, 29738, 60, 12386]
#: SHA-256 of the float32 logits after each of the start token and GOLDEN_TOKENS (tests/test_engine.py)
GOLD_16 = "c5979cdace1088bb9e669c673fb6a3984e65b735d6f7aa914615586463ebc4a0"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
#: Gemma 3 270M: the first 16 Gemma tokens of alice29.txt (tests/data/engine_alice_gemma32.txt)
#: and tests/test_engine_gemma.py's GOLD_G16
GEMMA3_TOKENS = [251, 107, 251, 107, 251, 107, 251, 107, 152, 1565, 10067, 236789, 236773, 7747, 43380, 55958]
GOLD_G16 = "f2f00ec1c62bbfe6451066ed12f1ddd2781e1d6ae384d81f76043f17a36ebb3f"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
#: model GGUF SHA-256 -> (tokens after the start token, SHA-256 of the logits after each)
GOLDEN = {SMOLLM2_SHA256: (GOLDEN_TOKENS, GOLD_16), GEMMA3_SHA256: (GEMMA3_TOKENS, GOLD_G16)}

_verdicts: dict[tuple, str | None] = {}


def _hash(rows) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(np.asarray(r, dtype="<f4").tobytes())
    return h.hexdigest()


def check(model_sha256: str, weights_path, device: str) -> str | None:
    """None when this device computes the engine's numbers, else why not (one line)."""
    return _verdict((model_sha256, str(weights_path), device), "the GPU check",
                    lambda: _check(model_sha256, weights_path, device))


def check_mixer(device: str) -> str | None:
    """None when this device's mixer computes the host's numbers (lmzip.gpu.mixer.self_check,
    its kernels' PTX scanned as they compile), else why not (one line); kept per device."""
    def run():
        import torch

        from .mixer import self_check

        return self_check(torch, torch.device(device))

    return _verdict(("mixer", device), "the GPU mixer's check", run)


def _verdict(key: tuple, what: str, run) -> str | None:
    """``run()``'s verdict, computed once per key for the process; a driver or compiler
    failure is a failed check, not a crash."""
    if key not in _verdicts:
        try:
            _verdicts[key] = run()
        except Exception as exc:
            _verdicts[key] = f"{what} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    return _verdicts[key]


def _check(model_sha256: str, weights_path, device: str) -> str | None:
    from . import ptx
    from .forward import COMPILED_PTX, GPUEngine

    eng = GPUEngine(weights_path, device=device, context=2048)
    tokens, gold = GOLDEN.get(model_sha256, (GOLDEN_TOKENS, None))
    tokens = [t % eng.n_vocab for t in tokens]
    h = eng.new_stream()
    rows = []
    if eng.device.type == "cuda":
        # one token a call, as a lockstep group codes: the first call runs the kernels and
        # captures them in a CUDA graph, the others replay it; both must be exact
        out = np.empty((1, eng.n_vocab), np.float32)
        for t in [eng.bos] + tokens:
            eng.eval([h], [[t]], out)
            rows.append(out[0].copy())
        # and in blocks of 4 tokens, as the compressor's lookahead calls (a graph of its own)
        seq, h4, blocked = [eng.bos] + tokens, eng.new_stream(), []
        for a in range(0, len(seq), 4):
            blocked.extend(eng.rows_job([h4], [seq[a:a + 4]], eng.n_vocab).rows())
        if np.asarray(blocked).tobytes() != np.asarray(rows).tobytes():
            return "its logits in blocks of tokens differ from its logits one token a call"
    else:  # Triton's interpreter (tests): no graphs, and one step is much faster than 17
        every: list = []
        eng.eval([h], [[eng.bos] + tokens], every=every)
        rows = [r for step in every for r in step.cpu().numpy()]
    if gold is not None:
        if _hash(rows) != gold:
            return "its logits differ from the engine's golden hash"
    else:
        from .. import _engine

        cpu = _engine.Engine(str(weights_path), 1, "")
        hc = cpu.new_stream(2048)
        out = np.empty((1, cpu.n_vocab), np.float32)
        for i, t in enumerate([cpu.bos] + tokens):
            cpu.eval([hc], [[t]], out)
            if out[0].tobytes() != np.asarray(rows[i], np.float32).tobytes():
                return f"its logits differ from the CPU engine's at token {i}"
    for name, text in COMPILED_PTX.items():
        bad = ptx.scan_ptx(text)
        if bad:
            return f"kernel {name.split('[')[0]} compiled with {bad[0]}"
    return None
