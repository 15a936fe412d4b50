"""lmforge: train, adapt, compress and ship Transformer language models."""

from ._version import __version__
from .checkpoint import save
from .config import ModelConfig
from .errors import LmforgeError
from .generate import generate  # the function; the module stays importable as lmforge.generate.*
from .loading import load
from .model import KVCache, Transformer, build_model
from .tokenizer import Tokenizer, train_tokenizer
from . import convert  # noqa: E402,I001  (lmforge.convert.from_hf / to_hf: Hugging Face interop)

__all__ = ["ModelConfig", "LmforgeError", "KVCache", "Transformer", "build_model", "__version__", "load", "save",
           "Tokenizer", "train_tokenizer", "generate", "convert"]
