"""Data prepared once into cached Arrow tables, then served as length-bucketed batches.

`prepare` turns a source (DailyDialog or JSONL) into data/processed/<name>-<key>/ holding
train/validation/test tables (one row per training window), the tokenizer and meta.json.
Training never tokenises: it memory-maps the tables, so a corpus larger than RAM works too.
"""
import hashlib
import json
import os
import shutil
from dataclasses import dataclass

import numpy as np
import torch

from . import sources
from .config import Config
from .tokenizer import BOS, EOS, PAD, load_tokenizer, train_tokenizer

PREP_VERSION = 1   # bump when the processed format changes, so old caches are rebuilt


def windows(n: int, size: int) -> list[tuple[int, int]]:
    """Cut a dialogue of n utterances into windows of at most `size`, overlapping by one.

    Each utterance after the first is a target exactly once, seeing up to size-1 earlier turns.
    """
    if n <= size:
        return [(0, n)]
    starts = range(0, n - 1, size - 1)
    return [(s, min(s + size, n)) for s in starts]


def encode_windows(batch: dict, sp, max_utt_len: int, max_context: int) -> dict:
    """datasets.map function: dialogues of text -> training windows of token ids."""
    out = {"ids": [], "n_turns": [], "max_len": [], "n_tokens": []}
    for dialog in batch["dialog"]:
        ids = [u[:max_utt_len] for u in sp.encode(dialog)]
        for s, e in windows(len(ids), max_context + 1):
            win = ids[s:e]
            out["ids"].append(win)
            out["n_turns"].append(len(win))
            out["max_len"].append(max(len(u) for u in win))
            out["n_tokens"].append(sum(len(u) + 1 for u in win[1:]))   # targets, with <eos>
    return out


def _source(cfg: Config) -> tuple[str, str, str]:
    """(short name, path, identity) of the data source; the identity changes when the data does."""
    if cfg.data == "dailydialog":
        name, src = "dailydialog", sources.find_dailydialog(cfg.data_dir)
    elif os.path.isfile(cfg.data):
        name, src = os.path.splitext(os.path.basename(cfg.data))[0], cfg.data
    else:
        raise sources.DataError(f"data file {cfg.data} not found (give data=dailydialog or a path to a .jsonl file)")
    st = os.stat(src)
    return name, src, f"{os.path.abspath(src)}:{st.st_size}:{int(st.st_mtime)}"


def _dialogue_rows(data: str, src: str, split: str, seed: int, max_dialogues: int):
    """Generator for datasets.Dataset.from_generator: {"dialog": [...]} rows of one split."""
    if data == "dailydialog":
        stream = ((split, d) for d in sources.read_dailydialog(src)[split])
    else:
        stream = ((s, d) for s, d in sources.iter_jsonl(data, seed) if s == split)
    count = 0
    for _, dialog in stream:
        if len(dialog) < 2:
            continue   # nothing to predict
        yield {"dialog": dialog}
        count += 1
        if max_dialogues and count >= max_dialogues:
            return


def prepare(cfg: Config, log=print) -> str:
    """Build (or reuse) the processed data for cfg; return its folder."""
    name, src, identity = _source(cfg)
    key_src = json.dumps([PREP_VERSION, identity, cfg.vocab_size, cfg.max_utt_len, cfg.max_context,
                          cfg.max_dialogues, cfg.seed if cfg.data != "dailydialog" else 0])
    key = hashlib.sha1(key_src.encode()).hexdigest()[:10]
    out = os.path.join(cfg.data_dir, "processed", f"{name}-{key}")
    if os.path.exists(os.path.join(out, "meta.json")):
        return out
    if cfg.data == "dailydialog":
        sources.read_dailydialog(src)   # fail early and clearly on a bad archive
        scan = None
    else:
        scan = sources.scan_jsonl(cfg.data, cfg.seed)
    log(f"preparing {name} into {out}")
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    _build(cfg, src, tmp, key, log)
    meta = json.load(open(os.path.join(tmp, "meta.json")))
    meta.update(source=src, scan=scan)
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)   # the cache appears whole or not at all
    return out


