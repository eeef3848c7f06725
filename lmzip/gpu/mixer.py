"""The mixer and the coder's distribution on the GPU (issue 28 item 4): a group's
vocabulary-wide steps run where the logits are, and only what the coder needs comes back.

Per token and stream the host's C mixer reads and writes some 1.4 MB (the scores, the
bias and the distribution over SmolLM2's 49,152 symbols) and the logits cross to the host
(196 KB).  Here the logits stay on the GPU with the bias and the language model's weight;
the host sends each step the features' sparse additions (a few candidates per n-gram
order, weighed by the host's feature weights) and gets back, per stream, a handful of
numbers: the coded token's interval (the compressor) or the symbol whose interval holds
the coder's quantile (the decompressor), the distribution at the features' tokens (the
host's feature-weight step reads them), and for the statistics the token's score, the
largest and the normalizer.  The same bits as ``lmzip._mix`` (the kernels are
lmzip.gpu.mix_kernels; tests/test_gpu_mix.py checks them step by step against it).
"""

from __future__ import annotations

import contextlib

import numpy as np

from ..errors import CorruptError, LMZipError
from ..predictors.base import Stream, StreamGroup
from ..predictors.mixing import LLM_MAX, LLM_MIN, feature_steps
from ..predictors.ngram import ngram_stats
from .constants import double_bits
from .forward import launch
from .mix_kernels import (
    BLOCK,
    ROWS,
    SMALL,
    exp_sum_kernel,
    feature_kernel,
    find_kernel,
    floor_kernel,
    gather_kernel,
    largest_kernel,
    learn_finish_kernel,
    learn_kernel,
    mix_kernel,
)
from .tiles import triton_cdiv

__all__ = ["DeviceMixer", "DeviceMixedGroup", "Features", "pack_features", "self_check"]

_T = float(1 << 24)


class Features:
    """A step's sparse additions for every row, flat: entry ``m`` adds ``adds[m, f]`` to
    the score of ``token[m]`` in row ``row[m]`` for each feature ``f`` in order (-0.0 where
    feature ``f`` has no value for it); each (row, token) is one entry.  ``entry``: the
    entry of each value of the rows' features in their order (``NGramStats.features_flat``
    of row 0, then row 1, ...), ``starts``: where each row's values begin there."""

    __slots__ = ("row", "token", "adds", "entry", "starts", "n_features")

    def __init__(self, row, token, adds, entry, starts, n_features):
        self.row, self.token, self.adds = row, token, adds
        self.entry, self.starts, self.n_features = entry, starts, n_features


