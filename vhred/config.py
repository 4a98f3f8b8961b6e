"""One typed config for data, model and training.

Filled from a YAML file, then `key=value` overrides from the command line, then validated.
The final dict is saved beside the run and inside every checkpoint, so a checkpoint alone
rebuilds its model.
"""
import difflib
import os
from dataclasses import asdict, dataclass, fields


class ConfigError(ValueError):
    """A mistake in a config file or override; the message says what to change."""


@dataclass
class Config:
    # --- data ---
    data: str = "dailydialog"     # "dailydialog", or a path to a .jsonl of {"dialog": [...]} lines
    data_dir: str = "data"        # downloads, processed caches
    vocab_size: int = 8000        # SentencePiece vocabulary, trained on the training split
    max_utt_len: int = 30         # tokens kept per utterance (longer ones are truncated)
    max_context: int = 10         # context turns a target sees; longer dialogues are windowed
    max_dialogues: int = 0        # >0: keep only the first N dialogues of each split (quick runs)
    # --- model ---
    model: str = "vhred"          # "vhred", or "hred" (the same network without the latent z)
    emb_dim: int = 256            # word embedding size
    utt_hidden: int = 512         # utterance-encoder GRU width, per direction
    ctx_hidden: int = 512         # context GRU width
    dec_hidden: int = 512         # decoder GRU width
    z_dim: int = 128              # per-utterance latent size (ignored by hred)
    latent_hidden: int = 512      # width of the prior / posterior MLPs
    tie_embeddings: bool = True   # share input embedding and output softmax weights
    dropout: float = 0.0          # dropout on embeddings and decoder outputs
    # --- objective ---
    word_dropout: float = 0.25    # decoder inputs replaced by <unk> (Bowman et al. 2016; VHRED)
    kl_schedule: str = "linear"   # "linear" warm-up, "cyclical" (Fu et al. 2019) or "constant"
    kl_warmup_steps: int = 10000  # linear: steps from 0 to kl_max; cyclical: ramp part of a cycle
    kl_cycle_steps: int = 0       # cyclical: steps per cycle (0: the warm-up takes half a cycle)
    kl_max: float = 1.0           # final KL weight (beta)
    free_bits: float = 0.0        # nats per latent dimension not penalised (Kingma et al. 2016)
    bow_weight: float = 0.0       # bag-of-words loss on z (Zhao et al. 2017); 0 turns it off
    # --- training ---
    batch_size: int = 32          # dialogues (windows) per batch
    lr: float = 1e-3              # AdamW peak learning rate
    lr_warmup_steps: int = 200    # linear learning-rate warm-up
    weight_decay: float = 0.0     # AdamW weight decay
    grad_clip: float = 1.0        # max gradient norm
    epochs: int = 10              # passes over the training split
    max_steps: int = 0            # >0: stop after this many optimiser steps
    eval_every: int = 0           # >0: also validate every N steps (always after each epoch)
    eval_batches: int = 0         # >0: validate on at most N batches
    save_every: int = 200         # write last.pt every N steps (and at every epoch end)
    log_every: int = 50           # append a train line to metrics.jsonl every N steps
    seed: int = 1337              # one seed for data order, initialisation and sampling
    device: str = "auto"          # "auto" (cuda when present), "cpu" or "cuda"
    precision: str = "auto"       # training step: "bf16" autocast, "fp32", or "auto" (bf16 on CUDA)
    name: str = ""                # run name; default <config name>-<model>
    out_dir: str = "runs"         # runs go to <out_dir>/<name>/


# Fields that fix the network's shapes or its data: a run cannot resume with other values.
ARCH_FIELDS = ("data", "vocab_size", "max_utt_len", "max_context", "max_dialogues", "model",
               "emb_dim", "utt_hidden", "ctx_hidden", "dec_hidden", "z_dim", "latent_hidden",
               "tie_embeddings")


_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


def _field_type(f) -> type:
    return _TYPES[f.type] if isinstance(f.type, str) else f.type


def _parse_value(key: str, text: str, kind: type):
    """Turn the text of an override into the field's type, or say why not."""
    if kind is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}={text}: expected true or false")
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"{key}={text}: expected {kind.__name__}") from None