def _build(cfg: Config, src: str, tmp: str, key: str, log) -> None:
    import datasets   # heavy import, only when data is built
    datasets.disable_progress_bars()
    cache = os.path.join(tmp, "hf-cache")
    rows = {s: datasets.Dataset.from_generator(
                _dialogue_rows, cache_dir=cache, keep_in_memory=False,
                gen_kwargs=dict(data=cfg.data, src=src, split=s, seed=cfg.seed,
                                max_dialogues=cfg.max_dialogues))
            for s in sources.SPLITS}
    tok_path = os.path.join(tmp, "tokenizer.model")
    train_tokenizer((u for d in rows["train"]["dialog"] for u in d), cfg.vocab_size, tok_path)
    sp = load_tokenizer(tok_path)
    meta = {"vocab_size": sp.get_piece_size(), "dialogues": {}, "windows": {}, "target_tokens": {}}
    for s, ds in rows.items():
        win = ds.map(encode_windows, batched=True, batch_size=1000, remove_columns=["dialog"],
                     fn_kwargs=dict(sp=sp, max_utt_len=cfg.max_utt_len, max_context=cfg.max_context),
                     new_fingerprint=f"{key}-{s}")
        win.save_to_disk(os.path.join(tmp, s))
        meta["dialogues"][s] = len(ds)
        meta["windows"][s] = len(win)
        meta["target_tokens"][s] = int(np.sum(win["n_tokens"])) if len(win) else 0
        log(f"  {s}: {len(ds)} dialogues, {len(win)} windows, {meta['target_tokens'][s]} target tokens")
    del rows, win, ds
    shutil.rmtree(cache, ignore_errors=True)
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(meta, f)


# --- batches -----------------------------------------------------------------------------------

@dataclass
class Batch:
    """A batch of dialogue windows, utterances flattened dialogue by dialogue.

    tokens: (U, L) <bos> w_1 .. w_l <eos> <pad>.. for all U utterances
    lens:   (U,)   l + 2, the unpadded length of each row of tokens
    turns:  (B,)   utterances per dialogue; sum(turns) == U
    """
    tokens: torch.Tensor
    lens: torch.Tensor
    turns: torch.Tensor

    def to(self, device, non_blocking: bool = False) -> "Batch":
        """To the device; to a GPU through pinned memory, so a non-blocking copy overlaps compute."""
        pin = non_blocking and torch.device(device).type == "cuda"
        return Batch(*((t.pin_memory() if pin else t).to(device, non_blocking=non_blocking)
                       for t in (self.tokens, self.lens, self.turns)))

    @property
    def target_tokens(self) -> int:
        """Tokens the decoder predicts: every utterance but each dialogue's first, with its <eos>."""
        first = torch.cumsum(self.turns, 0) - self.turns
        return int(self.lens.sum() - self.lens[first].sum() - (len(self.lens) - len(self.turns)))


def collate(dialogues: list[list[list[int]]]) -> Batch:
    utts = [u for d in dialogues for u in d]
    width = max(len(u) for u in utts) + 2
    rows = [[BOS, *u, EOS] + [PAD] * (width - len(u) - 2) for u in utts]
    return Batch(tokens=torch.tensor(rows, dtype=torch.long),
                 lens=torch.tensor([len(u) + 2 for u in utts], dtype=torch.long),
                 turns=torch.tensor([len(d) for d in dialogues], dtype=torch.long))


class DialogueData:
    """One processed split: memory-mapped rows plus the lengths needed to bucket them."""

    def __init__(self, folder: str, split: str, ds=None):
        import datasets
        self.ds = ds if ds is not None else datasets.load_from_disk(os.path.join(folder, split))
        self.n_turns = np.asarray(self.ds["n_turns"], dtype=np.int64)
        self.max_len = np.asarray(self.ds["max_len"], dtype=np.int64)
        self.n_tokens = np.asarray(self.ds["n_tokens"], dtype=np.int64)

    @classmethod
    def from_dialogues(cls, dialogues: list[list[str]], sp, max_utt_len: int, max_context: int):
        """An in-memory split tokenised with a given tokenizer (a checkpoint's, for evaluation)."""
        import datasets
        rows = encode_windows({"dialog": [d for d in dialogues if len(d) > 1]}, sp, max_utt_len, max_context)
        return cls("", "", ds=datasets.Dataset.from_dict(rows))

    def __len__(self) -> int:
        return len(self.ds)

    def batches(self, batch_size: int, seed: int = 0, epoch: int = 0, shuffle: bool = True,
                pool: int = 50) -> list[np.ndarray]:
        """Index batches for one epoch, the same for the same (seed, epoch).

        Windows are shuffled, then sorted by (turns, longest utterance) within pools of `pool`
        batches, so a batch holds alike shapes and pads little; the batch order is shuffled again.
        """
        n = len(self)
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(n) if shuffle else np.arange(n)
        step = batch_size * pool
        for s in range(0, n, step):
            chunk = order[s:s + step]
            keys = np.lexsort((self.max_len[chunk], self.n_turns[chunk]))
            order[s:s + step] = chunk[keys]
        out = [order[s:s + batch_size] for s in range(0, n, batch_size)]
        if shuffle:
            out = [out[i] for i in rng.permutation(len(out))]
        return out

    def batch(self, indices) -> Batch:
        return collate(self.ds[[int(i) for i in indices]]["ids"])