def pack_features(flats: list[tuple], weights: list[np.ndarray], n_features: int, vocab: int) -> Features:
    """The :class:`Features` of rows whose features are ``flats[r]`` (``NGramStats.features_flat``:
    slots, bounds, tokens, values) weighed by ``weights[r]`` (the stream's slot weights):
    each value times its slot's weight (the product ``lmzip._mix`` adds), the values of
    one token gathered in feature order."""
    counts, order, weight, row, toks, vals, starts = [], [], [], [], [], [], [0]
    for r, ((slots, bounds, tokens, values), w) in enumerate(zip(flats, weights)):
        if slots:
            before = 0
            for f, (slot, end) in enumerate(zip(slots, bounds)):
                counts.append(end - before)
                before = end
                order.append(f)
                weight.append(w[slot])
                row.append(r)
            toks.append(tokens)
            vals.append(values)
        starts.append(starts[-1] + (bounds[-1] if slots else 0))
    if not counts:
        empty = np.zeros(0, np.int64)
        return Features(empty, empty, np.zeros((0, n_features)), empty, np.asarray(starts), n_features)
    counts = np.asarray(counts)
    at_row = np.repeat(np.asarray(row, np.int64), counts)
    at_token = np.concatenate(toks).astype(np.int64, copy=False)
    add = np.repeat(np.asarray(weight, np.float64), counts) * np.concatenate(vals)
    keys, where = np.unique(at_row * vocab + at_token, return_inverse=True)
    table = np.full((len(keys), n_features), -0.0)
    table[where, np.repeat(np.asarray(order), counts)] = add  # a token is at most once in a feature
    return Features(keys // vocab, keys % vocab, table, where.astype(np.int64), np.asarray(starts), n_features)


class DeviceMixer:
    """The vocabulary-wide state and steps of ``n`` mixed streams on a torch device: each
    stream's bias (float64 [n, V]) and language-model weight; the host keeps the rest
    (statistics, feature weights).  A step's rows are any of the streams, ``idx``."""

    def __init__(self, torch, device, n: int, vocab: int, bias_rate: float, llm_rate: float,
                 llm_bounds: tuple[float, float]):
        self.torch, self.device, self.V = torch, device, vocab
        self.bias_rate, self.llm_rate, self.llm_bounds = bias_rate, llm_rate, llm_bounds
        self.bias = torch.zeros((n, vocab), dtype=torch.float64, device=device) if bias_rate else None
        self.w_llm = torch.ones(n, dtype=torch.float64, device=device)
        self._s = self._q = None
        self._dummy = torch.zeros(1, dtype=torch.float64, device=device)
        self._rows = None  # the last step's logits and rows, for learn()
        self._idx = None
        self._side = None  # its CUDA stream

    def _buffers(self, R: int):
        t = self.torch
        if self._s is None or self._s.shape[0] < R:
            self._s = t.empty((R, self.V), dtype=t.float64, device=self.device)
            self._q = t.empty((R, self.V), dtype=t.float64, device=self.device)
        return self._s[:R], self._q[:R]

    def _context(self):
        """Launches on the mixer's device and its own CUDA stream: the engine's next block,
        queued on the default stream, runs beside the mixer's steps instead of before them."""
        t = self.torch
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        if self._side is None:
            self._side = t.cuda.Stream(self.device)
        stack = contextlib.ExitStack()
        stack.enter_context(t.cuda.device(self.device))
        stack.enter_context(t.cuda.stream(self._side))
        return stack

    def _upload(self, *arrays) -> list:
        """int64 arrays on the device, in one copy."""
        sizes = [len(a) for a in arrays]
        flat = self.torch.as_tensor(np.concatenate([np.asarray(a, np.int64) for a in arrays]), device=self.device)
        return list(flat.split(sizes))

    def step(self, idx: list[int], rows: list | None, feats: Features, tokens: list[int] | None = None,
             quantiles: list[int] | None = None) -> dict[str, np.ndarray]:
        """The distributions of the streams ``idx`` (their logits ``rows``: float32 [V] rows
        on the device, or None without a language model), with ``feats``: the compressor's
        ``tokens`` or the decompressor's ``quantiles``.  Returns numpy arrays: ``top``,
        ``sum`` (the largest score and the normalizer), ``q_at`` (the distribution at
        ``feats.row, feats.token``), with tokens ``below``, ``freq`` and ``score`` (the
        token's mixed score), with quantiles ``symbol``, ``below``, ``freq`` (symbol V: the
        quantile was past the total, damage)."""
        with self._context():
            return self._step(idx, rows, feats, tokens, quantiles)

    def _step(self, idx, rows, feats, tokens, quantiles) -> dict[str, np.ndarray]:
        t, V, R = self.torch, self.V, len(idx)
        s, q = self._buffers(R)
        coded = tokens if tokens is not None else [-1] * R
        ix, frow, ftok, tok, rng, quant = self._upload(idx, feats.row, feats.token, coded, range(R),
                                                       quantiles if quantiles is not None else [])
        rows = t.stack(rows) if rows is not None else None
        rows_arg = rows if rows is not None else self._dummy
        bias = self.bias if self.bias is not None else self._dummy
        launch(mix_kernel, (R, triton_cdiv(V, BLOCK)), rows_arg, bias, self.w_llm, ix, s, V,
               HAS_LLM=rows is not None, HAS_BIAS=self.bias is not None, BLOCK=BLOCK)
        M = len(feats.row)
        if M:
            adds = t.as_tensor(np.ascontiguousarray(feats.adds, np.float64), device=self.device)
            launch(feature_kernel, (triton_cdiv(M, SMALL),), s, frow, ftok, adds, M, V, F=feats.n_features,
                   BLOCK=SMALL)
        top = t.empty(R, dtype=t.float64, device=self.device)
        best = t.empty(R, dtype=t.int64, device=self.device)
        posinf = t.empty(R, dtype=t.int64, device=self.device)
        total = t.empty(R, dtype=t.float64, device=self.device)
        launch(largest_kernel, (R,), s, top, best, posinf, V, BLOCK=BLOCK)
        launch(exp_sum_kernel, (triton_cdiv(R, ROWS),), s, top, posinf, q, total, R, V, RB=ROWS, num_warps=1)
        interval = t.empty((R, 2), dtype=t.float64, device=self.device)
        launch(floor_kernel, (R,), q, total, best, tok, interval, V, BLOCK=BLOCK)
        out = {"top": top, "sum": total}
        if M:
            q_at = t.empty(M, dtype=t.float64, device=self.device)
            launch(gather_kernel, (triton_cdiv(M, SMALL),), q, frow, ftok, q_at, M, V, BLOCK=SMALL)
            out["q_at"] = q_at
        if tokens is not None:
            score = t.empty(R, dtype=t.float64, device=self.device)
            launch(gather_kernel, (triton_cdiv(R, SMALL),), s, rng, tok, score, R, V, BLOCK=SMALL)
            out["below"], out["freq"], out["score"] = interval[:, 0], interval[:, 1] + 1.0, score
        if quantiles is not None:
            found = t.empty((R, 3), dtype=t.float64, device=self.device)
            launch(find_kernel, (R,), q, quant, found, V, BLOCK=BLOCK)
            out["symbol"], out["below"], out["freq"] = found[:, 0], found[:, 1], found[:, 2] + 1.0
        self._rows, self._idx = rows, ix
        names = list(out)  # one copy to the host for all of it
        packed = t.cat([out[k].reshape(-1) for k in names]).cpu().numpy()
        result, at = {}, 0
        for k in names:
            n = out[k].numel()
            result[k] = packed[at: at + n]
            at += n
        if "q_at" not in result:
            result["q_at"] = np.zeros(0)
        return result

    def distributions(self, R: int) -> np.ndarray:
        """The last :meth:`step`'s distributions (``q = freq - 1``, float64 [R, V]) on the host."""
        with self._context():
            return self._q[:R].cpu().numpy()

    def learn(self, tokens: list[int]) -> None:
        """The learning step of the last :meth:`step`'s streams for their coded ``tokens``:
        the bias (each symbol by its coded probability, the token up) and the language
        model's weight (by the token's logit against its expectation), on the device;
        returns at once (the next step's launches follow it on the same stream)."""
        R = len(tokens)
        rows, ix = self._rows, self._idx
        has_llm = rows is not None and bool(self.llm_rate)
        has_bias = self.bias is not None
        if not (has_llm or has_bias):
            return
        with self._context():
            t = self.torch
            q = self._q[:R]
            (tok,) = self._upload(tokens)
            expected = t.empty(R, dtype=t.float64, device=self.device)
            bias = self.bias if has_bias else self._dummy
            rows_arg = rows if rows is not None else self._dummy
            launch(learn_kernel, (triton_cdiv(R, ROWS),), q, rows_arg, bias, ix, expected, R, self.V,
                   double_bits(self.bias_rate / _T), HAS_LLM=has_llm, HAS_BIAS=has_bias, RB=ROWS, num_warps=1)
            lo, hi = self.llm_bounds
            launch(learn_finish_kernel, (triton_cdiv(R, SMALL),), rows_arg, bias, self.w_llm, ix, tok, expected, R,
                   self.V, double_bits(self.bias_rate), double_bits(self.llm_rate), double_bits(lo), double_bits(hi),
                   HAS_LLM=has_llm, HAS_BIAS=has_bias, BLOCK=SMALL)


class _HostSide:
    """What a mixed stream keeps on the host when its vocabulary-wide state is on the
    device: its statistics, the features' weights, and its language model's stream."""

    __slots__ = ("base", "stats", "w", "g2", "flat")

    def __init__(self, base, vocab: int, settings):
        self.base = base
        self.stats = ngram_stats(vocab, settings.orders, settings.match)
        self.w = np.zeros(self.stats.n_slots)
        self.g2 = np.zeros(self.stats.n_slots)
        self.flat = None  # the features of the token being coded

    def close(self) -> None:
        if self.base is not None:
            self.base.close()


class DeviceMixedGroup(StreamGroup):
    """A lockstep group of mixed streams (lmzip.predictors.mixing) whose vocabulary-wide
    steps run on the GPU that computes the logits: the same bits as the host's mixer.
    The codec asks it for intervals (:meth:`intervals`) and symbols (:meth:`find`);
    :meth:`distributions` (the whole distributions on the host) is there for other
    callers.  Settings that skip the language model or adapt its output rows mix on the
    host (MixedModel does not open this group for them)."""

    def __init__(self, base: StreamGroup, vocab: int, settings, torch, device, threads: int = 1):
        if settings.skip or settings.adapt:
            raise ValueError("skipping and adaptation mix on the host")
        super().__init__([_HostSide(s, vocab, settings) for s in base.streams])
        self._base = base
        self._settings = settings
        self._vocab = vocab
        self._torch = torch
        self._n_features = len(settings.orders) + (1 if settings.match else 0)
        self._mixer = DeviceMixer(torch, device, len(self.streams), vocab, settings.bias_rate, settings.llm_rate,
                                  (LLM_MIN, LLM_MAX))
        self._threads = threads
        self._coded: dict[int, int] = {}  # stream -> its row in the last step
        self._feats: Features | None = None  # the last step's features
        self._q_at = np.zeros(1)  # and the distribution at them

    def _step(self, active: list[int], tokens=None, quantiles=None) -> dict[str, np.ndarray]:
        streams = [self.streams[i] for i in active]
        for st in streams:
            st.flat = st.stats.features_flat()
        feats = pack_features([st.flat for st in streams], [st.w for st in streams], self._n_features, self._vocab)
        rows = [st.base.scores() for st in streams] if streams[0].base is not None else None
        res = self._mixer.step(active, rows, feats, tokens, quantiles)
        self._coded = {i: r for r, i in enumerate(active)}
        self._feats = feats
        self._q_at = np.append(res["q_at"], 0.0)  # and a value no feature has (a token none predicts)
        return res

    def intervals(self, active: list[int], qs, tokens: list[int]) -> list[tuple]:
        res = self._step(active, tokens=tokens)
        return list(zip(res["below"].tolist(), res["freq"].tolist(), res["score"].tolist(), res["top"].tolist(),
                        res["sum"].tolist()))

    def find(self, active: list[int], qs, quantiles: list[int]) -> list[tuple]:
        res = self._step(active, quantiles=quantiles)
        if (res["symbol"] >= self._vocab).any():
            raise CorruptError("chunk payload is damaged (range decoder: a quantile past the distribution)")
        return list(zip(res["symbol"].astype(np.int64).tolist(), res["below"].tolist(), res["freq"].tolist()))

    def distributions(self, active: list[int], qs: list[np.ndarray], tokens: list[int] | None = None) -> list[tuple]:
        res = self._step(active, tokens=tokens)
        q = self._mixer.distributions(len(active))
        for k, dest in enumerate(qs):
            dest[:] = q[k]
        out = list(zip(res["top"].tolist(), res["sum"].tolist()))
        if tokens is None:
            return out
        return [(*r, b) for r, b in zip(out, res["below"].tolist())]

    def push_all(self, active: list[int], tokens: list[int]) -> None:
        coded, feats = self._coded, self._feats
        if coded:  # the device's steps go first: they run while the host does its own
            by_row = {coded[i]: tok for i, tok in zip(active, tokens) if i in coded}
            if len(by_row) != len(coded):
                raise LMZipError("internal error: a stream coded with the GPU's mixer was not pushed its token")
            row_tokens = [by_row[r] for r in range(len(by_row))]
            self._mixer.learn(row_tokens)
            # the feature weights' step on the host, from the distribution at the features'
            # tokens: each row's token renumbered to its entry (where q_at holds it), or
            # len(keys) (q_at's last value) where no feature has it
            keys = feats.row * self._vocab + feats.token  # sorted
            if len(keys):
                wanted = np.arange(len(row_tokens)) * self._vocab + np.asarray(row_tokens)
                at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
                local = np.where(keys[at] == wanted, at, len(keys)).tolist()
            else:
                local = [0] * len(row_tokens)
            steps = []
            for i, r in coded.items():
                st = self.streams[i]
                if not st.flat[0]:
                    continue
                slots, bounds, _, values = st.flat
                entries = feats.entry[feats.starts[r]: feats.starts[r + 1]]
                steps.append((st.w, st.g2, (slots, bounds, entries, values), local[r], self._q_at))
            feature_steps(self._settings, steps, self._threads)
        for i, token in zip(active, tokens):
            st = self.streams[i]
            st.stats.update(token)
            if st.base is not None:
                st.base.push(token)
        self._coded = {}

    def advance(self) -> None:
        self._base.advance()

    def lookahead(self, tokens: list[list[int]]) -> None:
        self._base.lookahead(tokens)

    def close(self) -> None:
        super().close()
        self._base.close()


class _RowStream(Stream):
    """A stand-in language model's stream for :func:`self_check`: fixed rows of logits."""

    def __init__(self, rows, k: int):
        self.rows, self.k, self.step = rows, k, 0

    def scores(self):
        return self.rows[self.step, self.k]

    def push(self, token: int) -> None:
        self.step += 1


def self_check(torch, device, vocab: int = 1003, streams: int = 3, steps: int = 16, seed: int = 28) -> str | None:
    """None when this device's mixer gives the host's numbers (``lmzip._mix``, or numpy):
    a few streams coding tokens that repeat (so the n-gram and match features fire)
    under random logits with escapes at -inf, every interval and the learned state
    compared; else what differs (one line).  lmzip.gpu.trust runs it before a GPU mixes."""
    from ..predictors.mixing import DEFAULT_MIX, MixedGroup

    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=4.0, size=(steps, streams, vocab)).astype(np.float32)
    logits[:, :, vocab - 7:] = -np.inf  # the tokenizer's escapes
    # tokens of a few symbols each (contexts of every order recur, with several successors),
    # now and then any symbol (an escape too)
    tokens = [[int(x) for x in rng.choice(rng.integers(0, vocab - 7, size=4), size=steps)] for _ in range(streams)]
    for toks in tokens:
        toks[5::7] = [int(x) for x in rng.integers(0, vocab, size=len(toks[5::7]))]
    host = MixedGroup(StreamGroup([_RowStream(logits, k) for k in range(streams)]), vocab, DEFAULT_MIX)
    on_device = torch.as_tensor(logits, device=device)
    group = DeviceMixedGroup(StreamGroup([_RowStream(on_device, k) for k in range(streams)]), vocab, DEFAULT_MIX,
                             torch, device)
    active = list(range(streams))
    qs = [np.empty(vocab) for _ in active]
    for j in range(steps):
        told = [tokens[k][j] for k in active]
        want = host.intervals(active, qs, told)
        got = group.intervals(active, qs, told)
        if np.asarray(got).tobytes() != np.asarray(want).tobytes():
            return f"its mixed distributions differ from the host's at step {j}"
        host.push_all(active, told)
        group.push_all(active, told)
    w_llm = group._mixer.w_llm.cpu().numpy()
    bias = group._mixer.bias.cpu().numpy()
    for k, st in enumerate(host.streams):
        learned = (w_llm[k], bias[k].tobytes(), group.streams[k].w.tobytes(), group.streams[k].g2.tobytes())
        if learned != (st._w_llm, st._bias.tobytes(), st._w.tobytes(), st._g2.tobytes()):
            return "its mixer's learned weights differ from the host's"
    return None
