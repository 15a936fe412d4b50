"""Compression: quantization (weight-only int8/int4 by round-to-nearest or GPTQ, dynamic int8) as a layer swap on a
loaded model, and the compression report that measures any compressed model against its original (size, speed,
perplexity, KL divergence and top-token agreement); pruning (magnitude, Wanda, 2:4, heads and neurons removed)
and low-rank factorisation (SVD, ASVD, SVD-LLM). Distillation is an objective of the training loop
(`lmforge.train.distill`). See docs/compression.md."""

from .lowrank import factorize, merge_lowrank
from .prune import prune
from .quantize import quantize

__all__ = ["quantize", "prune", "factorize", "merge_lowrank"]
