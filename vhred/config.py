"""One typed config for data, model and training.

Filled from a YAML file, then `key=value` overrides from the command line, then validated once.
The network's own settings are a nested part, `arch` (a ModelConfig): they are what a
checkpoint's weights fit, so a checkpoint rebuilds its model from them and a run resumes only
with the same ones. In files and overrides a model key may be written plainly (`z_dim: 64`,
`z_dim=64`) or with its section (`arch: {z_dim: 64}`, `arch.z_dim=64`).
The final dict is saved beside the run and inside every checkpoint.
"""
import difflib
import math
import os
import re
from dataclasses import dataclass, field, fields

from .errors import ConfigError
from .limits import shown

__all__ = ["Config", "ConfigError", "ModelConfig", "from_dict", "load", "validate", "warnings"]

MAX_INT = 2 ** 31 - 1   # sizes, steps and seeds all fit in a C int


@dataclass
class ModelConfig:
    """The network and its regularisers: everything VHRED reads. Its vocabulary size is the
    tokenizer's, which travels with the checkpoint."""
    model: str = "vhred"          # the family (vhred/models/): vhred, hred (no latent z), cvae, vhcr, dialogwae
    emb_dim: int = 256            # word embedding size
    utt_hidden: int = 512         # utterance-encoder GRU width, per direction
    ctx_hidden: int = 512         # context GRU width
    dec_hidden: int = 512         # decoder GRU width
    z_dim: int = 128              # per-utterance latent size (ignored by hred)
    latent_hidden: int = 512      # width of the prior / posterior MLPs
    tie_embeddings: bool = True   # share input embedding and output softmax weights
    dropout: float = 0.0          # dropout on embeddings and decoder outputs
    word_dropout: float = 0.25    # decoder inputs replaced by <unk> (Bowman et al. 2016; VHRED)
    bow_weight: float = 0.0       # bag-of-words loss on z (Zhao et al. 2017); > 0 adds its head (cvae: 1 unless given)
    gmp_components: int = 1       # dialogwae: Gaussian-mixture prior components (> 1: DialogWAE-GMP; theirs 3)
    critic_steps: int = 1         # dialogwae: critic updates per training step (dialogwae: 5 unless given, as their n_iters_d)
    utterance_drop: float = 0.25  # vhcr: context-RNN inputs replaced by a learned vector (Park et al. 2018)
    floor: bool = False           # the context RNN also reads which of the two speakers said each turn (CVAE's, DialogWAE's floor)
    attention: int = 0            # > 0: the decoder attends over the first N pieces of the turn it answers (vhred, hred, cvae)
    retrieve: bool = False        # with attention: it also attends over the first N pieces of the training split's reply
                                  # to the turn most like the answered one (retrieve-and-refine, vhred/models/retrieval.py)
    copy: bool = False            # with attention: each step may copy an attended piece (a pointer-generator)


