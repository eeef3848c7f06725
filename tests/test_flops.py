"""FLOPs per token from GGUF metadata, against counts worked out by hand."""

from __future__ import annotations

import doctest
import importlib

import pytest

from lmzip.measure.flops import (
    GEMMA3_270M,
    SMOLLM2_135M,
    Architecture,
    ArchitectureError,
    average_flops,
    flops_at,
    gguf_metadata,
)


def test_smollm2_135m_by_hand():
    # 30 layers, d=576, 9 heads, 3 KV heads, head_dim 64, FFN 1536, vocab 49152.
    # Per layer, multiply-adds: Q 576*576 + K 576*192 + V 576*192 + O 576*576 = 884,736;
    # gated MLP 3*576*1536 = 2,654,208; attention 9*(64+64) = 1,152 per cached position.
    # LM head 576*49152 = 28,311,552.  A 1,024-token decode attends to 512.5 positions on average.
    per_layer = 884_736 + 2_654_208
    assert per_layer == 3_538_944
    expected_first = 2 * (30 * per_layer + 30 * 1_152 * 1 + 28_311_552)
    expected_mean = 2 * (30 * per_layer + 30 * 1_152 * 512.5 + 28_311_552)
    arch = Architecture.from_metadata(SMOLLM2_135M)
    assert flops_at(arch, 0) == expected_first == 269_028_864
    assert average_flops(arch, 1024) == expected_mean == 304_383_744
    assert flops_at(arch, 1023) - flops_at(arch, 0) == 2 * 30 * 1_152 * 1023


def test_gemma3_270m_by_hand():
    # 18 layers, d=640, 4 heads, 1 KV head, head_dim 256 (key_length), FFN 2048, vocab 262,144;
    # sliding window 512 on 15 layers, full attention on layers 6, 12, 18 (every 6th).
    # Per layer: Q 640*1024 + K 640*256 + V 640*256 + O 1024*640 = 1,638,400; MLP 3*640*2048 = 3,932,160;
    # attention 4*(256+256) = 2,048 per position.  LM head 640*262144 = 167,772,160.
    # Mean positions attended over a 1,024-token decode: full 512.5; sliding
    # (1+...+512 + 512*512)/1024 = 384.25.
    arch = Architecture.from_metadata(GEMMA3_270M)
    assert arch.windows.count(None) == 3 and arch.windows.count(512) == 15 and arch.windows[5] is None
    macs = 18 * (1_638_400 + 3_932_160) + 2_048 * (3 * 512.5 + 15 * 384.25) + 167_772_160
    assert average_flops(arch, 1024) == 2 * macs == 565_990_400
    # past the window only the 3 global layers grow
    assert flops_at(arch, 600) - flops_at(arch, 599) == 2 * 3 * 2_048


def test_synthetic_architecture():
    meta = {"general.architecture": "toy", "toy.block_count": "2", "toy.embedding_length": "8",
            "toy.feed_forward_length": "16", "toy.attention.head_count": "2", "toy.vocab_size": "10"}
    arch = Architecture.from_metadata(meta)
    assert (arch.kv_heads, arch.head_dim_k, arch.head_dim_v) == (2, 4, 4)  # defaults: MHA, d/heads
    # per layer: projections 4 * 8*8 = 256, MLP 3*8*16 = 384, attention 2*(4+4) = 16 per position
    assert flops_at(arch, 0) == 2 * (2 * (256 + 384) + 2 * 16 * 1 + 8 * 10)
    assert average_flops(arch, 4) == 2 * (2 * (256 + 384) + 2 * 16 * 2.5 + 8 * 10)
    moe = Architecture.from_metadata({**meta, "toy.expert_count": "4", "toy.expert_used_count": "2"})
    assert flops_at(moe, 0) - flops_at(arch, 0) == 2 * 2 * (384 + 8 * 4)  # a second expert and the router


def test_missing_metadata_is_a_clear_error():
    with pytest.raises(ArchitectureError, match="block_count"):
        Architecture.from_metadata({"general.architecture": "toy"})
    with pytest.raises(ArchitectureError, match="architecture"):
        Architecture.from_metadata({})


@pytest.mark.llm
def test_metadata_read_from_the_installed_model(llm):
    meta = gguf_metadata(llm)
    assert Architecture.from_metadata(meta) == Architecture.from_metadata(SMOLLM2_135M)


@pytest.mark.parametrize("module", ["flops"])
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(f"lmzip.measure.{module}"))
    assert result.attempted and not result.failed
