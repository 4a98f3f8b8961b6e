"""Checkpoints: plain dicts of tensors and numbers, written atomically, read without running code.

A checkpoint holds the model's state dict, the config dict and the tokenizer's bytes, so it
alone rebuilds the model and its tokenizer. Training adds the optimiser, step and data position.
"""
import os
import pickle
import zipfile

import torch

from .config import ConfigError, from_dict

FORMAT = 1   # bump when the layout of a checkpoint changes


class CheckpointError(RuntimeError):
    """A missing, unreadable or mismatched checkpoint; the message says what to do."""


def save(state: dict, path: str) -> None:
    """Write to a temporary file, flush it to disk, then rename: a crash leaves the old file whole."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save({**state, "format": FORMAT}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(os.path.dirname(path) or ".")   # make the rename itself durable
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def resolve(path: str) -> str:
    """A .pt file, or a run folder (its best.pt, else last.pt)."""
    if os.path.isdir(path):
        for name in ("best.pt", "last.pt"):
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        raise CheckpointError(f"{path} holds no best.pt or last.pt; train first (make train DATA=dailydialog)")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} not found; train first (make train DATA=dailydialog) "
                              "or pass the path of a run's best.pt")
    return path


def load(path: str) -> dict:
    """Read a checkpoint with weights_only=True: tensors and plain data only, never code."""
    path = resolve(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        why = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a readable vhred checkpoint ({why}); "
                              "it may be truncated or from another program") from None
    if not isinstance(state, dict) or not {"model", "config", "tokenizer"} <= state.keys():
        raise CheckpointError(f"{path} is not a vhred checkpoint (no model, config and tokenizer in it)")
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {state.get('format')}, this vhred reads "
                              f"format {FORMAT}; use the vhred version that wrote it")
    return state


def config_of(state: dict, path: str = "checkpoint"):
    try:
        return from_dict(state["config"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: its config does not fit this vhred version ({e})") from None


def tokenizer_bytes(state: dict) -> bytes:
    return state["tokenizer"].numpy().tobytes()


def as_tensor(data: bytes) -> torch.Tensor:
    """Bytes stored as a uint8 tensor, which weights_only loading accepts."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def load_model(path: str, device: str = "cpu"):
    """(model in eval mode, config, tokenizer) from a checkpoint file or run folder."""
    from .model import VHRED
    from .tokenizer import load_tokenizer
    state = load(path)
    cfg = config_of(state, path)
    try:
        sp = load_tokenizer(model_bytes=tokenizer_bytes(state))
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: the tokenizer inside it is unreadable ({e})") from None
    if sp.get_piece_size() != cfg.vocab_size:
        raise CheckpointError(f"{path}: tokenizer has {sp.get_piece_size()} pieces but the model "
                              f"expects {cfg.vocab_size}; the checkpoint is inconsistent")
    model = VHRED(cfg)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model its config describes "
                              f"({str(e).splitlines()[0][:120]})") from None
    return model.to(device).eval(), cfg, sp