@dataclass
class Config:
    # --- data ---
    data: str = "dailydialog"     # "dailydialog", or a path to a .jsonl of {"dialog": [...]} lines
    data_dir: str = "data"        # downloads, processed caches
    data_source: str = ""         # set by training: the absolute path the data was read from (eval reads it again)
    data_sha256: str = ""         # set by training on a JSONL file: its SHA-256 (eval refuses the file once edited)
    vocab_size: int = 8000        # SentencePiece vocabulary asked for (a small corpus may give fewer)
    max_utt_len: int = 30         # tokens kept per utterance (longer ones are truncated)
    max_context: int = 10         # context turns a target sees at most (windows overlap by one: docs/data.md)
    max_dialogues: int = 0        # >0: keep only the first N dialogues of each split (quick runs)
    tokenizer_sentences: int = 100_000  # SentencePiece trains on a seeded sample of this many training utterances
    tokenizer: str = "unigram"    # SentencePiece's model: "unigram", "bpe", or "word" (whole words, the rest <unk>)
    # --- model ---
    arch: ModelConfig = field(default_factory=ModelConfig)
    # --- objective ---
    kl_schedule: str = "linear"   # "linear" warm-up, "cyclical" (Fu et al. 2019) or "constant"
    kl_warmup_steps: int = 10000  # linear: steps from 0 to kl_max; cyclical: ramp part of a cycle
    kl_cycle_steps: int = 0       # cyclical: steps per cycle (0: the warm-up takes half a cycle)
    kl_max: float = 1.0           # final KL weight (beta)
    free_bits: float = 0.0        # nats per latent dimension not penalised (Kingma et al. 2016)
    wh_reply_weight: float = 1.0  # loss weight of each reply to a wh-question (what, where, when, why, who, which,
                                  # how: rate.turn_kind); above 1 the model learns to answer them at the rest's cost
    # --- training ---
    batch_size: int = 32          # dialogues (windows) per batch
    lr: float = 1e-3              # AdamW peak learning rate
    lr_warmup_steps: int = 200    # linear learning-rate warm-up
    lr_decay_steps: int = 0       # >0: after the warm-up, a cosine from lr down to lr/10 over this many steps, then lr/10
    weight_decay: float = 0.0     # AdamW weight decay
    grad_clip: float = 1.0        # max gradient norm
    epochs: int = 10              # passes over the training split
    max_steps: int = 0            # >0: stop after this many optimiser steps
    patience: int = 0             # >0: stop after this many epochs without a better validation ELBO
    eval_every: int = 0           # >0: also validate every N steps (always after each epoch, and each KL cycle of a cyclical schedule)
    eval_batches: int = 0         # >0: validate on at most N batches
    save_every: int = 200         # write last.pt every N steps (and at every epoch end)
    log_every: int = 50           # append a train line to metrics.jsonl every N steps
    tensorboard: bool = False     # also write metrics.jsonl's figures to <run>/tb/ (pip install 'vhred[tb]')
    seed: int = 1337              # one seed for data order, initialisation and sampling
    device: str = "auto"          # "auto" (cuda when present), "cpu" or "cuda"
    precision: str = "auto"       # training step: "bf16" autocast, "fp32", or "auto" (see device.py)
    name: str = ""                # run name; default <config name>-<model> (<data name>-... for a .jsonl)
    out_dir: str = "runs"         # runs go to <out_dir>/<name>/


_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


def _types(cls) -> dict:
    return {f.name: _TYPES[f.type] if isinstance(f.type, str) else f.type for f in fields(cls)}


TOP, ARCH = _types(Config), _types(ModelConfig)
del TOP["arch"]


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
        if abs(value) > MAX_INT:   # float() of a 400-digit int overflows
            raise ConfigError(f"{key} must be at most {MAX_INT}, got {shown(value)}")
        return float(value)   # YAML writes 1 for 1.0
    if kind is float and isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", value):
        return float(value)   # YAML 1.1 reads 1e-3 (no dot) as a string
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {kind.__name__}, got {value!r}")
    return value


def _unknown(key) -> ConfigError:
    name = str(key)
    name = name[len("arch."):] if name.startswith("arch.") else name
    close = difflib.get_close_matches(name.lower(), [*TOP, *ARCH], n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint}")


def _place(key) -> tuple[dict, str]:
    """(the types of the section that holds key, the plain key): `z_dim` and `arch.z_dim` alike."""
    name = key[len("arch."):] if isinstance(key, str) and key.startswith("arch.") else key
    if key == "arch":
        raise ConfigError("'arch' is the section of model settings: give one of them, as arch.z_dim=8 or z_dim=8")
    if name in ARCH:
        return ARCH, name
    if name in TOP and name == key:
        return TOP, name
    if name in TOP:   # arch: {lr: 0.01}, arch.lr=0.01: one indent too many
        raise ConfigError(f"'{name}' is a training setting, not a model one: write it at the top level, not under arch")
    raise _unknown(key)


