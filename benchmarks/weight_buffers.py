"""llama.cpp's weight buffers on this CPU: one-token and batched speed, and whether the
logits change (issue 16: a native build with AMX segfaults on batched calls with its
"extra" repacked buffers).

    python benchmarks/weight_buffers.py ../shared/corpora/canterbury/alice29.txt [--tokens 400] [--threads 2]

For each of the two loads of the default model (``use_extra_bufts`` on and off) it
measures, in one run and alternating so that a busy machine hurts both alike:

- one token per ``llama_decode`` (lmzip's single-stream schedule), tokens/s;
- batches of 64 tokens (``lmzip entropy``'s kind of call), tokens/s: run in a child
  process for the extra buffers, since that call may crash;
- the largest logit difference between the two loads over the one-token run.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time

import numpy as np

from lmzip.predictors.llamacpp import _llama, kernel_family, new_context
from lmzip.predictors.registry import _smollm2_path, load_model


def _load(path: str, extra: bool):
    L = _llama()
    p = L.llama_model_default_params()
    p.n_gpu_layers = 0
    p.use_extra_bufts = extra
    m = L.llama_model_load_from_file(path.encode(), p)
    assert m, "could not load the model"
    return m


def one_token_calls(llm, weights, tokens: list[int]) -> tuple[float, np.ndarray]:
    """tokens/s and the logits of every call, one token per call (a context of batch 1)."""
    L = llm._L
    saved = llm._model
    llm._model = weights  # new_context runs batch-1 contexts on _model
    try:
        ctx, _ = new_context(llm, 1)
    finally:
        llm._model = saved
    batch = L.llama_batch_init(1, 0, 1)
    n = llm.tokenizer.n_model_tokens
    out = np.empty((len(tokens), n), dtype=np.float32)
    t0 = time.perf_counter()
    for i, tok in enumerate(tokens):
        batch.n_tokens = 1
        batch.token[0], batch.pos[0], batch.n_seq_id[0], batch.seq_id[0][0], batch.logits[0] = tok, i, 1, 0, 1
        assert L.llama_decode(ctx, batch) == 0
        out[i] = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, 0), shape=(n,))
    rate = len(tokens) / (time.perf_counter() - t0)
    L.llama_batch_free(batch)
    L.llama_free(ctx)
    return rate, out


CHILD = """
import sys, time
sys.path.insert(0, {root!r})
from benchmarks.weight_buffers import _load, batched
from lmzip.predictors.registry import load_model
llm = load_model("smollm2-135m", context=2048, threads={threads}, mix=None).base
tokens = llm.tokenizer.encode(open({file!r}, "rb").read()[:20000])[:{n}]
print(batched(llm, _load(str(llm.path), {extra}), tokens))
"""


def batched(llm, weights, tokens: list[int], k: int = 64) -> float:
    L = llm._L
    p = L.llama_context_default_params()
    p.n_ctx, p.n_batch, p.n_ubatch = 2048, k, k
    p.n_threads = p.n_threads_batch = llm.threads
    p.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
    ctx = L.llama_init_from_model(weights, p)
    batch = L.llama_batch_init(k, 0, 1)
    t0 = time.perf_counter()
    for s in range(0, len(tokens) - k + 1, k):
        batch.n_tokens = k
        for r in range(k):
            batch.token[r], batch.pos[r], batch.n_seq_id[r], batch.seq_id[r][0], batch.logits[r] = \
                tokens[s + r], s + r, 1, 0, 1
        assert L.llama_decode(ctx, batch) == 0
    rate = (len(tokens) // k * k) / (time.perf_counter() - t0)
    L.llama_batch_free(batch)
    L.llama_free(ctx)
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file")
    ap.add_argument("--tokens", type=int, default=400)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    llm = load_model("smollm2-135m", context=2048, threads=a.threads, mix=None).base
    path = str(_smollm2_path())
    tokens = llm.tokenizer.encode(open(a.file, "rb").read()[:20000])[: a.tokens]
    loads = {"extra buffers": _load(path, True), "plain": _load(path, False)}
    rates: dict[str, list[float]] = {k: [] for k in loads}
    logits = {}
    for _ in range(a.rounds):
        for name, w in loads.items():
            r, lg = one_token_calls(llm, w, tokens)
            rates[name].append(r)
            logits[name] = lg
    diff = float(np.abs(logits["extra buffers"] - logits["plain"]).max())
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    batch_rates = {}
    for name, extra in (("extra buffers", True), ("plain", False)):
        code = CHILD.format(root=root, threads=a.threads, file=a.file, n=max(a.tokens, 512), extra=extra)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        batch_rates[name] = (f"{float(proc.stdout.split()[-1]):.0f}" if proc.returncode == 0
                             else f"crashed (exit {proc.returncode})")
    print(f"CPU: {platform.processor() or platform.machine()}; llama.cpp kernels: {kernel_family()}")
    print(f"{a.tokens} tokens of {os.path.basename(a.file)}, {a.threads} threads, best of {a.rounds}\n")
    print("| weights | one token per call (tok/s) | batches of 64 (tok/s) |")
    print("|---|---:|---:|")
    for name in loads:
        print(f"| {name} | {max(rates[name]):.0f} | {batch_rates[name]} |")
    print(f"\nlargest logit difference between the two loads (one-token calls): {diff:.4g}")


if __name__ == "__main__":
    main()
