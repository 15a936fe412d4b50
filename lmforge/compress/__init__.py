"""Compression: quantization (weight-only int8/int4 by round-to-nearest or GPTQ, dynamic int8) as a layer swap on a
loaded model, and the compression report that measures any compressed model against its original (size, speed,
perplexity, KL divergence and top-token agreement). See docs/compression.md."""

from .quantize import quantize

__all__ = ["quantize"]