def from_dict(values: dict) -> Config:
    """Build a Config from a plain dict (a YAML file, a checkpoint), checking every key.
    Model keys may sit under "arch" or at the top level."""
    flat = dict(values)
    nested = flat.pop("arch", None)
    nested = {} if nested is None else nested
    if not isinstance(nested, dict):
        raise ConfigError(f"arch: expected a mapping of model settings, got {nested!r}")
    top, arch = {}, {}
    for key, value in [*flat.items(), *((f"arch.{k}", v) for k, v in nested.items())]:
        section, name = _place(key)
        into = arch if section is ARCH else top
        if name in into:   # z_dim at the top level and under arch: which one was meant?
            raise ConfigError(f"key '{name}' is given twice, at the top level and under arch: keep one")
        into[name] = _check_type(name, value, section[name])
    return Config(**top, arch=ModelConfig(**arch))


def _unique_keys_loader():
    """yaml.SafeLoader that refuses a key written twice in one mapping: plain YAML silently keeps
    the last one, so `lr: 0.1` further down would quietly win over the `lr` one reads first."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            first = {}
            for key_node, _ in node.value:
                key = repr(self.construct_object(key_node, deep=True))
                line = key_node.start_mark.line + 1
                if key in first:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key} is given twice (lines {first[key]} and {line}); keep one")
                first[key] = line
            return super().construct_mapping(node, deep)

        def construct_yaml_float(self, node):   # YAML 1.1 reads 1:30.0 as 90.0
            if ":" in str(node.value):
                raise _other_base(node, "in base 60")
            return super().construct_yaml_float(node)

        def construct_yaml_int(self, node):   # YAML 1.1 reads 010 as 8, 0b11 as 3, 1:30 as 90
            digits = str(node.value).replace("_", "").lstrip("+-")
            if (len(digits) > 1 and digits[0] == "0") or ":" in digits:
                raise _other_base(node, "in another base (a leading 0 is octal, 0b binary, 0x hex, ':' base 60)")
            return super().construct_yaml_int(node)

    Loader.add_constructor("tag:yaml.org,2002:int", Loader.construct_yaml_int)
    Loader.add_constructor("tag:yaml.org,2002:float", Loader.construct_yaml_float)
    return Loader


def _other_base(node, how: str):
    """The refusal of a YAML number that YAML 1.1 reads in a base other than 10."""
    import yaml
    return yaml.constructor.ConstructorError(
        None, None, f"line {node.start_mark.line + 1}: YAML reads {node.value} {how}; write the number plainly")


def _yaml_problem(e) -> str:
    """PyYAML's own words for what is wrong and where: its first line ("while scanning for the next
    token") says neither."""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    mark = getattr(e, "problem_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else problem


def _check_yaml_shape(text: str) -> None:
    """Refuse anchors and aliases and deep nesting by reading the parser's events, before anything
    is built: an alias can make a 357-byte file expand to gigabytes ("billion laughs"), and a
    document nested 100,000 deep overflows the recursive builder. A config needs neither."""
    import yaml
    from .limits import MAX_YAML_DEPTH
    import numpy as np
    raw = np.frombuffer(text.encode("utf-8", "replace"), dtype=np.uint8)
    step = np.isin(raw, (ord("["), ord("{"))).astype(np.int32) - np.isin(raw, (ord("]"), ord("}")))
    # flow brackets first, counted plainly (quotes ignored): PyYAML's scanner is quadratic in their depth
    if len(raw) and int(np.cumsum(step).max()) > MAX_YAML_DEPTH:
        raise ConfigError(f"nested more than {MAX_YAML_DEPTH} levels deep ([ and {{); a config is flat `key: value` lines")
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            line = event.start_mark.line + 1
            raise ConfigError(f"line {line}: YAML anchors and aliases (&name, *name) are not accepted in a config; "
                              "write the values out")
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise ConfigError(f"line {event.start_mark.line + 1}: nested more than {MAX_YAML_DEPTH} levels deep; "
                                  "a config is flat `key: value` lines")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def _shipped_roots() -> tuple[str, str]:
    """Where the shipped configs/ is: the checkout vhred runs from, or the installed package
    (pyproject.toml puts configs/ in as vhred/configs/)."""
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.dirname(here), here


def _find(path: str) -> str:
    """path as given, or, for a relative one not found here (a command run outside the checkout),
    the shipped config of that path: `--config configs/tiny.yaml` works anywhere."""
    if os.path.exists(path) or os.path.isabs(path):
        return path
    return next((p for p in (os.path.join(r, path) for r in _shipped_roots()) if os.path.exists(p)), path)


def shipped_configs() -> list[str]:
    """The configs that come with vhred, as `--config` takes them."""
    folders = [os.path.join(r, "configs") for r in _shipped_roots()]
    names = {n for d in folders if os.path.isdir(d) for n in os.listdir(d) if n.endswith(".yaml")}
    return [f"configs/{n}" for n in sorted(names)]


def _read_yaml(path: str) -> dict:
    import yaml   # only the command line needs it
    from .limits import MAX_CONFIG_BYTES
    path = _find(path)
    if not os.path.exists(path):
        # not "--config takes ...": vhred checkpoint and bench take the config another way
        raise ConfigError(f"config file {path} not found; give a YAML file's path, or one of the "
                          f"shipped {', '.join(shipped_configs())}")
    if not os.path.isfile(path) or os.path.getsize(path) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is not a regular file of at most {MAX_CONFIG_BYTES // 1024} KB")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        _check_yaml_shape(text)
        values = yaml.load(text, Loader=_unique_keys_loader()) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text; save it as UTF-8") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {_yaml_problem(e)}") from None
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path} should hold `key: value` lines")
    return values


