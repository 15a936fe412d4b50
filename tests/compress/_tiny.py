"""Tiny decoders, their tokenizer and calibration ids, shared by the pruning and low-rank tests."""

import sys
from pathlib import Path

import torch

from lmforge import ModelConfig, build_model
from lmforge.tokenizer import train_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _finetune_data import sentiment_rows  # noqa: E402

TEXTS = [" ".join(r[1] for r in sentiment_rows(20, i)) for i in range(20)]


def tiny_tokenizer():
    return train_tokenizer(TEXTS, "bpe", 300, "decoder", progress=False)


def tiny_model(tok, preset="llama-nano", **kw):
    torch.manual_seed(0)
    m = build_model(ModelConfig.from_name(preset, vocab_size=tok.vocab_size, **kw)).eval()
    m.tokenizer = tok
    return m


def calib_ids(tok, n=4, t=24):
    return torch.tensor([tok.encode(TEXTS[i])[:t] for i in range(n)])
