"""Measuring tools: how well, how fast and at what cost lmzip compresses.

They use the pipeline (:mod:`lmzip.core`) and the predictors; nothing below them
imports them.

- ``corpora``: finding and verifying the benchmark files (``corpora/manifest.tsv``).
- ``baselines``: the classic compressors lmzip is measured against (gzip, bzip2, xz, ...).
- ``bench``: every file through lmzip and the baselines, round trips verified, cached.
- ``report``: benchmark results as tables (terminal, Markdown, CSV, JSON).
- ``plots``: PNG plots of benchmark and capacity results (matplotlib).
- ``entropy``: a model's cross-entropy of a file, without coding (a quick size estimate).
- ``flops``: lmzip's physical count of forward FLOPs per token, from a GGUF file's metadata.
- ``reference_flops``: FLOPs per token by the information-capacity paper's reference code.
- ``documents``: the datasets capacity reads (JSON lines, plain text, the default articles) and b.
- ``samples``: one sample per document as the reference cuts it, and its text size.
- ``likelihood``: each sample's negative log-likelihood, first token not scored, on any backend.
- ``capacity``: information capacity (Yuan et al., 2025) of models: the formula and the table.

Their commands (``lmzip bench``, ``entropy``, ``capacity``) are in :mod:`lmzip.cli.measure`.
"""
