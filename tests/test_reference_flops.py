"""FLOPs per token by the capacity paper's convention, on real models' public config.json numbers.

Each count is checked against a step-by-step decode written here from the reference's
description (TeleAI-AI-Flow/InformationCapacity, flops.py): for each of the 1,024 decode
steps t, per layer the projections 2(2d² + 2d·H_kv·d_k), the MLP, attention 4·H·d_k·t, and
the head 2·d·V; then the mean.  The two figures the issue names are also checked as numbers.
"""

from __future__ import annotations

import doctest

import pytest

from lmzip.measure import reference_flops
from lmzip.measure.flops import GEMMA3_270M, SMOLLM2_135M, ArchitectureError
from lmzip.measure.reference_flops import config_from_gguf, flops_per_token

# public config.json values (the keys the count reads, and head_dim / sliding_window it ignores)
SMOLLM2_135M_CONFIG = {"model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30,
                       "num_attention_heads": 9, "num_key_value_heads": 3, "intermediate_size": 1536,
                       "vocab_size": 49152}
GEMMA3_270M_CONFIG = {"model_type": "gemma3_text", "hidden_size": 640, "num_hidden_layers": 18,
                      "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
                      "intermediate_size": 2048, "vocab_size": 262144, "sliding_window": 512}
QWEN3_0_6B_CONFIG = {"model_type": "qwen3", "hidden_size": 1024, "num_hidden_layers": 28,
                     "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
                     "intermediate_size": 3072, "vocab_size": 151936}
LLAMA3_2_1B_CONFIG = {"model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 16,
                      "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
                      "intermediate_size": 8192, "vocab_size": 128256}
# mixtures of experts: Qwen3-30B-A3B (generic rule: intermediate_size, here 8 experts x 768),
# Qwen1.5-MoE-A2.7B (qwen2_moe: plus the shared expert), DeepSeek-V2-Lite (latent attention)
QWEN3_30B_A3B_CONFIG = {"model_type": "qwen3_moe", "hidden_size": 2048, "num_hidden_layers": 48,
                        "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128,
                        "intermediate_size": 6144, "moe_intermediate_size": 768, "num_experts": 128,
                        "num_experts_per_tok": 8, "vocab_size": 151936}
QWEN1_5_MOE_A2_7B_CONFIG = {"model_type": "qwen2_moe", "hidden_size": 2048, "num_hidden_layers": 24,
                            "num_attention_heads": 16, "num_key_value_heads": 16, "intermediate_size": 5632,
                            "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632,
                            "num_experts": 60, "num_experts_per_tok": 4, "vocab_size": 151936}
DEEPSEEK_V2_LITE_CONFIG = {"model_type": "deepseek_v2", "hidden_size": 2048, "num_hidden_layers": 27,
                           "num_attention_heads": 16, "num_key_value_heads": 16, "intermediate_size": 10944,
                           "moe_intermediate_size": 1408, "n_shared_experts": 2, "n_routed_experts": 64,
                           "num_experts_per_tok": 6, "kv_lora_rank": 512, "vocab_size": 102400}


def stepwise(cfg: dict, d_ff: int, mlp_factor: int = 6, steps: int = 1024) -> float:
    """The reference's GQA decode, one step at a time."""
    d, h = cfg["hidden_size"], cfg["num_attention_heads"]
    kv, d_k = cfg.get("num_key_value_heads", h), cfg["hidden_size"] // cfg["num_attention_heads"]
    total = 0
    for t in range(steps):
        per_layer = 2 * (2 * d * d + 2 * d * kv * d_k) + mlp_factor * d * d_ff + 4 * h * d_k * t
        total += cfg["num_hidden_layers"] * per_layer + 2 * d * cfg["vocab_size"]
    return total / steps


@pytest.mark.parametrize("cfg, d_ff", [
    (SMOLLM2_135M_CONFIG, 1536),
    (GEMMA3_270M_CONFIG, 2048),
    (QWEN3_0_6B_CONFIG, 3072),
    (LLAMA3_2_1B_CONFIG, 8192),
    (QWEN3_30B_A3B_CONFIG, 6144),
    (QWEN1_5_MOE_A2_7B_CONFIG, 5632 + 5632),
])
def test_against_the_stepwise_reference(cfg, d_ff):
    assert flops_per_token(cfg) == stepwise(cfg, d_ff)


def test_the_issues_figures():
    assert flops_per_token(SMOLLM2_135M_CONFIG) == 304_314_624
    assert flops_per_token(GEMMA3_270M_CONFIG) == 537_536_000
    # by hand, SmolLM2: projections 2(2·576² + 2·576·3·64) = 1,769,472; MLP 6·576·1536 = 5,308,416;
    # attention on average 2·9·64·1023 = 1,178,496; 30 layers; head 2·576·49152 = 56,623,104
    assert 30 * (1_769_472 + 5_308_416 + 1_178_496) + 56_623_104 == 304_314_624


