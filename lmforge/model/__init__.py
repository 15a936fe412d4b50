"""Model building blocks and the Transformer."""

from .cache import KVCache
from .transformer import Transformer, build_model, cross_entropy, record_attention

__all__ = ["KVCache", "Transformer", "build_model", "cross_entropy", "record_attention"]
