"""Predictors: what gives the coder its probabilities (see base.Model)."""

from .base import Model, Stream
from .registry import DEFAULT_CONTEXT, DEFAULT_MODEL, KNOWN_MODELS, known_models, load_model

__all__ = ["Model", "Stream", "DEFAULT_MODEL", "DEFAULT_CONTEXT", "KNOWN_MODELS", "known_models", "load_model"]
