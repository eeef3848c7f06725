"""lmzip's own (physical) count of forward FLOPs per token, from a model's GGUF metadata.

``lmzip capacity --flops physical``; the default is the paper's reference convention
(:mod:`lmzip.measure.reference_flops`), which ignores ``head_dim`` and sliding windows:
537,536,000 FLOPs per token for Gemma 3 270M where this count gives 565,990,400.
What is counted here, per generated token, with 2 FLOPs per multiply-add:

- attention projections: ``Q = x·Wq`` (d × H·dk), ``K``, ``V`` (d × Hkv·dk, d × Hkv·dv)
  and the output ``O`` (H·dv × d);
- attention over the cache: ``q·k`` and ``p·v`` against every cached position the
  layer attends to (``H·(dk + dv)`` multiply-adds per position); a sliding-window
  layer attends to at most ``window`` positions;
- the gated MLP: gate, up and down matrices, ``3·d·dff`` multiply-adds (times the
  experts used per token for a mixture of experts, plus the router);
- the LM head, ``d·V``.

Not counted: embedding lookups (no arithmetic), norms, RoPE, softmax, activations
and residual adds (element-wise, under 1 % here).  A decode at position ``t``
(0-based) attends to ``t + 1`` positions; :func:`average_flops` averages over
positions ``0 .. n-1`` (1,024 by default), as Yuan et al. (2025) do.

>>> arch = Architecture.from_metadata(SMOLLM2_135M)
>>> arch.layers, arch.d_model, arch.heads, arch.kv_heads, arch.head_dim_k, arch.vocab
(30, 576, 9, 3, 64, 49152)
>>> flops_at(arch, 0)   # the first token attends to itself only
269028864
>>> average_flops(arch, 1024)
304383744.0
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import LMZipError

__all__ = [
    "Architecture",
    "flops_at",
    "average_flops",
    "gguf_metadata",
    "gguf_file_metadata",
    "SLIDING_WINDOW_PATTERN",
    "ArchitectureError",
    "SMOLLM2_135M",
    "GEMMA3_270M",
]

#: llama.cpp's layer pattern for architectures whose GGUF does not say which layers
#: use the sliding window: every n-th layer is global, the others slide
#: (llama.cpp, src/llama-model.cpp: ``hparams.set_swa_pattern(6)`` for gemma3)
SLIDING_WINDOW_PATTERN = {"gemma3": 6, "gemma2": 2}

#: the metadata of the two registry models (the keys flops reads), for tests and docs
SMOLLM2_135M = {
    "general.architecture": "llama",
    "llama.block_count": "30",
    "llama.embedding_length": "576",
    "llama.feed_forward_length": "1536",
    "llama.attention.head_count": "9",
    "llama.attention.head_count_kv": "3",
    "llama.vocab_size": "49152",
}
GEMMA3_270M = {
    "general.architecture": "gemma3",
    "gemma3.block_count": "18",
    "gemma3.embedding_length": "640",
    "gemma3.feed_forward_length": "2048",
    "gemma3.attention.head_count": "4",
    "gemma3.attention.head_count_kv": "1",
    "gemma3.attention.key_length": "256",
    "gemma3.attention.value_length": "256",
    "gemma3.attention.sliding_window": "512",
    "tokenizer.vocab_size": "262144",  # not in the GGUF's metadata: from the vocabulary
}


class ArchitectureError(LMZipError):
    """The model's metadata lacks what the FLOP count needs, or describes something else."""


