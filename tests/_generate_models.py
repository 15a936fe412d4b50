"""Real tiny models and tokenizers for the decoding tests.

- tokenizers trained here with the `tokenizers` library (byte-level BPE as GPT-2's, a SentencePiece-style BPE
  with byte fallback as Llama's), and lmforge's own trained tokenizer (with the ChatML tokens);
- Hugging Face GPT-2 and Llama models built by `transformers` from a config with random weights, saved with
  `save_pretrained` next to the tokenizer, for `lmforge.load(folder)`;
- lmforge models (decoder, Llama-shaped decoder, encoder-decoder) built from `ModelConfig`;
- a tiny GPT trained for a few hundred steps to recite a sentence with Chinese and emoji.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from tokenizers import Tokenizer as HFTok
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Once upon a time there was a little robot who loved to read books.",
    "To be or not to be, that is the question.",
    "The cat sat on the mat and looked at the moon.",
    "Numbers like 12345 and symbols #$% appear here too.",
    "你好，世界！",
    "emoji 🙂 party 🎉",
] * 20
MEMORIZED = "Hello 你好，世界！🙂🚀 done."


@functools.lru_cache(maxsize=None)
def byte_bpe() -> HFTok:
    tok = HFTok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


@functools.lru_cache(maxsize=None)
def sentencepiece_bpe() -> HFTok:
    specials = ["<unk>", "<s>", "</s>"]
    tok = HFTok(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    alphabet = [f"<0x{b:02X}>" for b in range(256)]
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=specials + alphabet,
                                                        show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok


def hf_folder(kind: str, folder: Path, seed: int = 0) -> Path:
    """A tiny transformers GPT-2 or Llama with random weights and a trained tokenizer, saved in `folder`."""
    import transformers

    torch.manual_seed(seed)
    if kind == "gpt2":
        raw = byte_bpe()
        eos = raw.token_to_id("<|endoftext|>")
        config = transformers.GPT2Config(vocab_size=raw.get_vocab_size(), n_positions=96, n_embd=64, n_layer=2,
                                         n_head=4, bos_token_id=eos, eos_token_id=eos, initializer_range=0.2)
        model = transformers.GPT2LMHeadModel(config)
        tok = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<|endoftext|>",
                                                   eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    else:
        raw = sentencepiece_bpe()
        config = transformers.LlamaConfig(vocab_size=raw.get_vocab_size(), hidden_size=64, intermediate_size=176,
                                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                          max_position_embeddings=96, bos_token_id=1, eos_token_id=2,
                                          pad_token_id=0, initializer_range=0.2, tie_word_embeddings=False)
        model = transformers.LlamaForCausalLM(config)
        tok = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>",
                                                   unk_token="<unk>", pad_token="<unk>")
    model.eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@functools.lru_cache(maxsize=None)
def lmforge_tokenizer():
    from lmforge import train_tokenizer

    return train_tokenizer(CORPUS, "bpe", vocab_size=330, arch="decoder", progress=False)


def lmforge_decoder(kind: str = "gpt", context: int = 96, seed: int = 0, tokenizer=None):
    """A tiny lmforge decoder: GPT-2-like ("gpt") or Llama-like ("llama": RMSNorm, SwiGLU, RoPE, GQA)."""
    from lmforge import ModelConfig, build_model

    tok = tokenizer or lmforge_tokenizer()
    shape = dict(arch="decoder", vocab_size=tok.vocab_size, context_length=context, d_model=64, n_layer=2,
                 n_head=4, init_std=0.3, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    if kind == "llama":
        shape.update(norm="rmsnorm", activation="swiglu", pos="rope", n_kv_head=2, bias=False, tie_embeddings=False)
    else:
        shape.update(activation="gelu_tanh", pos="learned", bias=True)
    torch.manual_seed(seed)
    model = build_model(ModelConfig(**shape)).eval()
    model.tokenizer = tok
    return model


@functools.lru_cache(maxsize=None)
def seq2seq_tokenizer():
    from lmforge import train_tokenizer

    return train_tokenizer(CORPUS, "bpe", vocab_size=320, arch="encoder_decoder", progress=False)


def lmforge_seq2seq(seed: int = 0):
    from lmforge import ModelConfig, build_model

    tok = seq2seq_tokenizer()
    config = ModelConfig.from_name("transformer-small", vocab_size=tok.vocab_size, d_model=64, n_layer=2,
                                   n_decoder_layer=2, n_head=4, d_ff=128, dropout=0.0, context_length=64,
                                   bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id,
                                   decoder_start_token_id=tok.bos_id, init_std=0.3)
    torch.manual_seed(seed)
    model = build_model(config).eval()
    model.tokenizer = tok
    return model


@functools.lru_cache(maxsize=None)
def reciting_model():
    """A tiny GPT trained until it recites MEMORIZED (Chinese and emoji) after its first two tokens."""
    from lmforge import ModelConfig, build_model, train_tokenizer

    tok = train_tokenizer(CORPUS[:5], "bpe", vocab_size=300, arch="decoder", progress=False)
    ids = tok.encode(MEMORIZED, add_special_tokens=True) + [tok.eos_id]
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="decoder", vocab_size=tok.vocab_size, context_length=64, d_model=64,
                                    n_layer=2, n_head=4, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
                                    pad_token_id=tok.pad_id))
    x = torch.tensor([ids])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(300):
        logits = model(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits[0], x[0, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.01:
            break
    model.eval()
    model.tokenizer = tok
    return model, ids
