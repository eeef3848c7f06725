"""FLOPs per token by the convention of the information-capacity paper's reference code.

Yuan, Shao, Zhang, Li (2025, arXiv:2511.08066) divide by the forward FLOPs per token
that their reference code (GitHub: TeleAI-AI-Flow/InformationCapacity, ``flops.py``)
computes from a model's Hugging Face ``config.json``: the mean cost of decoding
``tokens`` (1,024) tokens one at a time from an empty cache, 2 FLOPs per
multiply-add.  Per layer and token:

- projections ``2·(2d² + 2d·H_kv·d_k)`` (Q and O as d × d, K and V as d × H_kv·d_k),
  with ``d_k = d // H``: the config's ``head_dim`` is ignored;
- the gated MLP ``6·d·d_ff``, ``d_ff`` the config's ``intermediate_size``;
- attention over the cache ``4·H·d_k·c`` at cache length ``c = 0 … tokens − 1``, so
  ``2·H·d_k·(tokens − 1)`` on average;

plus the LM head ``2·d·V``.  Nothing for sliding windows, norms, embeddings, RoPE or
softmax.  lmzip's own count (:mod:`lmzip.measure.flops`, ``--flops physical``) follows
the model as it runs instead: the real head size, sliding windows, the experts used.

Mixtures of experts follow the reference's rules, which it keys on the model's name
and lmzip on ``model_type``: in general ``d_ff`` is ``intermediate_size`` whatever the
experts (for Qwen3-MoE that equals the experts used, 8 × 768 = 6,144; for Mixtral it
counts one expert of two); ``qwen2_moe`` adds ``shared_expert_intermediate_size``;
``gpt_oss`` counts ``4·d·d_ff`` per expert used (no gate); DeepSeek's ``deepseek_v2``
and ``deepseek_v3`` use the reference's multi-head latent attention count
(``mla_model_theoretical_flops``: attention over ``kv_lora_rank`` latents, the MLP
``6·d·moe_intermediate_size`` for each shared and each routed expert used, in every
layer).

A GGUF file carries the same numbers under other names; :func:`config_from_gguf`
translates them.

>>> smollm2 = {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
...            "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152}
>>> flops_per_token(smollm2)
304314624
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

from .flops import ArchitectureError

__all__ = ["flops_per_token", "config_from_gguf", "read_config", "DEFAULT_TOKENS"]

#: the decode the reference averages over: its ``max_sample_length``
DEFAULT_TOKENS = 1024

_MLA_TYPES = ("deepseek_v2", "deepseek_v3")


def _int(cfg: Mapping[str, Any], *keys: str, default: int | None = None) -> int:
    for key in keys:
        value = cfg.get(key)
        if value is not None:
            if isinstance(value, (list, tuple)):
                raise ArchitectureError(f"config value {key} is a per-layer list: the reference's count "
                                        f"needs one number")
            try:
                return int(value)
            except (TypeError, ValueError):
                raise ArchitectureError(f"config value {key} is {value!r}, not a number") from None
    if default is None:
        raise ArchitectureError(f"the model's config has no {' or '.join(keys)}: cannot count FLOPs")
    return default


def _text_config(cfg: Mapping[str, Any]) -> Mapping[str, Any]:
    # multimodal checkpoints (Gemma 3 4B+, Llama 4) keep the language model's numbers in text_config
    if "hidden_size" not in cfg and isinstance(cfg.get("text_config"), Mapping):
        return cfg["text_config"]
    return cfg


def flops_per_token(config: Mapping[str, Any], tokens: int = DEFAULT_TOKENS) -> int | float:
    """Mean forward FLOPs per token of a ``tokens``-token decode, by the reference's convention.

    ``config``: a Hugging Face ``config.json`` as a dict (or :func:`config_from_gguf`'s).
    Exact: an ``int`` when the mean is a whole number (always, for 1,024 tokens), else a float.
    """
    if tokens < 1:
        raise ValueError("tokens must be at least 1")
    top = config
    cfg = _text_config(config)
    model_type = str(cfg.get("model_type") or top.get("model_type") or "").lower()
    d = _int(cfg, "hidden_size")
    layers = _int(cfg, "num_hidden_layers", "n_layer")
    heads = _int(cfg, "num_attention_heads", "n_head")
    kv_heads = _int(cfg, "num_key_value_heads", default=heads)
    vocab = _int(cfg, "vocab_size")
    d_k = d // heads  # the reference's per-head width, whatever head_dim says
    proj = 2 * (2 * d * d + 2 * d * kv_heads * d_k)
    head = 2 * d * vocab
    # sum over cache lengths 0 .. tokens-1 of 4·H·d_k·c, per layer
    attention_total = 4 * heads * d_k * (tokens * (tokens - 1) // 2)

    if model_type in _MLA_TYPES:
        d_ff = _int(cfg, "moe_intermediate_size", "intermediate_size")
        experts = _int(cfg, "n_shared_experts", default=0) + _int(cfg, "num_experts_per_tok", default=0)
        mlp = experts * 6 * d * d_ff
        # decode against kv_lora_rank latents, reused: 4·H·d_k·M per step
        attention_total = 4 * heads * d_k * tokens * _int(cfg, "kv_lora_rank", default=1)
    elif model_type == "gpt_oss":
        mlp = 4 * d * _int(cfg, "intermediate_size") * _int(cfg, "num_experts_per_tok")
    elif model_type.startswith("llama4"):
        # the routed MLP of intermediate_size_mlp, plus a 2-matrix MLP of intermediate_size
        mlp = d * (6 * _int(cfg, "intermediate_size_mlp") + 4 * _int(cfg, "intermediate_size"))
    else:
        d_ff = _int(cfg, "intermediate_size", "ffn_hidden_size")
        if model_type == "qwen2_moe":
            d_ff += _int(cfg, "shared_expert_intermediate_size", default=0)
        mlp = 6 * d * d_ff

    total = layers * (tokens * (proj + mlp) + attention_total) + tokens * head
    mean = Fraction(total, tokens)
    return int(mean) if mean.denominator == 1 else float(mean)


#: GGUF metadata key (after ``{arch}.``) -> config.json key
_GGUF_KEYS = {
    "block_count": "num_hidden_layers",
    "embedding_length": "hidden_size",
    "feed_forward_length": "intermediate_size",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "expert_used_count": "num_experts_per_tok",
    "expert_count": "num_experts",
    "expert_feed_forward_length": "moe_intermediate_size",
    "expert_shared_feed_forward_length": "shared_expert_intermediate_size",
    "expert_shared_count": "n_shared_experts",
    "attention.kv_lora_rank": "kv_lora_rank",
}
#: GGUF ``general.architecture`` -> config.json ``model_type``, where the count depends on it
_GGUF_TYPES = {"qwen2moe": "qwen2_moe", "deepseek2": "deepseek_v3", "gpt-oss": "gpt_oss", "llama4": "llama4_text"}


def config_from_gguf(meta: Mapping[str, str]) -> dict[str, Any]:
    """The config.json numbers the count reads, from GGUF key/value metadata (strings, as
    :func:`lmzip.measure.flops.gguf_metadata` gives them; the vocabulary's size from
    ``tokenizer.vocab_size``, the rows of the LM head)."""
    arch = meta.get("general.architecture")
    if not arch:
        raise ArchitectureError("model metadata has no general.architecture")
    cfg: dict[str, Any] = {"model_type": _GGUF_TYPES.get(arch, arch)}
    for key, name in _GGUF_KEYS.items():
        raw = meta.get(f"{arch}.{key}")
        if raw is None:
            continue
        if raw.startswith("["):
            raise ArchitectureError(f"{arch}.{key} is a per-layer list: the reference's count needs one number")
        cfg[name] = int(float(raw))
    vocab = meta.get(f"{arch}.vocab_size") or meta.get("tokenizer.vocab_size")
    if vocab is not None:
        cfg["vocab_size"] = int(float(vocab))
    return cfg


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    """A Hugging Face model folder's ``config.json``."""
    path = Path(folder) / "config.json"
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise ArchitectureError(f"cannot read {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ArchitectureError(f"{path} is not valid JSON: {exc}") from None
