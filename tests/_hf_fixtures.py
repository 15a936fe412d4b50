"""Real tiny Hugging Face checkpoints for the conversion tests: models built by `transformers` from a config with
random weights and saved with `save_pretrained`, and tokenizers trained here with the `tokenizers` library and
wrapped as `PreTrainedTokenizerFast`."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Summarise this article in one sentence, please.",
    "Translate to French: the cat sits on the mat.",
    "Hugging Face checkpoints load in lmforge without conversion.",
    "中文测试：你好，世界！今天天气很好。",
    "emoji 😀👍🏽 family 👨‍👩‍👧 flags 🇫🇷",
    "odd  \t whitespace\n\n  and   trailing   ",
    "numbers 12345 and symbols #$%&*() <tag> </tag>",
] * 20

QWEN_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
              r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
TEXTS = [  # the strings every parity and tokenizer test encodes
    "Hello world! The quick brown fox.",
    "中文测试，你好世界",
    "emoji 😀👍🏽 and 👨‍👩‍👧",
    "odd  \t whitespace\n\n  end ",
    "\u00a0nbsp\u2003em\u200bzero-width",
    "x",
]


@functools.lru_cache(maxsize=None)
def _bpe(kind: str) -> Tokenizer:
    """Byte-level BPE (gpt2, roberta, bart) or a sentencepiece-like BPE with byte fallback (llama)."""
    if kind == "llama":
        specials = ["<unk>", "<s>", "</s>"]
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.pre_tokenizer = None
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
        alphabet = [f"<0x{b:02X}>" for b in range(256)]
        trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials + alphabet, show_progress=False)
        tok.train_from_iterator(CORPUS, trainer)
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", tok.token_to_id("<s>"))])
        return tok
    specials = {"gpt2": ["<|endoftext|>"], "qwen2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                "roberta": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]}[kind]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if kind == "qwen2":  # the pipeline transformers' Qwen2Tokenizer always uses, as real Qwen2 checkpoints do
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    if kind == "roberta":
        tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                          ("<s>", tok.token_to_id("<s>")), add_prefix_space=False)
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


@functools.lru_cache(maxsize=None)
def _wordpiece() -> Tokenizer:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, handle_chinese_chars=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials,
                                                              show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    return tok


def hf_tokenizer(family: str):
    """A `PreTrainedTokenizerFast` around a freshly trained tokenizer, with the family's special tokens."""
    from transformers import PreTrainedTokenizerFast

    if family in ("bert",):
        return PreTrainedTokenizerFast(tokenizer_object=_wordpiece(), unk_token="[UNK]", pad_token="[PAD]",
                                       cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    if family in ("roberta", "bart"):
        return PreTrainedTokenizerFast(tokenizer_object=_bpe("roberta"), bos_token="<s>", eos_token="</s>",
                                       unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                       cls_token="<s>", sep_token="</s>")
    if family == "llama":
        tok = PreTrainedTokenizerFast(tokenizer_object=_bpe("llama"), bos_token="<s>", eos_token="</s>",
                                      unk_token="<unk>", pad_token="</s>")
        tok.chat_template = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{% continue %}"
                             "{% endif %}[{{ m['role'] | upper }}] {{ m['content'] }} {{ m | tojson }}{{ eos_token }}"
                             "{% endfor %}{% if add_generation_prompt %}[ASSISTANT]{% endif %}")
        return tok
    if family == "qwen2":
        return PreTrainedTokenizerFast(tokenizer_object=_bpe("qwen2"), eos_token="<|endoftext|>",
                                       unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    return PreTrainedTokenizerFast(tokenizer_object=_bpe("gpt2"), bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", unk_token="<|endoftext|>", pad_token="<|endoftext|>")


def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Perturb every weight and buffer-bias so that a wrong mapping (a swapped bias, a norm left at 1) shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in list(model.named_parameters()) + [(n, b) for n, b in model.named_buffers()
                                                         if n.endswith("final_logits_bias")]:
            noise = torch.randn(p.shape, generator=g) * std
            if name.endswith("weight") and p.dim() == 1:  # norm scales around 1
                p.copy_(1.0 + noise)
            else:
                p.add_(noise)
    return model.eval()


def save_hf(model, tokenizer, folder: Path, **kwargs) -> Path:
    model.save_pretrained(folder, **kwargs)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def batch(tokenizer, texts=TEXTS, **kwargs) -> dict[str, torch.Tensor]:
    """A right-padded batch of the test strings."""
    tokenizer.padding_side = "right"
    enc = tokenizer(list(texts), padding=True, return_tensors="pt", **kwargs)
    return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """Max |a - b| over the real (non-padding) positions."""
    keep = mask.bool()
    return float((a.float() - b.float())[keep].abs().max())