@dataclass(frozen=True)
class Architecture:
    name: str
    layers: int
    d_model: int
    d_ff: int
    heads: int
    kv_heads: int
    head_dim_k: int
    head_dim_v: int
    vocab: int
    #: per layer: the sliding window (positions attended at most), or None for full attention
    windows: tuple[int | None, ...]
    experts_used: int = 1
    experts: int = 0

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str], vocab: int | None = None) -> Architecture:
        """From GGUF key/value metadata (strings, as llama.cpp returns them).

        ``vocab`` overrides ``{arch}.vocab_size`` (which many GGUFs omit; the
        vocabulary's own size is what the LM head produces).
        """
        arch = meta.get("general.architecture")
        if not arch:
            raise ArchitectureError("model metadata has no general.architecture")

        def get(key: str, default: int | None = None) -> int:
            raw = meta.get(f"{arch}.{key}")
            if raw is None:
                if default is None:
                    raise ArchitectureError(f"model metadata has no {arch}.{key}: cannot count FLOPs")
                return default
            try:
                return int(float(raw))
            except ValueError:
                raise ArchitectureError(f"{arch}.{key} is {raw!r}, not a number "
                                        f"(per-layer values are not supported)") from None

        layers = get("block_count")
        d = get("embedding_length")
        heads = get("attention.head_count")
        kv_heads = get("attention.head_count_kv", heads)
        dk = get("attention.key_length", d // heads)
        dv = get("attention.value_length", dk)
        if vocab is None:
            vocab = get("vocab_size", int(meta.get("tokenizer.vocab_size", 0)) or None)
        window = get("attention.sliding_window", 0)
        windows: tuple[int | None, ...] = (None,) * layers
        if window:
            every = SLIDING_WINDOW_PATTERN.get(arch)
            if every is None:
                windows = (window,) * layers  # e.g. Mistral: every layer slides
            else:
                windows = tuple(None if (i + 1) % every == 0 else window for i in range(layers))
        return cls(name=arch, layers=layers, d_model=d, d_ff=get("feed_forward_length"), heads=heads,
                   kv_heads=kv_heads, head_dim_k=dk, head_dim_v=dv, vocab=int(vocab), windows=windows,
                   experts_used=get("expert_used_count", 1), experts=get("expert_count", 0))

    # multiply-adds of the parts that do not depend on the position
    def projection_macs(self) -> int:
        d, h, kv = self.d_model, self.heads, self.kv_heads
        return d * h * self.head_dim_k + d * kv * self.head_dim_k + d * kv * self.head_dim_v + h * self.head_dim_v * d

    def mlp_macs(self) -> int:
        return 3 * self.d_model * self.d_ff * self.experts_used + self.d_model * self.experts

    def attention_macs_per_position(self) -> int:
        return self.heads * (self.head_dim_k + self.head_dim_v)

    def head_macs(self) -> int:
        return self.d_model * self.vocab


def flops_at(arch: Architecture, position: int) -> int:
    """FLOPs to decode the token at ``position`` (0-based; it attends to ``position + 1``)."""
    attended = sum(position + 1 if w is None else min(position + 1, w) for w in arch.windows)
    macs = (arch.layers * (arch.projection_macs() + arch.mlp_macs())
            + attended * arch.attention_macs_per_position() + arch.head_macs())
    return 2 * macs


def average_flops(arch: Architecture, tokens: int = 1024) -> float:
    """Mean of :func:`flops_at` over positions ``0 .. tokens-1`` (a decode of ``tokens`` tokens)."""
    if tokens < 1:
        raise ValueError("tokens must be at least 1")
    return sum(flops_at(arch, t) for t in range(tokens)) / tokens


def gguf_metadata(model) -> dict[str, str]:
    """:func:`gguf_file_metadata` of a loaded model's GGUF file (any backend that runs one)."""
    model = getattr(model, "base", model)  # a mixed model: its language model
    path = getattr(model, "path", None)
    if path is None or not str(path).endswith(".gguf"):
        raise ArchitectureError(f"model '{getattr(model, 'name', model)}' is not a transformer in a GGUF file: "
                                f"no FLOPs to count")
    return gguf_file_metadata(path, model.tokenizer.n_model_tokens)


def gguf_file_metadata(path, vocab_size: int | None = None) -> dict[str, str]:
    """Every scalar key/value of a GGUF file, as strings (arrays of numbers as ``[a, b, ...]``,
    as llama.cpp prints them; the tokenizer's long arrays left out); plus
    ``tokenizer.vocab_size``: ``vocab_size`` if given (the vocabulary's size, which the LM
    head produces), else the number of tokens the file lists.  Only the header is read
    (Gemma 3's 262,144-token vocabulary takes ``gguf.GGUFReader`` about ten seconds)."""
    from ..predictors.gguf_tokenizer import _Metadata  # lmzip's own header reader

    fields = _Metadata(path).fields
    out: dict[str, str] = {}
    for key, value in fields.items():
        if isinstance(value, bytes):
            out[key] = value.decode("utf-8", "replace")
        elif isinstance(value, list):  # arrays of strings (the vocabulary, merges)
            continue
        elif isinstance(value, np.ndarray):
            if len(value) <= 1024:
                out[key] = "[" + ", ".join(str(v) for v in value.tolist()) + "]"
        else:
            out[key] = str(int(value)) if float(value).is_integer() else repr(float(value))
    if vocab_size is None:
        vocab_size = len(fields.get("tokenizer.ggml.tokens", ()))
    out["tokenizer.vocab_size"] = str(vocab_size)
    return out
