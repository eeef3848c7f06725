"""The model's negative log-likelihood of each sample, as the capacity reference scores it.

The reference (``likelihood.py``) runs the model over a sample's tokens as they are,
with no start token of its own: the first token sits at position 0 and is context
only; every later token is scored, ``−log2 p(ids[i] | ids[:i])``.  lmzip's
compressor instead starts every stream with BOS; so here each backend is driven
directly:

- lmzip's engine: one stream per sample starting with the sample's first token, up to
  :data:`ENGINE_WIDTH` samples evaluated together (the weights are read once per step);
- llama.cpp: batched ``llama_decode`` over the sample (:func:`lmzip.measure.entropy.token_bits`
  with the sample's first token as the start);
- torch: one forward over the whole sample;
- any other model: its streams, when the sample starts with the model's own start token.

The softmax is taken in float64 over the model's vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from ..errors import LMZipError
from .samples import Sample

__all__ = ["sample_bits", "ENGINE_WIDTH"]

_LN2 = math.log(2.0)
#: samples lmzip's engine evaluates in lockstep
ENGINE_WIDTH = 8
#: rows of torch logits turned into float64 at a time
_ROWS = 64

#: called with the number of tokens scored so far (over all samples)
Progress = Callable[[int], None]


def _bits(rows: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``−log2 softmax(row)[target]`` per row, in float64."""
    x = rows.astype(np.float64)
    m = x.max(axis=1)
    lse = m + np.log(np.exp(x - m[:, None]).sum(axis=1))
    return (lse - x[np.arange(len(x)), targets]) / _LN2


def sample_bits(model, samples: Sequence[Sample], progress: Progress | None = None) -> list[np.ndarray]:
    """Per sample, the bits of ``ids[1:]`` (float64 arrays of ``sample.scored`` values)."""
    base = getattr(model, "base", model)  # a mixed model: its language model (capacity runs unmixed)
    n_vocab = base.tokenizer.n_model_tokens
    for s in samples:
        if max(s.ids) >= n_vocab:
            raise LMZipError(f"token {max(s.ids)} is outside the model's vocabulary of {n_vocab}")
    from ..predictors.llamacpp import LlamaCppModel
    from ..predictors.portable import PortableModel

    if isinstance(base, PortableModel):
        return _engine_bits(base, samples, progress)
    if isinstance(base, LlamaCppModel):
        return _llama_bits(base, samples, progress)
    if type(base).__name__ == "TorchModel":  # torch is optional: no import unless it is one
        return _torch_bits(base, samples, progress)
    return _stream_bits(base, samples, progress)


def _engine_bits(model, samples: Sequence[Sample], progress: Progress | None) -> list[np.ndarray]:
    eng = model._engine  # driven directly: its streams would start with BOS
    n_vocab = model.tokenizer.n_model_tokens
    out = [np.empty(s.scored, dtype=np.float64) for s in samples]
    done = 0
    for lo in range(0, len(samples), ENGINE_WIDTH):
        group = list(range(lo, min(lo + ENGINE_WIDTH, len(samples))))
        handles = {i: eng.new_stream(model.context) for i in group}
        logits = np.empty((len(group), n_vocab), dtype=np.float32)
        try:
            step = 0
            while True:
                active = [i for i in group if step < samples[i].scored]
                if not active:
                    break
                rows = logits[: len(active)]
                eng.eval([handles[i] for i in active], [[samples[i].ids[step]] for i in active], rows)
                targets = np.array([samples[i].ids[step + 1] for i in active])
                for i, b in zip(active, _bits(rows, targets)):
                    out[i][step] = b
                step += 1
                done += len(active)
                if progress is not None and step % 64 == 0:
                    progress(done)
        finally:
            for h in handles.values():
                eng.free_stream(h)
    if progress is not None:
        progress(done)
    return out


def _llama_bits(model, samples: Sequence[Sample], progress: Progress | None) -> list[np.ndarray]:
    from .entropy import token_bits

    out = []
    done = 0
    for s in samples:
        report = (lambda n, done=done: progress(done + n)) if progress is not None else None
        out.append(token_bits(model, s.ids[1:], report, start=s.ids[0]))
        done += s.scored
    return out


def _torch_bits(model, samples: Sequence[Sample], progress: Progress | None) -> list[np.ndarray]:
    worker = model._workers[0]  # one forward over the sample, no start token of its own
    torch = worker.torch
    out = []
    done = 0
    n_vocab = model.tokenizer.n_model_tokens
    for s in samples:
        model._pin_threads()
        ids = torch.tensor([list(s.ids)], dtype=torch.long, device=worker.device)
        with worker.lock, torch.inference_mode():
            logits = worker.module(input_ids=ids, use_cache=False).logits[0, :-1, :n_vocab]
            targets = np.asarray(s.ids[1:])
            bits = np.empty(s.scored, dtype=np.float64)
            for r in range(0, s.scored, _ROWS):
                rows = logits[r : r + _ROWS].float().cpu().numpy()
                bits[r : r + len(rows)] = _bits(rows, targets[r : r + len(rows)])
        out.append(bits)
        done += s.scored
        if progress is not None:
            progress(done)
    return out


def _stream_bits(model, samples: Sequence[Sample], progress: Progress | None) -> list[np.ndarray]:
    out = []
    done = 0
    for s in samples:
        if s.ids[0] != model.start_token:
            raise LMZipError(f"model {model.name} can only score samples that begin with its start token")
        bits = np.empty(s.scored, dtype=np.float64)
        with model.open_stream() as stream:
            for i, t in enumerate(s.ids[1:]):
                bits[i] = _bits(np.asarray(stream.scores())[None, : model.tokenizer.n_model_tokens],
                                np.array([t]))[0]
                stream.push(int(t))
        out.append(bits)
        done += s.scored
        if progress is not None:
            progress(done)
    return out