def test_head_dim_and_windows_are_ignored():
    # Gemma 3: head_dim 256, but the reference takes d_k = 640 // 4 = 160, and no sliding window
    no_extras = {k: v for k, v in GEMMA3_270M_CONFIG.items() if k not in ("head_dim", "sliding_window")}
    assert flops_per_token(no_extras) == flops_per_token(GEMMA3_270M_CONFIG)
    assert flops_per_token({**GEMMA3_270M_CONFIG, "head_dim": 160}) == flops_per_token(GEMMA3_270M_CONFIG)


def test_mixture_of_experts_rules():
    # Qwen3-MoE: intermediate_size is what the reference reads, equal to the 8 experts used
    assert QWEN3_30B_A3B_CONFIG["intermediate_size"] == 8 * QWEN3_30B_A3B_CONFIG["moe_intermediate_size"]
    assert flops_per_token(QWEN3_30B_A3B_CONFIG) == 5_353_308_160
    # qwen2_moe adds the shared expert: without that rule it would count 5632 only
    assert flops_per_token(QWEN1_5_MOE_A2_7B_CONFIG) == 4_850_089_984
    generic = {**QWEN1_5_MOE_A2_7B_CONFIG, "model_type": "qwen2"}
    assert flops_per_token(QWEN1_5_MOE_A2_7B_CONFIG) - flops_per_token(generic) == 24 * 6 * 2048 * 5632


def test_deepseek_latent_attention():
    # mla_model_theoretical_flops, reuse mode: attention over kv_lora_rank = 512 latents per step;
    # MLP (2 shared + 6 routed) x 6·d·moe_intermediate_size in all 27 layers
    d, d_k = 2048, 2048 // 16
    per_layer = 2 * (2 * d * d + 2 * d * 16 * d_k) + 8 * 6 * d * 1408 + 4 * 16 * d_k * 512
    assert flops_per_token(DEEPSEEK_V2_LITE_CONFIG) == 27 * per_layer + 2 * d * 102400 == 5_175_771_136


def test_gpt_oss_and_text_config():
    gpt_oss = {"model_type": "gpt_oss", "hidden_size": 2880, "num_hidden_layers": 24, "num_attention_heads": 64,
               "num_key_value_heads": 8, "intermediate_size": 2880, "num_experts_per_tok": 4,
               "vocab_size": 201088}
    assert flops_per_token(gpt_oss) == stepwise(gpt_oss, 2880 * 4, mlp_factor=4)
    # a multimodal checkpoint: the language model's numbers under text_config
    assert flops_per_token({"model_type": "gemma3", "text_config": GEMMA3_270M_CONFIG}) == 537_536_000


def test_other_lengths_are_exact():
    assert flops_per_token(SMOLLM2_135M_CONFIG, 1) == 30 * (1_769_472 + 5_308_416) + 56_623_104
    assert flops_per_token(SMOLLM2_135M_CONFIG, 7) == stepwise(SMOLLM2_135M_CONFIG, 1536, steps=7)


def test_from_gguf_metadata():
    assert flops_per_token(config_from_gguf(SMOLLM2_135M)) == 304_314_624
    assert flops_per_token(config_from_gguf(GEMMA3_270M)) == 537_536_000
    qwen2moe = {"general.architecture": "qwen2moe", "qwen2moe.block_count": "24",
                "qwen2moe.embedding_length": "2048", "qwen2moe.feed_forward_length": "5632",
                "qwen2moe.attention.head_count": "16", "qwen2moe.attention.head_count_kv": "16",
                "qwen2moe.expert_feed_forward_length": "1408",
                "qwen2moe.expert_shared_feed_forward_length": "5632", "qwen2moe.expert_count": "60",
                "qwen2moe.expert_used_count": "4", "tokenizer.vocab_size": "151936"}
    assert flops_per_token(config_from_gguf(qwen2moe)) == flops_per_token(QWEN1_5_MOE_A2_7B_CONFIG)


def test_missing_or_odd_numbers_are_clear_errors():
    with pytest.raises(ArchitectureError, match="hidden_size"):
        flops_per_token({"num_hidden_layers": 2})
    with pytest.raises(ArchitectureError, match="not a number"):
        flops_per_token({**SMOLLM2_135M_CONFIG, "intermediate_size": "wide"})
    with pytest.raises(ArchitectureError, match="per-layer"):
        config_from_gguf({"general.architecture": "x", "x.feed_forward_length": "[1, 2]"})
    with pytest.raises(ArchitectureError, match="architecture"):
        config_from_gguf({})


def test_docstring_examples():
    result = doctest.testmod(reference_flops)
    assert result.attempted and not result.failed
