"""The torch/transformers backend: a causal LM run by PyTorch, many chunks per forward.

Optional: ``pip install "lmzip[torch]"``.  Nothing here imports torch until a model is
loaded, so lmzip runs with llama.cpp alone.

Models load offline (``local_files_only``, ``HF_HUB_OFFLINE=1``) from a GGUF file
(transformers dequantizes it; the tokenizer is lmzip's own GGUF tokenizer,
:mod:`lmzip.predictors.gguf_tokenizer`, whose pieces and tokens are llama.cpp's, so no
llama.cpp is needed) or from a local Hugging Face model folder.

Determinism: PyTorch gives bit-identical logits for the same sequence of calls with the
same shapes, on the same device and software.  Batched and one-token evaluation differ
(by ~1e-4 for SmolLM2), so, as for llama.cpp, the *schedule* of calls is the format,
and both directions follow it (docs/format.md, "torch backend"):

- a group of streams (one per chunk, rows ordered by chunk length, longest first)
  starts with one forward of the start token for every stream, at position 0;
- each :meth:`TorchGroup.advance` is ONE forward of shape ``[k, 1]`` over the ``k``
  streams that still have tokens to code, with the KV cache of each row in a
  preallocated ``[k, heads, context + 1, head_dim]`` buffer per layer and a 4-D mask
  hiding each row's unused columns; a row that pushed an escape symbol (or nothing)
  rides along with a dummy token whose output and cache entry are thrown away;
- a stream that has pushed its last token leaves the batch;
- when a stream must evaluate a token with all ``context`` positions in use, its window
  slides: the ``discard = (context - 1) // 4`` tokens after the start token are dropped
  and the kept ``context - discard`` tokens are evaluated again in a batched forward
  (streams sliding at the same step together, at most ``_PRIME_BATCH`` per forward),
  so positions stay in ``[0, context)``.

Eager attention (:func:`_gqa_attention`: no copies of the cache), ``torch.use_deterministic_algorithms(True)``,
no TF32.  The fingerprint
(``params()``) holds the torch and transformers versions, the dtype, the device kind
and, on the CPU, the thread count (see :data:`THREADS_CHANGE_LOGITS`).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LMZipError, ModelMismatchError, ModelNotFoundError
from ..tokenization import PieceTokenizer
from .base import Model, Stream, StreamGroup

__all__ = [
    "DTYPES",
    "DeviceInfo",
    "TorchGroup",
    "TorchModel",
    "available",
    "backend_version",
    "load_torch_model",
    "plan_devices",
    "visible_devices",
]

#: precisions the backend runs in (``params()["dtype"]``); float32 is the default
DTYPES = ("float32", "bfloat16", "float16")
#: streams re-evaluated together when their windows slide at the same step (bounds memory)
_PRIME_BATCH = 4
#: the CPU thread count is part of the fingerprint.  Measured here: with transformers' SDPA
#: attention one and two threads give different logits (2.7e-5); with our attention they
#: were bit-identical (SmolLM2, 8 streams x 100 steps with slides, and a 512-token forward),
#: but nothing in torch guarantees that for every shape and CPU, so the file pins the count
THREADS_CHANGE_LOGITS = True

_import_lock = threading.Lock()
_prepared = False


def available() -> bool:
    """True when torch and transformers can be imported (the ``torch`` extra is installed)."""
    from importlib.util import find_spec

    try:
        return find_spec("torch") is not None and find_spec("transformers") is not None
    except (ImportError, ValueError):  # e.g. sys.modules["torch"] = None
        return False


def _modules():
    """Import torch and transformers lazily, offline, quietly, with deterministic settings."""
    global _prepared
    os.environ["HF_HUB_OFFLINE"] = "1"  # never reach a model hub
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise ModelNotFoundError(f"the torch backend needs torch and transformers ({exc}): "
                                 f"pip install 'lmzip[torch]'") from None
    with _import_lock:
        if not _prepared:
            torch.use_deterministic_algorithms(True)
            torch.set_float32_matmul_precision("highest")  # no TF32
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
            if hasattr(torch.backends.cuda, "matmul"):
                torch.backends.cuda.matmul.allow_tf32 = False
                torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
                torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
            # deterministic mode also fills every new tensor with NaN (no op here reads
            # uninitialized memory): half of a 32-stream step's time, for nothing
            torch.utils.deterministic.fill_uninitialized_memory = False
            # lmzip's stderr is the user's: no download/dequantization progress bars or advice
            transformers.utils.logging.set_verbosity_error()
            transformers.utils.logging.disable_progress_bar()
            from transformers import AttentionInterface
            from transformers.masking_utils import AttentionMaskInterface, eager_mask

            AttentionInterface.register(ATTENTION, _gqa_attention)
            AttentionMaskInterface.register(ATTENTION, eager_mask)
            _prepared = True
    return torch, transformers


#: the attention function every model runs with (registered with transformers)
ATTENTION = "lmzip_gqa"


def _gqa_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Eager attention without copying the cache: the query heads that share a key/value head
    (grouped-query attention) are multiplied with it as one matrix, where transformers'
    eager attention first copies every cached key and value once per query head."""
    import torch

    for name in ("softcap", "s_aux", "sinks"):
        if kwargs.get(name) is not None:
            raise LMZipError(f"attention with {name} is not supported by the torch backend")
    b, h, q, d = query.shape
    hk, kv = key.shape[1], key.shape[2]
    g = h // hk
    w = torch.matmul(query.reshape(b, hk, g * q, d), key.transpose(2, 3)) * scaling  # [b, hk, g*q, kv]
    if attention_mask is not None:  # [b, 1, q, kv] additive
        w = (w.view(b, hk, g, q, kv) + attention_mask[:, :, None, :, :kv]).view(b, hk, g * q, kv)
    w = torch.nn.functional.softmax(w, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(w, value).view(b, h, q, d)
    return out.transpose(1, 2).contiguous(), None


def backend_version() -> str:
    """``"torch <version> transformers <version>"``: both decide the logits."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        import torch

        tv = torch.__version__
    except ImportError:
        return "torch (not installed)"
    try:
        xv = version("transformers")
    except PackageNotFoundError:  # pragma: no cover - depends on the install
        xv = "(not installed)"
    return f"torch {tv} transformers {xv}"


def default_threads() -> int:
    """``$LMZIP_THREADS``, else one per core up to 8."""
    env = os.environ.get("LMZIP_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, min(os.cpu_count() or 1, 8))


# ---------------------------------------------------------------------------- devices


@dataclass(frozen=True)
class DeviceInfo:
    """A device a worker can run on: ``kind`` "cpu" or "cuda", ``index`` for GPUs."""

    kind: str
    index: int = 0
    name: str = "cpu"
    memory: int = 0  # bytes (0: unknown)

    @property
    def torch_device(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"

    @property
    def param(self) -> str:
        """What the fingerprint records: GPUs of another model may compute other logits."""
        return "cpu" if self.kind == "cpu" else f"cuda {self.name}"


def visible_devices() -> list[DeviceInfo]:
    """The CPU and every CUDA device torch sees."""
    torch, _ = _modules()
    out = [DeviceInfo("cpu")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out.append(DeviceInfo("cuda", i, p.name, int(p.total_memory)))
    return out


def plan_devices(devices: Sequence[DeviceInfo], want: str = "auto") -> list[DeviceInfo]:
    """The devices to run workers on, one worker per device.

    ``want``: ``"auto"`` (the GPUs if there are any, else the CPU), ``"cpu"``, ``"cuda"``
    (every GPU; an error without one) or ``"cuda:N"`` (that GPU).  With several GPUs only
    those of the same model as the first one are used: every worker must compute the
    same logits, and the fingerprint records one device name.
    """
    gpus = [d for d in devices if d.kind == "cuda"]
    cpus = [d for d in devices if d.kind == "cpu"] or [DeviceInfo("cpu")]
    if want == "cpu":
        return cpus[:1]
    if want == "auto":
        if not gpus:
            return cpus[:1]
        want = "cuda"
    if want == "cuda":
        if not gpus:
            raise ModelNotFoundError("no CUDA device is available (use --device cpu)")
        first = gpus[0]
        return [d for d in gpus if d.name == first.name]
    if want.startswith("cuda:") and want[5:].isdigit():
        idx = int(want[5:])
        for d in gpus:
            if d.index == idx:
                return [d]
        raise ModelNotFoundError(f"no CUDA device {idx} (found {len(gpus)})")
    raise ValueError(f"device must be auto, cpu, cuda or cuda:N, not {want!r}")


def _plan_from_param(devices: Sequence[DeviceInfo], param: str) -> list[DeviceInfo]:
    """Devices that reproduce a file's ``params["device"]``; ModelMismatchError if none here."""
    if param == "cpu":
        return plan_devices(devices, "cpu")
    if param.startswith("cuda "):
        name = param[5:]
        same = [d for d in devices if d.kind == "cuda" and d.name == name]
        if same:
            return same
        raise ModelMismatchError(f"file was compressed on a {name} GPU; this machine has none, and other "
                                 f"devices compute other probabilities")
    raise ModelMismatchError(f"file names an unknown device {param[:40]!r}")


# ---------------------------------------------------------------------------- tokenizers


def _gguf_vocab_tokenizer(path: Path) -> tuple[PieceTokenizer, int, Any]:
    """The tokenizer of a GGUF file without llama.cpp (:class:`~lmzip.predictors.gguf_tokenizer.GGUFTokenizer`:
    llama.cpp's pieces and tokens, as the portable and llama.cpp backends use).  A tokenizer kind
    lmzip does not rebuild falls back to llama.cpp's, when it is installed.
    Returns (tokenizer, start token, keep-alive)."""
    from .gguf_tokenizer import GGUFTokenizer, _Metadata

    try:
        tok = GGUFTokenizer(path)
    except LMZipError as exc:
        try:
            return _llama_vocab_tokenizer(path)
        except ModelNotFoundError:
            raise ModelNotFoundError(f"cannot tokenize for {path.name}: {exc}") from None
    fields = _Metadata(path).fields
    start = next((int(fields[k]) for k in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id")
                  if k in fields and int(fields[k]) >= 0), None)
    if start is None:
        raise LMZipError(f"model {path.name} has neither a BOS nor an EOS token")
    return tok.piece_tokenizer(), start, None


def _llama_vocab_tokenizer(path: Path) -> tuple[PieceTokenizer, int, Any]:
    """llama.cpp's tokenizer for a GGUF file, vocabulary only (no weights): the same pieces
    and tokens as the llama.cpp backend.  Returns (tokenizer, start token, keep-alive)."""
    from .llamacpp import LlamaCppModel, _llama

    L = _llama()
    mparams = L.llama_model_default_params()
    mparams.vocab_only = True
    model = L.llama_model_load_from_file(str(path).encode(), mparams)
    if not model:
        raise ModelNotFoundError(f"llama.cpp could not read the vocabulary of {path} (not a GGUF model?)")

    class _Vocab:  # the attributes LlamaCppModel's piece/tokenize helpers use
        def __init__(self) -> None:
            self._L = L
            self._model = model
            self._vocab = L.llama_model_get_vocab(model)

        def __del__(self) -> None:
            try:
                if self._model:
                    self._L.llama_model_free(self._model)
                    self._model = None
            except Exception:  # pragma: no cover - interpreter shutdown
                pass

    v = _Vocab()
    n_vocab = L.llama_vocab_n_tokens(v._vocab)
    bos = L.llama_vocab_bos(v._vocab)
    start = bos if bos >= 0 else L.llama_vocab_eos(v._vocab)
    if start < 0:
        raise LMZipError(f"model {path.name} has neither a BOS nor an EOS token")
    pieces = [LlamaCppModel._piece(v, t) for t in range(n_vocab)]  # type: ignore[arg-type]
    tok = PieceTokenizer(pieces, lambda text: LlamaCppModel._tokenize_text(v, text))  # type: ignore[arg-type]
    return tok, int(start), v


def hf_pieces(hf_tokenizer) -> list[bytes]:
    """The exact bytes of each token of a transformers (fast) tokenizer.

    Byte-level BPE (GPT-2, Llama 3, SmolLM2, Qwen): tokens are spelled in GPT-2's byte
    alphabet.  SentencePiece-style (``▁`` for a space, ``<0xNN>`` byte fallback) otherwise.
    Special tokens spell nothing (they are never coded); other added tokens are their text.
    """
    n = len(hf_tokenizer)
    added = hf_tokenizer.added_tokens_decoder  # id -> AddedToken
    special_ids = set(hf_tokenizer.all_special_ids) | {i for i, t in added.items() if t.special}
    from .gguf_tokenizer import _BYTE_OF_CHAR as inv  # GPT-2's byte alphabet, character -> byte

    vocab_tokens = [t for i, t in enumerate(hf_tokenizer.convert_ids_to_tokens(list(range(n))))
                    if i not in added and t is not None]
    byte_level = bool(vocab_tokens) and all(all(ch in inv for ch in t) for t in vocab_tokens)
    pieces: list[bytes] = []
    for i, t in enumerate(hf_tokenizer.convert_ids_to_tokens(list(range(n)))):
        if t is None or i in special_ids:
            pieces.append(b"")
        elif i in added:
            pieces.append(added[i].content.encode("utf-8"))
        elif byte_level:
            pieces.append(bytes(inv[ch] for ch in t))
        elif len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
            pieces.append(bytes([int(t[3:5], 16)]))
        else:
            pieces.append(t.replace("\u2581", " ").encode("utf-8"))
    return pieces


def _hf_piece_tokenizer(hf_tokenizer) -> PieceTokenizer:
    pieces = hf_pieces(hf_tokenizer)

    def tokenize(text: bytes) -> list[int]:
        try:  # special-token text (e.g. "<|endoftext|>") stays plain text
            return list(hf_tokenizer(text.decode("utf-8"), add_special_tokens=False,
                                     split_special_tokens=True)["input_ids"])
        except TypeError:  # pragma: no cover - older tokenizers
            return list(hf_tokenizer(text.decode("utf-8"), add_special_tokens=False)["input_ids"])

    return PieceTokenizer(pieces, tokenize)


def _hf_start_token(module, hf_tokenizer) -> int:
    for tid in (getattr(hf_tokenizer, "bos_token_id", None), getattr(module.config, "bos_token_id", None),
                getattr(hf_tokenizer, "eos_token_id", None), getattr(module.config, "eos_token_id", None)):
        if isinstance(tid, list):
            tid = tid[0] if tid else None
        if isinstance(tid, int) and tid >= 0:
            return tid
    raise LMZipError("the model has neither a BOS nor an EOS token")


def folder_sha256(path: Path) -> str:
    """SHA-256 of a model folder: of ``name NUL sha256 LF`` for each regular file at its top
    level, sorted by name (weights, config and tokenizer files alike)."""
    from .cache import file_sha256

    h = hashlib.sha256()
    for f in sorted(p for p in Path(path).iterdir() if p.is_file() and not p.name.startswith(".")):
        h.update(f"{f.name}\0{file_sha256(f)}\n".encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------- the KV cache


def _additive_mask(torch, visible, dtype):
    """[k, kv_len] booleans -> the [k, 1, 1, kv_len] additive mask (0 or the dtype's minimum)."""
    mask = torch.zeros((visible.shape[0], 1, 1, visible.shape[1]), dtype=dtype, device=visible.device)
    return mask.masked_fill_(~visible[:, None, None, :], torch.finfo(dtype).min)


def _sliding_window(config, name: str) -> int | None:
    """The window of the model's sliding-window layers if it mixes them with full-attention
    layers (Gemma 3), else None; refuses layer kinds the one-token step cannot mask."""
    types = set(getattr(config, "layer_types", None) or ())
    if not types or types == {"full_attention"}:
        return None
    window = getattr(config, "sliding_window", None)
    if types - {"full_attention", "sliding_attention"} or not window:
        raise ModelNotFoundError(f"model {name} is not supported by the torch backend: its layer kinds "
                                 f"({', '.join(sorted(types))}) need attention masks it cannot build")
    return int(window)



def _slot_cache(torch, keys: list, values: list, write_pos, kv_len: int):
    """A transformers ``Cache`` over our own buffers: each layer writes the new token's key
    and value of row ``r`` at column ``write_pos[r]`` (in place) and attends over the first
    ``kv_len`` columns (the 4-D mask hides each row's unused ones)."""
    from transformers.cache_utils import Cache, DynamicLayer

    rows = torch.arange(keys[0].shape[0], device=keys[0].device)

    class _SlotLayer(DynamicLayer):
        def __init__(self, k, v):
            super().__init__()
            self.keys, self.values = k, v
            self.dtype, self.device = k.dtype, k.device
            self.is_initialized = True

        def update(self, key_states, value_states, *args, **kwargs):
            self.keys[rows, :, write_pos] = key_states[:, :, -1]
            self.values[rows, :, write_pos] = value_states[:, :, -1]
            return self.keys[:, :, :kv_len], self.values[:, :, :kv_len]

        def get_seq_length(self) -> int:
            return kv_len - 1

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return kv_len, 0

    return Cache(layers=[_SlotLayer(k, v) for k, v in zip(keys, values)])


class _GroupStream(Stream):
    """One chunk's stream inside a :class:`TorchGroup`: scores valid after ``advance()``."""

    def __init__(self, group: TorchGroup, length: int):
        self._group = group
        self.length = length
        self.pushes = 0
        self.pending: int | None = None  # model token pushed since the last advance
        self.history: list[int] = []  # tokens in the window (start token first)
        self.done = length <= 0
        self._scores = np.full(group.model.vocab_size, -np.inf, dtype=np.float32)

    def scores(self) -> np.ndarray:
        return self._scores

    def push(self, token: int) -> None:
        self.pushes += 1
        if token < self._group.model.tokenizer.n_model_tokens:  # escapes are not shown to the model
            self.pending = int(token)

    def close(self) -> None:
        pass


class TorchGroup(StreamGroup):
    """Streams advanced together: one ``[k, 1]`` forward per :meth:`advance` (see the module doc)."""

    def __init__(self, model: TorchModel, worker: _Worker, lengths: Sequence[int]):
        self.model = model
        self._worker = worker
        streams = [_GroupStream(self, int(n)) for n in lengths]
        super().__init__(list(streams))
        # rows: longest chunk first, so finished streams leave from the end of the buffers
        self._rows = [s for s in sorted(streams, key=lambda s: -s.length) if not s.done]
        self._keys: list = []
        self._values: list = []
        self.forwards = 0  # model calls made (for benchmarks)
        self.primes = 0
        if self._rows:
            with worker.lock:
                self._start()

    # -- helpers

    def _forward(self, ids, **kwargs):
        torch = self._worker.torch
        self.model._pin_threads()
        with torch.inference_mode():
            out = self._worker.module(input_ids=ids, use_cache=True, logits_to_keep=1, **kwargs)
        self.forwards += 1
        return out

    def _take_scores(self, streams: list[_GroupStream], logits) -> None:
        n = self.model.tokenizer.n_model_tokens
        rows = logits[:, -1, :n].float().cpu().numpy()
        for s, row in zip(streams, rows):
            s._scores[:n] = row

    def _start(self) -> None:
        """The first batch: every stream evaluates the start token at position 0."""
        torch = self._worker.torch
        m = self.model
        k = len(self._rows)
        ids = torch.full((k, 1), m.start_token, dtype=torch.long, device=self._worker.device)
        from transformers.cache_utils import DynamicCache

        out = self._forward(ids, past_key_values=DynamicCache())
        self._keys, self._values = [], []
        for layer in out.past_key_values.layers:
            kk, vv = layer.keys, layer.values
            shape = (k, kk.shape[1], m.context + 1, kk.shape[3])
            bk = torch.zeros(shape, dtype=kk.dtype, device=kk.device)
            bv = torch.zeros((k, vv.shape[1], m.context + 1, vv.shape[3]), dtype=vv.dtype, device=vv.device)
            bk[:, :, :1] = kk
            bv[:, :, :1] = vv
            self._keys.append(bk)
            self._values.append(bv)
        for s in self._rows:
            s.history = [m.start_token]
        self._take_scores(self._rows, out.logits)

    def _drop_finished(self) -> None:
        for s in self._rows:
            if s.pushes >= s.length:
                s.done = True
                s.pending = None
        keep = [i for i, s in enumerate(self._rows) if not s.done]
        if len(keep) == len(self._rows):
            return
        if keep == list(range(len(keep))):  # the usual case: the shortest chunks end first
            self._keys = [t[: len(keep)] for t in self._keys]
            self._values = [t[: len(keep)] for t in self._values]
        else:
            idx = self._worker.torch.tensor(keep, device=self._worker.device)
            self._keys = [t.index_select(0, idx) for t in self._keys]
            self._values = [t.index_select(0, idx) for t in self._values]
        self._rows = [self._rows[i] for i in keep]

    def _slide(self, rows: list[int]) -> None:
        """Drop ``discard`` tokens after the start token and evaluate the kept ones again."""
        torch = self._worker.torch
        from transformers.cache_utils import DynamicCache

        m = self.model
        for lo in range(0, len(rows), _PRIME_BATCH):
            part = rows[lo : lo + _PRIME_BATCH]
            kept = []
            for r in part:
                h = self._rows[r].history
                kept.append(h[: m.keep] + h[m.keep + m.discard :])
            n = len(kept[0])
            ids = torch.tensor(kept, dtype=torch.long, device=self._worker.device)
            out = self._forward(ids, past_key_values=DynamicCache())
            sel = torch.tensor(part, device=self._worker.device)
            for i, layer in enumerate(out.past_key_values.layers):
                self._keys[i][sel, :, :n] = layer.keys
                self._values[i][sel, :, :n] = layer.values
            for r, h in zip(part, kept):
                self._rows[r].history = h
            self.primes += 1

    # -- the protocol

    def advance(self) -> None:
        if not self._rows:
            return
        with self._worker.lock:
            self._advance()

    def _advance(self) -> None:
        self._drop_finished()
        evaluate = [i for i, s in enumerate(self._rows) if s.pending is not None]
        if not evaluate:
            return
        m = self.model
        slide = [i for i in evaluate if len(self._rows[i].history) >= m.context]
        if slide:
            self._slide(slide)
        torch = self._worker.torch
        dev = self._worker.device
        k = len(self._rows)
        # rows without a token to evaluate carry a dummy (the start token) whose output and
        # cache entry (written past the row's used columns) are discarded
        tokens = [s.pending if s.pending is not None else m.start_token for s in self._rows]
        used = [len(s.history) for s in self._rows]
        kv_len = max(used) + 1
        ids = torch.tensor(tokens, dtype=torch.long, device=dev).unsqueeze(1)
        pos = torch.tensor(used, dtype=torch.long, device=dev)
        dtype = self._keys[0].dtype
        col = torch.arange(kv_len, device=dev).unsqueeze(0)  # column = position
        visible = col <= pos.unsqueeze(1)  # [k, kv_len]
        mask = _additive_mask(torch, visible, dtype)
        if m.sliding_window:
            # a 4-D mask is taken as given, so the sliding-window layers get their own: the
            # last `sliding_window` positions, as transformers' own masks do
            local = visible & (col > pos.unsqueeze(1) - m.sliding_window)
            mask = {"full_attention": mask, "sliding_attention": _additive_mask(torch, local, dtype)}
        cache = _slot_cache(torch, [t[:k] for t in self._keys], [t[:k] for t in self._values], pos, kv_len)
        out = self._forward(ids, position_ids=pos.unsqueeze(1), attention_mask=mask, past_key_values=cache)
        done = [self._rows[i] for i in evaluate]
        self._take_scores(done, out.logits[evaluate])
        for s in done:
            s.history.append(s.pending)
            s.pending = None

    def close(self) -> None:
        self._keys = []
        self._values = []
        self._rows = []


class _SerialStream(Stream):
    """:meth:`TorchModel.open_stream`: a group of one, advanced on every push."""

    def __init__(self, model: TorchModel):
        self._group = model.open_group([1 << 62])
        self._s = self._group.streams[0]

    def scores(self) -> np.ndarray:
        return self._s.scores()

    def push(self, token: int) -> None:
        self._s.push(token)
        self._group.advance()

    def close(self) -> None:
        self._group.close()


# ---------------------------------------------------------------------------- the model


@dataclass
class _Worker:
    device_info: DeviceInfo
    module: Any
    torch: Any
    lock: threading.Lock

    @property
    def device(self) -> str:
        return self.device_info.torch_device


class TorchModel(Model):
    """A causal LM run by PyTorch through transformers.

    Args:
        module: a transformers causal LM (on the CPU; moved to each worker's device).
        tokenizer: the lossless tokenizer whose first ``n_model_tokens`` are the model's.
        start_token: evaluated at position 0 of every stream (BOS, else EOS).
        name: registry name stored in headers.
        sha256: hex SHA-256 of the model file or folder (:func:`folder_sha256`).
        context: window in tokens; when full, ``discard`` tokens slide out.
        dtype: "float32" (default), "bfloat16" or "float16".
        threads: CPU threads (part of the fingerprint on the CPU).
        streams: default lockstep width for the helpers that group chunks themselves
            (the file records the width the compressor used).
        device: "auto", "cpu", "cuda", "cuda:N" (see :func:`plan_devices`), or a
            ``params["device"]`` value (``"cpu"``, ``"cuda NAME"``) with ``from_param``.
        devices: the devices to plan over (default :func:`visible_devices`; tests inject lists).
    """

    def __init__(self, module, tokenizer: PieceTokenizer, *, start_token: int, name: str, sha256: str,
                 context: int = 2048, dtype: str = "float32", threads: int | None = None, streams: int = 1,
                 device: str = "auto", devices: Sequence[DeviceInfo] | None = None, from_param: bool = False,
                 keepalive: Any = None, source: str = ""):
        torch, _ = _modules()
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
        self.name = name
        self.sha256 = sha256
        self.model_sha256 = bytes.fromhex(sha256)
        self.tokenizer = tokenizer
        self.start_token = int(start_token)
        self.context = int(context)
        if self.context < 16:
            raise ValueError("context must be at least 16 tokens")
        self.keep = 1
        self.discard = max(1, (self.context - self.keep) // 4)
        self.dtype = dtype
        self.threads = int(threads) if threads else default_threads()
        self.streams = max(1, int(streams))
        self.source = source
        self._keepalive = keepalive  # e.g. llama.cpp's vocabulary, for the tokenizer
        self.sliding_window = _sliding_window(module.config, name)
        n_logits = int(getattr(module.config, "vocab_size", 0) or 0)
        if n_logits and n_logits < tokenizer.n_model_tokens:
            raise ModelNotFoundError(f"model {name} has {n_logits} outputs for {tokenizer.n_model_tokens} tokens")
        found = list(devices) if devices is not None else visible_devices()
        plan = _plan_from_param(found, device) if from_param else plan_devices(found, device)
        self.device_param = plan[0].param
        module.eval()
        module.to(getattr(torch, dtype))
        module.config._attn_implementation = ATTENTION
        self._workers: list[_Worker] = []
        for i, d in enumerate(plan):
            mod = module if i == len(plan) - 1 else _copy_module(module)
            mod.to(d.torch_device)
            self._workers.append(_Worker(d, mod, torch, threading.Lock()))
        self._next = 0
        self._check_cache()

    def _pin_threads(self) -> None:
        torch = self._workers[0].torch
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)

    def _check_cache(self) -> None:
        """Refuse architectures whose cache is not a plain per-layer key/value cache (sliding
        or linear-attention layers): the slot cache would compute something else."""
        from transformers.cache_utils import DynamicCache, DynamicLayer

        w = self._workers[0]
        torch = w.torch
        self._pin_threads()
        ids = torch.full((1, 1), self.start_token, dtype=torch.long, device=w.device)
        try:
            with torch.inference_mode():
                out = w.module(input_ids=ids, use_cache=True, past_key_values=DynamicCache(), logits_to_keep=1)
        except Exception as exc:
            raise ModelNotFoundError(f"model {self.name} does not run under the torch backend: {exc}") from None
        layers = getattr(out.past_key_values, "layers", None)
        if not layers or any(type(la) is not DynamicLayer or la.keys is None or la.keys.dim() != 4 for la in layers):
            raise ModelNotFoundError(f"model {self.name} ({type(w.module).__name__}) is not supported by the torch "
                                     f"backend: its cache is not a plain key/value cache")

    # -- the protocol

    def params(self) -> dict[str, Any]:
        p: dict[str, Any] = {
            "backend": backend_version(),
            "context": self.context,
            "device": self.device_param,
            "dtype": self.dtype,
            "model": self.name,
        }
        if self.device_param == "cpu" and THREADS_CHANGE_LOGITS:
            p["threads"] = self.threads
        if self.sliding_window:  # masked since 2026-12-02; files from before had no such layers masked
            p["sliding_window"] = self.sliding_window
        return p  # the lockstep width is the container's (header "streams"), not the model's

    def open_stream(self) -> Stream:
        return _SerialStream(self)

    batches = True

    def open_group(self, lengths: list[int], width: int = 1, worker: int | None = None) -> TorchGroup:
        """A group on the next worker (round robin over the devices), or on ``worker``.
        ``width`` only bounds the group: the batches follow from the lengths."""
        if not 1 <= len(lengths) <= width:
            raise ValueError(f"a group of width {width} holds 1 to {width} chunks, not {len(lengths)}")
        if worker is None:
            worker = self._next
            self._next = (self._next + 1) % len(self._workers)
        return TorchGroup(self, self._workers[worker % len(self._workers)], lengths)

    @property
    def workers(self) -> int:
        return len(self._workers)

    def describe(self) -> str:
        devs = ", ".join(w.device for w in self._workers)
        return (f"{self.name} ({self.source or 'torch'}, {backend_version()}, {self.dtype}, {devs}, "
                f"context {self.context})")

    @property
    def closed(self) -> bool:
        return not self._workers

    def close(self) -> None:
        self._workers = []


def _copy_module(module):
    import copy

    return copy.deepcopy(module)


# ---------------------------------------------------------------------------- loading


def load_torch_model(path: str | os.PathLike, *, name: str, sha256: str | None = None, context: int = 2048,
                     dtype: str = "float32", threads: int | None = None, streams: int = 1, device: str = "auto",
                     from_param: bool = False) -> TorchModel:
    """Load a GGUF file or a local Hugging Face model folder (offline) as a :class:`TorchModel`."""
    from .cache import file_sha256

    torch, transformers = _modules()
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    path = Path(path)
    # eager while loading; TorchModel switches the model to ATTENTION
    kwargs: dict[str, Any] = dict(local_files_only=True, dtype=getattr(torch, dtype), attn_implementation="eager")
    keepalive = None
    # transformers' GGUF dequantization draws its own progress bar (tqdm, outside its logging
    # settings); lmzip's stderr is the user's
    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # pragma: no cover - depends on the transformers version
        gguf_utils = None
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None:
        gguf_utils.tqdm = lambda iterable, *a, **k: iterable
    try:
        if path.is_dir():
            module = transformers.AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
            hf_tok = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            tokenizer = _hf_piece_tokenizer(hf_tok)
            start = _hf_start_token(module, hf_tok)
            sha = sha256 or folder_sha256(path)
            source = f"folder {path.name}"
        elif path.is_file():
            tokenizer, start, keepalive = _gguf_vocab_tokenizer(path)
            module = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, **kwargs)
            sha = sha256 or file_sha256(path)
            source = f"{path.name} via transformers"
        else:
            raise ModelNotFoundError(f"no such model file or folder: {path}")
    except LMZipError:
        raise
    except (OSError, ValueError, KeyError, ImportError, RuntimeError) as exc:
        raise ModelNotFoundError(f"transformers could not load {path}: {_first_line(exc)}") from None
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar
    return TorchModel(module, tokenizer, start_token=start, name=name, sha256=sha, context=context, dtype=dtype,
                      threads=threads, streams=streams, device=device, from_param=from_param,
                      keepalive=keepalive, source=source)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
