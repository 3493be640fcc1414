"""python -m tuning.predict "text" ... (or one text per line on stdin): label and probabilities.

Uses the model that evaluate_best wrote to artifacts/best/.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from dataprep.schema import LABELS
from dataprep.vocab import Vocab
from model.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from model.data import EncodedSplit
from model.precision import CHOICES, autocast, on_this_cpu
from plumbing.cli import ArgumentParser, run_main
from plumbing.errors import DataError
from plumbing.paths import paths

PROG = "python -m tuning.predict"


class Predictor:
    """A written model (evaluate_best's model.pt), run in `precision` (model/precision.py
    on_this_cpu: by default the one it was evaluated in, where this CPU has it)."""

    def __init__(self, model_file: Path, precision: str | None = None):
        if not model_file.is_file():
            raise DataError(f"{model_file}: no model; run `python -m tuning.evaluate_best` first")
        state = load_checkpoint(model_file)  # weights_only=True
        try:
            self.vocab = Vocab(state["vocab"])
            self.model = model_from_checkpoint(state)
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise CheckpointError(f"{model_file}: not a usable model ({type(e).__name__})") from None
        evaluated = state.get("precision") or state["config"].get("precision", "fp32")
        self.precision = on_this_cpu(evaluated, precision).precision
        torch.set_num_threads(1)

    @torch.no_grad()
    def probabilities(self, texts: list[str]) -> torch.Tensor:
        batch = EncodedSplit.from_ids([self.vocab.encode(t) for t in texts], [0] * len(texts))
        with autocast(self.precision, "cpu"):
            logits = self.model(batch.tokens, batch.lengths).float()
        return torch.softmax(logits, dim=1)

    def predict(self, texts: list) -> list[tuple[str, list[float]] | None]:
        """Each text's label and probabilities (in LABELS order); None for a text with no token
        (empty, blank, not a string), which has nothing to classify."""
        kept = [i for i, t in enumerate(texts) if isinstance(t, str) and self.vocab.encode(t)]
        out: list[tuple[str, list[float]] | None] = [None] * len(texts)
        if kept:
            for i, p in zip(kept, self.probabilities([texts[i] for i in kept]).tolist(),
                            strict=True):
                out[i] = (LABELS[max(range(len(p)), key=p.__getitem__)], p)
        return out


def parse_args(argv=None):
    ap = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument("texts", nargs="*", help="texts to classify (default: lines on stdin)")
    ap.add_argument("--json", action="store_true", help="one JSON object per text")
    ap.add_argument("--model", metavar="FILE", help="default: artifacts/best/model.pt")
    ap.add_argument("--precision", choices=CHOICES, default=None,
                    help="what it computes in (default: what the model was evaluated in, where "
                         "this CPU has it natively; else fp32)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    texts = args.texts if args.texts else sys.stdin.read().splitlines()
    predictor = Predictor(Path(args.model) if args.model else paths().best / "model.pt",
                          args.precision)
    predictions = predictor.predict(texts)
    for n, prediction in enumerate(predictions, 1):
        if prediction is None:
            print(f"{PROG}: text {n} is empty: no prediction", file=sys.stderr)
    if not any(predictions):
        print(f"{PROG}: error: no non-empty text to classify", file=sys.stderr)
        return 1
    for text, prediction in zip(texts, predictions, strict=True):
        if prediction is None:
            continue
        label, p = prediction
        if args.json:
            print(json.dumps({"text": text, "label": label,
                              "probabilities": dict(zip(LABELS, (round(x, 6) for x in p)))}))
        else:
            shown = " ".join(f"{name}={x:.3f}" for name, x in zip(LABELS, p))
            print(f"{label:<9} {shown}  {text if len(text) <= 60 else text[:57] + '...'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, PROG))
