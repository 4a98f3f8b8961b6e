"""Checkpoints: plain dicts of tensors and numbers, written atomically, read without running code.

A checkpoint holds the model's state dict, the config dict and the tokenizer's bytes, so it
alone rebuilds the model and its tokenizer. Training adds the optimiser, step and data position.
"""
import difflib
import hashlib
import math
import os

import torch

from . import modelfolder
from .config import ARCH, ConfigError, from_dict, validate
from .errors import CheckpointError, InputError
from .models import build

# Format 2: the config nested ({"arch": {...}, ...}), the run's position as one "progress"
# dict, a SHA-256 "checksum" over everything else. Format 1 (vhred 0.1 before the
# restructuring: a flat config, loose step/epoch/batch_pos/best, no checksum) is refused on load:
# `python -m vhred.checkpoint upgrade FILE` converts it once, for a user who trusts the file.
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
        if e.filename and e.filename != tmp:
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


# how to make a run, said where none is found: the command works wherever vhred is installed,
# make in a checkout
TRAIN_FIRST = "`vhred train --config configs/dailydialog-cpu.yaml`, or `make train DATA=dailydialog` in a checkout"


def resolve(path: str) -> str:
    """A .pt file, a run folder (its best.pt, else last.pt), or an exported model folder (itself)."""
    if not path:   # `vhred export '' DIR`: "checkpoint  not found" would name nothing
        raise CheckpointError("the checkpoint is empty; give a run folder, a .pt file or an exported model folder")
    if modelfolder.is_model_folder(path):
        return path
    if os.path.isdir(path):
        for name in ("best.pt", "last.pt"):
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        raise CheckpointError(f"{path} holds no best.pt or last.pt; train first ({TRAIN_FIRST})")
    if os.path.exists(path) and not os.path.isfile(path):   # /dev/null, a FIFO: there, but no file to load
        raise CheckpointError(f"checkpoint {path} is not a regular file; pass the path of a run's best.pt")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} not found; train first ({TRAIN_FIRST}) "
                              "or pass the path of a run's best.pt")
    return path


def results_folder(path: str) -> str:
    """Where a command writes what it measured of a resolved checkpoint: beside a .pt file, or
    inside an exported model folder."""
    return path if os.path.isdir(path) else os.path.dirname(path)


def load(path: str) -> dict:
    """Read a checkpoint with weights_only=True (tensors and plain data only, never code), verify
    its checksum and its contents (check_contents). A format-1 file (no checksum) is refused:
    `python -m vhred.checkpoint upgrade` converts it once, for a user who trusts it."""
    path = resolve(path)
    state = _read(path)
    if state.get("format") == 1:
        raise CheckpointError(f"{path} is a format-1 checkpoint (vhred 0.1), which has no checksum, so it cannot be "
                              f"verified; if you trust where it came from, upgrade it once with "
                              f"`python -m vhred.checkpoint upgrade {path}`")
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {_short(state.get('format'))}, this vhred reads "
                              f"format {FORMAT} (and upgrades format 1); use the vhred version that wrote it")
    stored = state.pop("checksum", None)
    if stored != checksum(state):
        raise CheckpointError(f"{path} is corrupt (its contents do not match the checksum written with it); "
                              "use another checkpoint of the run (best.pt or last.pt) or retrain")
    check_contents(state, path)
    return state


def upgrade(path: str, out: str | None = None) -> str:
    """The explicit step that brings a format-1 checkpoint (no checksum) to this format: the
    user says they trust the file; its contents are still checked like any checkpoint's
    (config ranges, progress, finite weights), then it is written with a checksum to out
    (default: in place of path). Returns out."""
    path = resolve(path)
    state = _read(path)
    if state.get("format") != 1:
        raise CheckpointError(f"{path} is not a format-1 checkpoint (format {_short(state.get('format'))}); "
                              "nothing to upgrade")
    state = upgrade_from_1(state)
    check_contents(state, path)
    if out:
        from .files import check_output
        check_output(out)   # a folder, or a folder that is not there: one line before anything is written
    save(state, out or path)
    return out or path