def file_settings(path: str) -> dict:
    """{key: value} of what a config file sets itself, a model key under arch: or not alike."""
    values = _read_yaml(path)
    arch = values.get("arch") if isinstance(values.get("arch"), dict) else {}
    return {**{_place(k)[1]: v for k, v in values.items() if k != "arch"},
            **{_place(f"arch.{k}")[1]: v for k, v in arch.items()}}


def load(path: str | None, overrides: list[str]) -> Config:
    """Config file, then `key=value` overrides, then the family's own defaults for the model
    keys neither gave (vhred/models/: CVAE's bag-of-words loss); validated."""
    if path is not None and not path.strip():   # an unset $CONFIG: not the defaults, which train another model
        raise ConfigError("--config is empty; give a config file (configs/*.yaml), or leave the flag out for "
                          "the defaults of vhred/config.py")
    values = _read_yaml(path) if path else {}
    cfg = from_dict(values)
    given = {_place(k)[1] for k in values if k != "arch"} | {_place(f"arch.{k}")[1] for k in values.get("arch") or {}}
    for item in overrides:
        key, eq, text = item.partition("=")
        key = key.lstrip("-")
        if not eq:
            raise ConfigError(f"override '{item}' should look like key=value")
        section, name = _place(key)
        setattr(cfg.arch if section is ARCH else cfg, name, _parse_value(key, text, section[name]))
        given.add(name)
    _family_defaults(cfg, given)
    _check_family_keys(cfg, given)
    if not cfg.name:
        stem = os.path.splitext(os.path.basename(path))[0] if path else "run"
        if cfg.data != "dailydialog":   # a run of your own data is named after it: <data>-<config>-<model>
            stem = f"{os.path.splitext(os.path.basename(cfg.data))[0]}-{stem}"
        stem = "-".join(stem.split())   # "my chats.jsonl": runs/my-chats-..., a folder name a shell takes unquoted
        named = stem == cfg.arch.model or stem.endswith(f"-{cfg.arch.model}")   # tiny-vhred is no hred run
        cfg.name = stem if named else f"{stem}-{cfg.arch.model}"
    validate(cfg)
    return cfg


def _check_family_keys(cfg: Config, given: set) -> None:
    """A model key only some families read (their OWN_SETTINGS), given to another with a value
    other than ModelConfig's default, is refused: it would be saved and silently ignored. The
    default (bow_weight: 0, which a config file may give every family) changes nothing."""
    from .models import FAMILIES, readers   # the registry imports torch: looked up when used, not when a config is read
    if cfg.arch.model not in FAMILIES:   # a misspelt model: validate() says so, not that it reads no key
        return
    for key in sorted(given):
        families = readers(key)
        if families and cfg.arch.model not in families and getattr(cfg.arch, key) != getattr(ModelConfig, key):
            names = ", ".join(families[:-1]) + f" or {families[-1]}" if len(families) > 1 else families[0]
            raise ConfigError(f"{key} is a setting of model={names}, which model={cfg.arch.model} does not read: "
                              f"add model={families[0]}, or leave {key} out")