def _check_type(key: str, value, kind: type):
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)   # YAML writes 1 for 1.0
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {kind.__name__}, got {value!r}")
    return value


def _unknown(key: str) -> ConfigError:
    names = [f.name for f in fields(Config)]
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint}")


def from_dict(values: dict) -> Config:
    """Build a Config from a plain dict (a YAML file, a checkpoint), checking every key."""
    types = {f.name: _field_type(f) for f in fields(Config)}
    clean = {}
    for key, value in values.items():
        if key not in types:
            raise _unknown(key)
        clean[key] = _check_type(key, value, types[key])
    return Config(**clean)


def load(path: str | None, overrides: list[str]) -> Config:
    """Config file, then `key=value` overrides; validated."""
    import yaml   # only the command line needs it
    values = {}
    if path:
        if not os.path.exists(path):
            raise ConfigError(f"config file {path} not found (see configs/ for the shipped ones)")
        try:
            with open(path) as f:
                values = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path} should hold `key: value` lines")
    types = {f.name: _field_type(f) for f in fields(Config)}
    for item in overrides:
        key, eq, text = item.partition("=")
        key = key.lstrip("-")
        if not eq:
            raise ConfigError(f"override '{item}' should look like key=value")
        if key not in types:
            raise _unknown(key)
        values[key] = _parse_value(key, text, types[key])
    cfg = from_dict(values)
    if not cfg.name:
        stem = os.path.splitext(os.path.basename(path))[0] if path else "run"
        cfg.name = stem if stem.endswith(cfg.model) else f"{stem}-{cfg.model}"
    validate(cfg)
    return cfg


def validate(cfg: Config) -> list[str]:
    """Raise ConfigError on impossible values; return warnings for likely mistakes."""
    positive = ("vocab_size", "max_utt_len", "max_context", "emb_dim", "utt_hidden", "ctx_hidden",
                "dec_hidden", "latent_hidden", "batch_size", "epochs", "save_every", "log_every")
    for key in positive:
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"{key} must be positive, got {getattr(cfg, key)}")
    non_negative = ("max_dialogues", "kl_warmup_steps", "kl_cycle_steps", "kl_max", "free_bits",
                    "bow_weight", "lr_warmup_steps", "weight_decay", "grad_clip", "max_steps",
                    "eval_every", "eval_batches", "dropout", "word_dropout")
    for key in non_negative:
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{key} must not be negative, got {getattr(cfg, key)}")
    if cfg.model not in ("vhred", "hred"):
        raise ConfigError(f"model must be vhred or hred, got '{cfg.model}'")
    if cfg.model == "vhred" and cfg.z_dim <= 0:
        raise ConfigError("z_dim must be positive for vhred (use model=hred for no latent)")
    if cfg.kl_schedule not in ("linear", "cyclical", "constant"):
        raise ConfigError(f"kl_schedule must be linear, cyclical or constant, got '{cfg.kl_schedule}'")
    if cfg.vocab_size < 16:
        raise ConfigError("vocab_size must be at least 16")
    for key in ("dropout", "word_dropout"):
        if getattr(cfg, key) >= 1:
            raise ConfigError(f"{key} must be below 1, got {getattr(cfg, key)}")
    if cfg.lr <= 0:
        raise ConfigError(f"lr must be positive, got {cfg.lr}")
    if cfg.kl_schedule == "cyclical" and 0 < cfg.kl_cycle_steps < cfg.kl_warmup_steps:
        raise ConfigError("kl_cycle_steps must be at least kl_warmup_steps (the ramp is part of a cycle)")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got '{cfg.device}'")
    if cfg.precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"precision must be auto, fp32 or bf16, got '{cfg.precision}'")
    if os.sep in cfg.name or cfg.name in (".", ".."):
        raise ConfigError(f"name must be a plain folder name, got '{cfg.name}'")
    warnings = []
    if cfg.model == "vhred" and cfg.max_steps and cfg.kl_schedule == "linear" \
            and cfg.kl_warmup_steps > cfg.max_steps:
        warnings.append(f"kl_warmup_steps={cfg.kl_warmup_steps} is longer than max_steps="
                        f"{cfg.max_steps}: the KL weight never reaches kl_max")
    return warnings


def to_dict(cfg: Config) -> dict:
    return asdict(cfg)