def _read(path: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # any malformed file: unpickling, zip, key and value errors alike
        raise CheckpointError(f"{path} is not a readable vhred checkpoint ({_first_words(e)}); "
                              "it may be truncated or from another program") from None
    if not isinstance(state, dict) or not {"model", "config", "tokenizer"} <= state.keys():
        raise CheckpointError(f"{path} is not a vhred checkpoint (no model, config and tokenizer in it)")
    return state


def _first_words(e: Exception) -> str:
    """The gist of a library's error: its first line, cut at a word boundary."""
    text = " ".join(str(e).split()) if str(e).strip() else type(e).__name__
    text = text.split(". ")[0].replace("\0", "\\0")
    return text if len(text) <= 160 else text[:160].rsplit(" ", 1)[0] + " ..."


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


PROGRESS_INTS = ("step", "epoch", "batch_pos", "best_epoch", "bad_steps", "skipped_total")


def check_contents(state: dict, path: str) -> None:
    """What a verified checksum cannot vouch for (it was computed by whoever wrote the file):
    the config is range-checked like one from the command line, the run's position holds
    plain non-negative integers and a real best, the weights are finite, the tokenizer is bytes."""
    config_of(state, path)
    if not isinstance(state["model"], dict) or not all(isinstance(t, torch.Tensor) for t in state["model"].values()):
        raise CheckpointError(f"{path}: its weights are not a mapping of tensors; the checkpoint is not vhred's")
    bad = [k for k, t in state["model"].items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(f"{path}: weight {_short(bad[0])} holds NaN or infinite values; "
                              "use another checkpoint of the run (best.pt or last.pt) or retrain")
    tok = state["tokenizer"]
    if not isinstance(tok, torch.Tensor) or tok.dtype != torch.uint8 or tok.dim() != 1:
        raise CheckpointError(f"{path}: its tokenizer is not stored as bytes; the checkpoint is not vhred's")
    _check_progress(state.get("progress", {}), path)


def _check_progress(progress, path: str) -> None:
    from .config import MAX_INT
    if not isinstance(progress, dict):
        raise CheckpointError(f"{path}: its progress is not a mapping; the checkpoint is not vhred's")
    for key, value in progress.items():
        low = -1 if key == "last_val_step" else 0
        if key == "best":
            ok = isinstance(value, float) and (math.isfinite(value) or value == math.inf) and value >= 0
        elif key == "wall_s":
            ok = isinstance(value, float) and 0 <= value < math.inf
        elif key in (*PROGRESS_INTS, "last_val_step"):
            ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= MAX_INT
        else:
            raise CheckpointError(f"{path}: unknown progress entry {_short(key)}; the checkpoint is not vhred's")
        if not ok:
            raise CheckpointError(f"{path}: progress {key}={_short(value)} is out of range; "
                                  "the file was edited or damaged: use another checkpoint or retrain")


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


def config_at(path: str):
    """The config of a resolved checkpoint: a .pt file's, or an exported model folder's config.json
    (without reading its weights)."""
    if os.path.isdir(path):
        return config_of({"config": modelfolder.read_config(path)["config"]}, path)
    return config_of(load(path), path)


def config_of(state: dict, path: str = "checkpoint"):
    if not isinstance(state["config"], dict):
        raise CheckpointError(f"{path}: its config is not a mapping; the checkpoint is not vhred's")
    try:
        cfg = from_dict(state["config"])
        validate(cfg)   # the ranges a config from the command line must keep
        return cfg
    except ConfigError as e:
        raise CheckpointError(f"{path}: its config does not fit this vhred version ({e})") from None


def tokenizer_bytes(state: dict) -> bytes:
    return state["tokenizer"].numpy().tobytes()


def as_tensor(data: bytes) -> torch.Tensor:
    """Bytes stored as a uint8 tensor, which weights_only loading accepts."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def check_shapes(weights: dict, cfg, vocab: int, path: str) -> None:
    """Compare the weights' shapes with those the config describes, on the meta device (no
    memory): a config that claims emb_dim=2^31-1 beside small weights is refused before the
    model would be allocated."""
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in build(cfg.arch, vocab).state_dict().items()}
    have = {k: tuple(v.shape) for k, v in weights.items()}
    for k in want.keys() & have.keys():
        if k.startswith("retrieval."):   # the exchanges a run indexed: sized by its data, not its config
            want[k] = have[k]
    if want != have:
        diff = sorted(set(want) ^ set(have)) or [k for k in want if want[k] != have[k]]
        raise CheckpointError(f"{path}: weights do not fit the model its config describes "
                              f"({_short(diff[0])}: {have.get(diff[0], 'missing')} vs {want.get(diff[0], 'none')})")


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
        for name, state in (("last.pt", {**best, "optim": opt.state_dict(), "rng": [{"cpu": torch.get_rng_state()}]}),
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
    intact = cache.intact(folder, CACHE_FILES, log=lambda *_: None)   # a broken one's time is that of giving up
    return {"folder": folder, "mb": size / 2 ** 20, "intact": intact,
            "verify_s": _median_seconds(lambda: cache.intact(folder, CACHE_FILES, log=lambda *_: None), repeat)}


def main(argv=None):
    """python -m vhred.checkpoint upgrade OLD [--out NEW] | [config] [--cache FOLDER] (timings)."""
    import sys
    argv = sys.argv[1:] if argv is None else list(argv)
    return (_upgrade_main if argv[:1] == ["upgrade"] else _measure_main)(argv)


def _upgrade_main(argv):

    from .cli import command, Parser, program

    @command
    def run(argv):
        p = Parser(prog=program("python -m vhred.checkpoint") + " upgrade",
                   description="Convert a format-1 checkpoint (vhred 0.1, no checksum) to this "
                               "format. Only for a file you trust: format 1 cannot be verified.")
        p.add_argument("checkpoint", help="the format-1 .pt file (or a run folder)")
        p.add_argument("--out", help="where the upgraded checkpoint goes (default: in place of the old one)")
        args = p.parse_args(argv[1:])
        out = upgrade(args.checkpoint, args.out)
        print(f"trusted {args.checkpoint} (format 1 has no checksum to verify it); wrote {out} in format {FORMAT}")
    return run(argv)


def _measure_main(argv):
    from .cli import command
    return command(_measure)(argv)   # a wrong config or cache folder: one line, not a traceback


def _measure(argv):
    import json
    from .cli import Parser, program
    parser = Parser(prog=program("python -m vhred.checkpoint"),
                    usage="%(prog)s [config] [--cache FOLDER] | %(prog)s upgrade FILE [--out NEW]",
                    description="Time the integrity checks: checkpoint save/load and the data cache. "
                                "`upgrade FILE` converts a format-1 checkpoint you trust.")
    parser.add_argument("config", nargs="?", default="configs/dailydialog.yaml",
                        help="the config whose model size is timed (default %(default)s)")
    parser.add_argument("--cache", help="a data/processed/<name> folder to time the verification of (default: none)")
    first = argv[0] if argv else ""   # before parsing: `upgrad OLD` would be a config and an extra argument
    if not os.path.exists(first) and difflib.get_close_matches(first, ["upgrade"], cutoff=0.7):
        raise InputError(f"unknown subcommand '{first}' (did you mean upgrade?)")
    args = parser.parse_args(argv)
    if not args.config.strip():   # config.load's own words name --config, which this command does not take
        raise InputError("the config is empty; give a config file (configs/*.yaml), or leave it out for the default")
    if os.path.isdir(args.config) or args.config.endswith((".pt", ".safetensors")):   # a run or checkpoint, not a config
        raise InputError(f"{args.config} is a run or checkpoint; this command times a config's model "
                         f"(configs/*.yaml), and `vhred checkpoint upgrade {args.config}` converts a format-1 checkpoint")
    if args.cache is not None and not os.path.isfile(os.path.join(args.cache, "tokenizer.model")):
        raise InputError(f"--cache {args.cache or repr(args.cache)} is not a prepared data folder (data/processed/<name>, "
                         "with its tokenizer.model)")
    torch.set_num_threads(1)
    print(json.dumps(measure(args.config), indent=1))
    if args.cache:
        print(json.dumps(measure_cache(args.cache), indent=1))


if __name__ == "__main__":
    main()