def _family_defaults(cfg: Config, given: set) -> None:
    from .models import family_defaults   # the registry imports torch: looked up when used, not when a config is read
    for key, value in family_defaults(cfg.arch.model).items():
        if key not in given:
            setattr(cfg.arch, key, value)


POSITIVE = ("wh_reply_weight", "vocab_size", "tokenizer_sentences", "max_utt_len", "max_context", "batch_size", "epochs", "save_every",
            "log_every", "emb_dim", "utt_hidden", "gmp_components", "critic_steps", "ctx_hidden", "dec_hidden", "latent_hidden",
            "grad_clip")   # a norm of 0 scales every gradient to 0: the weights would never move
NON_NEGATIVE = ("max_dialogues", "kl_warmup_steps", "kl_cycle_steps", "kl_max", "free_bits",
                "lr_warmup_steps", "lr_decay_steps", "weight_decay", "max_steps", "patience", "eval_every",
                "eval_batches", "seed", "dropout", "word_dropout", "bow_weight", "utterance_drop", "attention",
                "z_dim")   # z_dim 0 for hred, which has no z; every other family needs it positive
# Upper bounds sized to the machine (docs/limits.md): beyond them a run cannot fit in memory or
# SentencePiece spins for minutes, so they are refused before any work (the rest: MAX_INT).
CAPS = {"vocab_size": 262_144, "tokenizer_sentences": 1_000_000, "max_utt_len": 1000, "max_context": 1000,
        "batch_size": 65_536, "emb_dim": 8192, "utt_hidden": 8192, "ctx_hidden": 8192, "dec_hidden": 8192,
        "z_dim": 8192, "latent_hidden": 8192, "gmp_components": 1024, "critic_steps": 100,
        "attention": 1001, "wh_reply_weight": 100}   # attention: max_utt_len's cap and <eos>
CHOICES = {"kl_schedule": ("linear", "cyclical", "constant"), "tokenizer": ("unigram", "bpe", "word"),
           "device": ("auto", "cpu", "cuda"), "precision": ("auto", "fp32", "bf16")}


def _numbers(cfg: Config):
    """(name, value) of every number in the config, both sections."""
    for section, types in ((cfg, TOP), (cfg.arch, ARCH)):
        for key, kind in types.items():
            if kind in (int, float):
                yield key, getattr(section, key)


def _value(cfg: Config, key: str):
    return getattr(cfg.arch if key in ARCH else cfg, key)


def validate(cfg: Config) -> None:
    """Raise ConfigError on impossible values: NaN and infinities, out-of-range integers,
    negative sizes, unknown choices, names that are not plain folder names."""
    for key, value in _numbers(cfg):
        if isinstance(value, float) and not math.isfinite(value):   # an int is finite (and may not fit a float)
            raise ConfigError(f"{key} must be a finite number, got {value}")
        if abs(value) > MAX_INT:
            raise ConfigError(f"{key} must be at most {MAX_INT}, got {shown(value)}")
    for key in POSITIVE:
        if _value(cfg, key) <= 0:
            raise ConfigError(f"{key} must be positive, got {_value(cfg, key)}")
    for key in NON_NEGATIVE:
        if _value(cfg, key) < 0:
            raise ConfigError(f"{key} must not be negative, got {_value(cfg, key)}")
    for key, cap in CAPS.items():
        if _value(cfg, key) > cap:
            raise ConfigError(f"{key} may be at most {cap:,}, got {_value(cfg, key)} (see docs/limits.md)")
    from .models import FAMILIES   # the registry imports torch: looked up when used, not when a config is read
    for key, allowed in {"model": tuple(FAMILIES), **CHOICES}.items():
        if _value(cfg, key) not in allowed:
            raise ConfigError(f"{key} must be {', '.join(allowed[:-1])} or {allowed[-1]}, got '{_value(cfg, key)}'")
    _check_relations(cfg, FAMILIES)


