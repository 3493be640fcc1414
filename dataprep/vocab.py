"""Lowercase word tokeniser and a frequency-ordered vocabulary fit on the train split only."""
from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
# words (keeping inner apostrophes: "don't", "i'm") and single punctuation marks
TOKEN_RE = re.compile(r"\w+(?:'\w+)*|[^\w\s]")


def tokenize(text: str) -> list[str]:
    return TOKEN_RE.findall(text.lower())


class Vocab:
    def __init__(self, itos: list[str], min_freq: int = 1, max_vocab: int | None = None):
        if itos[:2] != [PAD, UNK]:
            raise ValueError("vocab must start with <pad>, <unk>")
        self.itos = list(itos)
        self.stoi = {tok: i for i, tok in enumerate(self.itos)}
        self.min_freq, self.max_vocab = min_freq, max_vocab

    @classmethod
    def fit(cls, texts: Iterable[str], min_freq: int = 2, max_vocab: int | None = None) -> Vocab:
        counts = Counter(tok for text in texts for tok in tokenize(text))
        # frequency first, then alphabetical: the same corpus always gives the same ids
        kept = sorted((-n, tok) for tok, n in counts.items() if n >= min_freq)
        if max_vocab is not None:
            kept = kept[: max_vocab - 2]  # max_vocab counts <pad> and <unk>
        return cls([PAD, UNK] + [tok for _, tok in kept], min_freq, max_vocab)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        return [self.stoi.get(tok, UNK_ID) for tok in tokenize(text)]

    def to_json_bytes(self) -> bytes:
        doc = {
            "format": 1,
            "lowercase": True,
            "token_pattern": TOKEN_RE.pattern,
            "min_freq": self.min_freq,
            "max_vocab": self.max_vocab,
            "size": len(self.itos),
            "itos": self.itos,
        }
        return (json.dumps(doc, ensure_ascii=False, indent=1) + "\n").encode("utf-8")

    @classmethod
    def load(cls, path: Path | str) -> Vocab:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(doc["itos"], doc.get("min_freq", 1), doc.get("max_vocab"))

