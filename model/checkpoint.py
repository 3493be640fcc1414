"""Training states on disk: written atomically, read with weights_only=True, checked."""
from __future__ import annotations

import io
from pathlib import Path

import torch

from model.config import TrainConfig
from plumbing.errors import DataError
from plumbing.files import atomic_path

CHECKPOINT_FORMAT = 1


def save_checkpoint(state: dict, path: Path | str) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


class CheckpointError(DataError):
    pass


def load_checkpoint(path: Path | str) -> dict:
    """torch.load with weights_only=True: a tampered file cannot run code, only fail to load."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except Exception as e:  # noqa: BLE001 - truncated, corrupt or unsafe pickle
        raise CheckpointError(f"{path}: not a loadable checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or "model" not in state:
        raise CheckpointError(f"{path}: not a checkpoint of this project (format "
                              f"{state.get('format') if isinstance(state, dict) else '?'})")
    return state


def check_checkpoint(state: dict, vocab_sha256: str, cfg: TrainConfig | None = None) -> None:
    if state["vocab_sha256"] != vocab_sha256:
        raise CheckpointError("checkpoint was trained with another vocab than artifacts/vocab.json "
                              "(the data was rebuilt differently since): retrain or rebuild")
    # (through from_flat: a config saved before families has no `family`, an rnn's)
    if cfg is not None and TrainConfig.from_flat(state["config"]).to_flat() != cfg.to_flat():
        raise CheckpointError("checkpoint's config differs from the run being resumed")


def model_from_checkpoint(state: dict) -> torch.nn.Module:
    model = TrainConfig.from_flat(state["config"]).network(state["vocab_size"])
    model.load_state_dict(state["model"])
    return model.eval()


