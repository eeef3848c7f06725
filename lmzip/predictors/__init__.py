"""Predictors: what gives the coder its probabilities (see base.Model).

- ``base``: the protocol (``Model``, ``Stream``, ``StreamGroup``) the coder calls.
- ``llamacpp``, ``torch_backend``: language models run by llama.cpp or by PyTorch.
- ``order1``: an order-1 byte model, for tests.
- ``ngram``: the chunk's own n-gram and match statistics (sparse features).
- ``mixing``: the online mixer that blends a language model with those statistics
  (``MixedModel``), or uses them alone (``NGramModel``, ``--model ngram``).
- ``cache``: lmzip's cache folder and the cached SHA-256 of model files.
- ``registry``: known models, ``load_model`` and the model a stream header names.

They use the pipeline's lower half (format, cdf, tokenization, errors) and know
nothing of the codec, measuring or the command line.
"""

from .base import Model, Stream
from .registry import DEFAULT_CONTEXT, DEFAULT_MODEL, KNOWN_MODELS, known_models, load_model

__all__ = ["Model", "Stream", "DEFAULT_MODEL", "DEFAULT_CONTEXT", "KNOWN_MODELS", "known_models", "load_model"]
