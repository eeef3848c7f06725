"""Measuring tools: how well, how fast and at what cost lmzip compresses.

They use the pipeline (:mod:`lmzip.core`) and the predictors; nothing below them
imports them.

- ``corpora``: finding and verifying the benchmark files (``corpora/manifest.tsv``).
- ``baselines``: the classic compressors lmzip is measured against (gzip, bzip2, xz, ...).
- ``bench``: every file through lmzip and the baselines, round trips verified, cached.
- ``report``: benchmark results as tables (terminal, Markdown, CSV, JSON).
- ``plots``: PNG plots of benchmark and capacity results (matplotlib).
- ``entropy``: a model's cross-entropy of a file, without coding (a quick size estimate).
- ``flops``: forward FLOPs per token from a GGUF file's metadata.
- ``capacity``: information capacity of the installed models (entropy and FLOPs).

Their commands (``lmzip bench``, ``entropy``, ``capacity``) are in :mod:`lmzip.cli.measure`.
"""
