"""Pretraining text for the zoo: the bundled corpora, the shared tokenizer, token streams.

The corpora (damoc/zoo/corpora/*.jsonl.gz, built by `python -m damoc.zoo.build_corpora`, sources
and licences in corpora/NOTICE) are read here; the tokenizer is a byte-level BPE trained with the
`tokenizers` library and wrapped as a transformers PreTrainedTokenizerFast, so it saves and loads
like any hub tokenizer.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from damoc.errors import DamocError

CORPORA_DIR = Path(__file__).resolve().parent / "corpora"
EOS = "<|endoftext|>"
PAD = "<pad>"
VALIDATION_FRACTION = 0.02  # tail of each token stream held out for the pretraining loss


def corpus_path(name: str) -> Path:
    path = CORPORA_DIR / f"{name}.jsonl.gz"
    if not path.is_file():
        raise DamocError(f"pretraining corpus '{name}' is missing ({path}); rebuild with `python -m damoc.zoo.build_corpora`")
    return path


def read_corpus(name: str) -> Iterator[str]:
    with gzip.open(corpus_path(name), "rt", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)["text"]


def tokenizer_sample(names: list[str], chars_per_corpus: int) -> Iterator[str]:
    """The first documents of each corpus up to a character budget (documents are stored in a
    hashed order, so a prefix is a fair sample)."""
    for name in names:
        used = 0
        for text in read_corpus(name):
            if used >= chars_per_corpus:
                break
            used += len(text)
            yield text


def train_tokenizer(out_dir: str | os.PathLike, names: list[str], vocab_size: int, sample_chars: int,
                    max_positions: int):
    """Train a byte-level BPE on a sample of the corpora and save it as a HF tokenizer."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(tokenizer_sample(names, sample_chars // len(names)), vocab_size=vocab_size,
                            min_frequency=2, special_tokens=[EOS, PAD], show_progress=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=EOS, eos_token=EOS,
                                        pad_token=PAD, model_max_length=max_positions)
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def tokenize_corpus(tokenizer, name: str) -> np.ndarray:
    """One token stream for a corpus: every document followed by EOS (uint16: vocab < 65536)."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    batch: list[str] = []

    def flush() -> None:
        # The raw `tokenizers` object: no max-length warnings for long documents (streams are cut
        # into windows later).
        for encoding in tokenizer.backend_tokenizer.encode_batch(batch, add_special_tokens=False):
            ids.extend(encoding.ids)
            ids.append(eos)
        batch.clear()

    for text in read_corpus(name):
        batch.append(text)
        if len(batch) == 1024:
            flush()
    if batch:
        flush()
    if len(tokenizer) > np.iinfo(np.uint16).max:
        raise ValueError("vocabulary too large for uint16 token streams")
    return np.asarray(ids, dtype=np.uint16)


def split_stream(stream: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train part, held-out tail) of a token stream."""
    cut = int(len(stream) * (1 - VALIDATION_FRACTION))
    return stream[:cut], stream[cut:]
