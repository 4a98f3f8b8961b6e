"""Checkpoints: plain dicts of tensors and numbers, written atomically, read without running code.

A checkpoint holds the model's state dict, the config dict and the tokenizer's bytes, so it
alone rebuilds the model and its tokenizer. Training adds the optimiser, step and data position.
"""
import hashlib
import os

import torch

from .config import ARCH, ConfigError, from_dict
from .errors import CheckpointError

# Format 2: the config nested ({"arch": {...}, ...}), the run's position as one "progress"
# dict, a SHA-256 "checksum" over everything else. Format 1 (vhred 0.1 before the
# restructuring: a flat config, loose step/epoch/batch_pos/best) is converted on load.
FORMAT = 2


def save(state: dict, path: str) -> None:
    """Write to a temporary file, flush it to disk, then rename: a crash leaves the old file whole.
    A failed write (disk full) is an OSError naming the file, never torch's own RuntimeError."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            state = {**state, "format": FORMAT}
            _write({**state, "checksum": checksum(state)}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(os.path.dirname(path) or ".")   # make the rename itself durable
    except OSError as e:
        if e.filename:
            raise
        raise OSError(e.errno, f"{e.strerror or e} while writing the checkpoint", path) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write(obj, f) -> None:
    """torch.save into an open file. When a write fails (ENOSPC, EIO), torch's zip writer swallows
    the OSError and raises a RuntimeError of its own ("unexpected pos ...") that merely chains it:
    raise the OSError itself, so the user learns that the disk is full."""
    try:
        torch.save(obj, f)
    except RuntimeError as e:
        cause = _os_error_in(e)
        if cause is None:
            raise   # not an I/O failure: a bug, keep its traceback
        raise cause from None


def _os_error_in(e: BaseException):
    """The first OSError among e's causes and contexts, or None."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


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
    """Read a checkpoint with weights_only=True (tensors and plain data only, never code), verify
    its checksum, and convert an older format to this one."""
    path = resolve(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # any malformed file: unpickling, zip, key and value errors alike
        why = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a readable vhred checkpoint ({why}); "
                              "it may be truncated or from another program") from None
    if not isinstance(state, dict) or not {"model", "config", "tokenizer"} <= state.keys():
        raise CheckpointError(f"{path} is not a vhred checkpoint (no model, config and tokenizer in it)")
    if state.get("format") == 1:
        return upgrade_from_1(state)
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {state.get('format')}, this vhred reads "
                              f"formats 1 and {FORMAT}; use the vhred version that wrote it")
    stored = state.pop("checksum", None)
    if stored != checksum(state):
        raise CheckpointError(f"{path} is corrupt (its contents do not match the checksum written with it); "
                              "use another checkpoint of the run (best.pt or last.pt) or retrain")
    return state


def upgrade_from_1(state: dict) -> dict:
    """Format 1 -> 2: nest the model's config keys under "arch", gather the run's position."""
    flat = dict(state["config"]) if isinstance(state["config"], dict) else state["config"]
    if isinstance(flat, dict):
        flat["arch"] = {k: flat.pop(k) for k in list(flat) if k in ARCH}
    progress = {k: state.pop(k) for k in ("step", "epoch", "batch_pos", "best") if k in state}
    return {**state, "config": flat, "progress": progress, "format": FORMAT}


def checksum(obj) -> str:
    """SHA-256 over every tensor's bytes, dtype and shape and every other value, in a fixed order."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h, obj) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b"")   # its buffer: no copy
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for key in sorted(obj, key=repr):
            h.update(repr(key).encode())
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for item in obj:
            _feed(h, item)
    else:
        h.update(f"V{obj!r}".encode())


def config_of(state: dict, path: str = "checkpoint"):
    if not isinstance(state["config"], dict):
        raise CheckpointError(f"{path}: its config is not a mapping; the checkpoint is not vhred's")
    try:
        return from_dict(state["config"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: its config does not fit this vhred version ({e})") from None


def tokenizer_bytes(state: dict) -> bytes:
    return state["tokenizer"].numpy().tobytes()


def as_tensor(data: bytes) -> torch.Tensor:
    """Bytes stored as a uint8 tensor, which weights_only loading accepts."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def load_model(path: str, device="cpu"):
    """(model in eval mode, config, tokenizer) from a checkpoint file or run folder."""
    from .models import build
    from .tokenizer import load_tokenizer
    state = load(path)
    cfg = config_of(state, path)
    try:
        sp = load_tokenizer(model_bytes=tokenizer_bytes(state))
    except (RuntimeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path}: the tokenizer inside it is unreadable ({e})") from None
    model = build(cfg.arch, sp.get_piece_size())
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path}: weights do not fit the model its config describes "
                              f"({str(e).splitlines()[0][:120]})") from None
    return model.to(device).eval(), cfg, sp


# --- what the integrity checks cost: python -m vhred.checkpoint [config] [--cache FOLDER] -------

def _median_seconds(fn, repeat: int) -> float:
    import statistics
    import time
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(config_path: str, repeat: int = 5) -> dict:
    """Seconds per save and load of a last.pt (with the optimiser) and a best.pt of the config's
    model at its vocab_size, and the checksum's part of each (a save computes it once, a load once)."""
    import tempfile
    from dataclasses import asdict

    from .config import load as load_config
    from .models import build
    cfg = load_config(config_path, [])
    model = build(cfg.arch, cfg.vocab_size)
    opt = torch.optim.AdamW(model.parameters())
    for p in model.parameters():   # one step, so the optimiser holds its two moments per weight
        p.grad = torch.zeros_like(p)
    opt.step()
    best = {"model": model.state_dict(), "config": asdict(cfg), "tokenizer": as_tensor(bytes(300_000)),
            "progress": {"step": 1}}
    out = {"config": config_path, "parameters": sum(p.numel() for p in model.parameters())}
    with tempfile.TemporaryDirectory() as folder:
        for name, state in (("last.pt", {**best, "optim": opt.state_dict(), "rng": torch.get_rng_state()}),
                            ("best.pt", best)):
            path = os.path.join(folder, name)
            out[name] = {"save_s": _median_seconds(lambda s=state, p=path: save(s, p), repeat),
                         "load_s": _median_seconds(lambda p=path: load(p), repeat),
                         "checksum_s": _median_seconds(lambda s=state: checksum({**s, "format": FORMAT}), repeat),
                         "mb": os.path.getsize(path) / 2 ** 20}
    return out


def measure_cache(folder: str, repeat: int = 5) -> dict:
    """Seconds to verify a processed data cache (SHA-256 of its files), as every reuse does."""
    from . import cache
    from .dataset import CACHE_FILES
    size = sum(os.path.getsize(os.path.join(folder, rel)) for rel in CACHE_FILES)
    return {"folder": folder, "mb": size / 2 ** 20,
            "verify_s": _median_seconds(lambda: cache.intact(folder, CACHE_FILES, log=lambda *_: None), repeat)}


if __name__ == "__main__":
    import argparse
    import json
    parser = argparse.ArgumentParser(prog="python -m vhred.checkpoint",
                                     description="Time the integrity checks: checkpoint save/load and the data cache.")
    parser.add_argument("config", nargs="?", default="configs/dailydialog.yaml")
    parser.add_argument("--cache", help="a data/processed/<name> folder to time the verification of")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(json.dumps(measure(args.config), indent=1))
    if args.cache:
        print(json.dumps(measure_cache(args.cache), indent=1))