def _check_relations(cfg: Config, families: dict) -> None:
    if families[cfg.arch.model].latent and cfg.arch.z_dim <= 0:
        without = ", ".join(f"model={name}" for name, family in families.items() if not family.latent)
        raise ConfigError(f"z_dim must be positive for {cfg.arch.model} (use {without} for no latent)")
    if cfg.arch.attention and not families[cfg.arch.model].attends:
        takes = ", ".join(name for name, family in families.items() if family.attends)
        raise ConfigError(f"attention is built for {takes}; set attention=0 for {cfg.arch.model}")
    for key in ("retrieve", "copy"):
        if getattr(cfg.arch, key) and not cfg.arch.attention:
            raise ConfigError(f"{key}=true works through attention: add attention=20 (the first pieces it reads)")
    if cfg.vocab_size < 16:
        raise ConfigError("vocab_size must be at least 16")
    if cfg.tokenizer_sentences <= 100:
        raise ConfigError(f"tokenizer_sentences must be above 100 (SentencePiece samples no fewer), "
                          f"got {cfg.tokenizer_sentences}")
    for key in ("dropout", "word_dropout", "utterance_drop"):
        if getattr(cfg.arch, key) >= 1:
            raise ConfigError(f"{key} must be below 1, got {getattr(cfg.arch, key)}")
    if cfg.lr <= 0:
        raise ConfigError(f"lr must be positive, got {cfg.lr}")
    if cfg.kl_schedule == "cyclical" and 0 < cfg.kl_cycle_steps <= cfg.kl_warmup_steps:
        # a cycle of the ramp alone restarts before beta reaches kl_max (1 and 1: beta is always 0)
        raise ConfigError(f"kl_cycle_steps must be above kl_warmup_steps (a cycle is the ramp, then steps at "
                          f"kl_max), got {cfg.kl_cycle_steps} and {cfg.kl_warmup_steps}")
    for key in ("name", "data", "data_dir", "out_dir"):
        if "\0" in getattr(cfg, key):
            raise ConfigError(f"{key} must not contain a NUL character")
    for key in ("data", "data_dir", "out_dir"):   # '' would be the current folder, or no data at all
        if not getattr(cfg, key).strip():
            raise ConfigError(f"{key} is empty; leave it out for the default ({getattr(Config(), key)})")
    if os.sep in cfg.name or cfg.name in (".", "..") or not cfg.name.isprintable() or cfg.name != cfg.name.strip():
        raise ConfigError(f"name must be a plain folder name (no /, no control characters, no spaces at its ends), "
                          f"got {cfg.name!r}")


def warnings(cfg: Config, total_steps: int) -> list[str]:
    """Likely mistakes, once the length of the run is known."""
    from .models import FAMILIES   # the registry imports torch: looked up when used, not when a config is read
    out = []   # steps 0 .. total_steps - 1 are taken: beta is kl_max from step kl_warmup_steps on
    if FAMILIES[cfg.arch.model].kl and cfg.kl_schedule != "constant" and cfg.kl_warmup_steps >= total_steps:
        out.append(f"kl_warmup_steps={cfg.kl_warmup_steps} is as long as the whole run or longer "
                   f"({total_steps} steps): the KL weight never reaches kl_max")
    if cfg.lr_warmup_steps > total_steps:   # lr at step s < warm-up: lr (s + 1) / lr_warmup_steps
        out.append(f"lr_warmup_steps={cfg.lr_warmup_steps} is longer than the whole run "
                   f"({total_steps} steps): the learning rate never reaches lr")
    if cfg.arch.attention > cfg.max_utt_len + 1:
        out.append(f"attention={cfg.arch.attention} is longer than a turn can be (max_utt_len={cfg.max_utt_len} "
                   f"pieces and <eos>): attention={cfg.max_utt_len + 1} reads the same words in less memory")
    return out
