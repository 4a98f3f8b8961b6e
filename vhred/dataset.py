"""Data prepared once into cached Arrow tables, then served as length-bucketed batches.

`prepare` turns a source (DailyDialog or JSONL) into data/processed/<name>-<key>/ holding
train/validation/test tables (one row per training window), the tokenizer and meta.json.
Preparation streams the source: its memory holds the tokenizer's bounded sample of sentences
and one chunk of dialogues, never the corpus. Training never tokenises: it memory-maps the
tables and keeps only three integers per window, so a corpus larger than RAM works too.
"""
import contextlib
import hashlib
import json
import os
import shutil
from dataclasses import dataclass

import numpy as np
import torch

from . import cache, sources
from .config import Config
from .tokenizer import BOS, EOS, PAD, TOKENIZER_SEED, load_tokenizer, train_tokenizer

PREP_VERSION = 5   # bump when the processed format changes, so old caches are rebuilt
# the settings prepare makes a data folder from, besides its source and PREP_VERSION (and the seed
# for one's own data)
DATA_SETTINGS = ("data", "vocab_size", "max_utt_len", "max_context", "max_dialogues", "tokenizer_sentences", "tokenizer")
# 5: JSONL lines in the chat messages format read (they were skipped), emoji keep their selector
# 2: one Arrow file per split written while streaming (<split>/data.arrow, int32), tokenizer on a sample
CACHE_FILES = ("tokenizer.model", *(f"{s}/data.arrow" for s in sources.SPLITS))   # checksummed in meta.json


def windows(n: int, size: int) -> list[tuple[int, int]]:
    """Cut a dialogue of n utterances into windows of at most `size`, overlapping by one.

    Each utterance after the first is a target exactly once, seeing up to size-1 earlier turns.
    """
    if n <= size:
        return [(0, n)]
    starts = range(0, n - 1, size - 1)
    return [(s, min(s + size, n)) for s in starts]


def encode_windows(batch: dict, sp, max_utt_len: int, max_context: int) -> dict:
    """Dialogues of text -> training windows of token ids (columns of a table)."""
    out = {"ids": [], "n_turns": [], "max_len": [], "n_tokens": []}
    flat = sp.encode([u for dialog in batch["dialog"] for u in dialog])   # one call for the batch
    start = 0
    for dialog in batch["dialog"]:
        ids = [u[:max_utt_len] for u in flat[start:start + len(dialog)]]
        start += len(dialog)
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
        name, src = "dailydialog", sources.find_dailydialog(cfg.data_dir, remembered=cfg.data_source)
    elif os.path.isfile(cfg.data):
        name, src = os.path.splitext(os.path.basename(cfg.data))[0], cfg.data
    else:
        raise sources.no_data_file(cfg.data)
    if cfg.data != "dailydialog":   # a JSONL file by its contents: an edit that keeps size and time
        return name, src, f"{os.path.abspath(src)}:sha256:{cache.file_sha256(src)}"   # (cp -p) is one too
    if os.path.isdir(src):   # extracted split files: each one's size and time (the folder's own change with none)
        return name, src, f"{os.path.abspath(src)}:files:{_files_stamp(src)}"
    st = os.stat(src)   # the official archive, which nobody edits
    return name, src, f"{os.path.abspath(src)}:{st.st_size}:{int(st.st_mtime)}"


def _files_stamp(folder: str) -> str:
    """A digest of every file's path, size and modification time under folder."""
    stamps = []
    for root, _, files in os.walk(folder):
        for f in files:
            path = os.path.join(root, f)
            st = os.stat(path)
            stamps.append(f"{os.path.relpath(path, folder)}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(sorted(stamps)).encode()).hexdigest()[:16]


def _dialogues(data: str, src: str, seed: int, max_dialogues: int, splits=sources.SPLITS):
    """Yield (split, dialogue) of the wanted splits in source order, streaming a JSONL file.

    Dialogues of fewer than two utterances are dropped (nothing to predict); with max_dialogues,
    only each split's first N are kept and the file is read no further than needed.
    """
    if data == "dailydialog":
        dd = sources.read_dailydialog(src)   # fixed size: reading it whole is fine
        stream = ((s, d) for s in splits for d in dd[s])
    else:
        stream = sources.iter_jsonl(data, seed)
    counts = dict.fromkeys(splits, 0)
    for split, dialog in stream:
        if split not in counts or len(dialog) < 2 or (max_dialogues and counts[split] >= max_dialogues):
            continue
        yield split, dialog
        counts[split] += 1
        if max_dialogues and min(counts.values()) >= max_dialogues:
            return


class WindowWriter:
    """Streams one split's training windows into <folder>/data.arrow, a chunk of dialogues at a
    time, counting as it goes: memory holds one chunk, never the split."""

    def __init__(self, folder: str, sp, max_utt_len: int, max_context: int, chunk: int = 1000):
        import pyarrow as pa
        os.makedirs(folder)
        self.schema = pa.schema([("ids", pa.list_(pa.list_(pa.int32()))), ("n_turns", pa.int32()),
                                 ("max_len", pa.int32()), ("n_tokens", pa.int32())])
        self.sink = pa.OSFile(os.path.join(folder, "data.arrow"), "wb")
        self.writer = pa.ipc.new_stream(self.sink, self.schema)   # the format datasets maps
        self.encode = dict(sp=sp, max_utt_len=max_utt_len, max_context=max_context)
        self.chunk, self.pending = chunk, []
        self.dialogues = self.windows = self.target_tokens = 0

    def add(self, dialog: list[str]):
        self.pending.append(dialog)
        if len(self.pending) >= self.chunk:
            self.flush()

    def flush(self):
        import pyarrow as pa
        if not self.pending:
            return
        rows = encode_windows({"dialog": self.pending}, **self.encode)
        self.writer.write_batch(pa.RecordBatch.from_pydict(rows, schema=self.schema))
        self.dialogues += len(self.pending)
        self.windows += len(rows["ids"])
        self.target_tokens += sum(rows["n_tokens"])
        self.pending = []

    def close(self):
        self.flush()
        self.writer.close()
        self.sink.close()


def processed_digests(folder: str) -> dict | None:
    """The SHA-256 of a processed data folder's files as its meta.json records them, or None
    when the folder or its record is missing: what the data is, wherever its source lay."""
    try:
        with open(os.path.join(folder, "meta.json")) as f:
            digests = json.load(f).get("sha256")
    except (OSError, ValueError, AttributeError):
        return None
    return digests if isinstance(digests, dict) and digests else None


def prepare(cfg: Config, log=print) -> str:
    """Build (or reuse) the processed data for cfg; return its folder."""
    name, src, identity = _source(cfg)
    sentences = cfg.tokenizer_sentences
    key_src = json.dumps([PREP_VERSION, identity, cfg.vocab_size, cfg.max_utt_len, cfg.max_context,
                          cfg.max_dialogues, cfg.seed if cfg.data != "dailydialog" else 0, sentences]
                         + ([cfg.tokenizer] if cfg.tokenizer != "unigram" else []))   # unigram caches keep their names
    key = hashlib.sha1(key_src.encode()).hexdigest()[:10]
    out = os.path.join(cfg.data_dir, "processed", f"{name}-{key}")
    cache.remove_crashed(os.path.dirname(out))
    if os.path.exists(os.path.join(out, "meta.json")) and cache.intact(out, CACHE_FILES, log):
        return out
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with _preparing(out, log):
        if os.path.exists(os.path.join(out, "meta.json")) and cache.intact(out, CACHE_FILES, lambda *_: None):
            return out   # built by the process this one waited for
        _prepare_into(cfg, out, name, src, identity, sentences, log)
    return out


@contextlib.contextmanager
def _preparing(out: str, log):
    """One process prepares a folder at a time; another waits, then reuses what the first built.
    Two at once deleted each other's folder as each put its own in place (vhred compare trains
    two rows side by side). The kernel drops the lock when its process ends, even on SIGKILL."""
    import fcntl
    with open(f"{out}.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another process preparing {out}")
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _prepare_into(cfg: Config, out: str, name: str, src: str, identity: str, sentences: int, log):
    """Build the processed data in a folder of this process's own, then move it to out whole."""
    if cfg.data == "dailydialog":
        sources.read_dailydialog(src)   # fail early and clearly on a bad archive
        scan = None
    else:
        scan = sources.scan_jsonl(cfg.data, cfg.seed)
    log(f"preparing {name} into {out}")
    tmp = f"{out}.tmp{os.getpid()}"   # named by its process: see cache.remove_crashed
    os.makedirs(tmp)
    try:
        meta = _build(cfg, src, tmp, sentences, log)
        meta.update(source=src, scan=scan, sha256=cache.digests(tmp, CACHE_FILES))   # verified at every reuse
        if cfg.data != "dailydialog":
            meta["source_sha256"] = identity.rsplit(":", 1)[1]   # the file these windows came from
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(cache.seal(meta), f, indent=1)   # meta.json itself checksummed too
    except OSError as e:   # named in the folder asked for: the half-built one is removed
        shutil.rmtree(tmp, ignore_errors=True)
        where = e.filename.replace(tmp, out, 1) if isinstance(e.filename, str) else out
        raise OSError(e.errno, e.strerror or str(e), where) from None
    except BaseException:   # an error or Ctrl-C leaves no half-built folder behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)   # the cache appears whole or not at all


def _build(cfg: Config, src: str, tmp: str, sentences: int, log) -> dict:
    """Tokenizer, then the three window tables, each in one streaming pass over the source; meta."""
    log(f"  {cfg.tokenizer} tokenizer: sampling up to {sentences} training utterances (seed {TOKENIZER_SEED})")
    train = _dialogues(cfg.data, src, cfg.seed, cfg.max_dialogues, splits=("train",))
    tok_path = os.path.join(tmp, "tokenizer.model")
    try:
        sample = train_tokenizer((u for _, d in train for u in d), cfg.vocab_size, tok_path, sentences,
                                 model_type=cfg.tokenizer)
    except RuntimeError as e:   # SentencePiece's refusal, e.g. fewer pieces than the text has characters
        why = str(e).rsplit("] ", 1)[-1].split(" Increase")[0]
        raise sources.DataError(f"SentencePiece cannot build a vocabulary of vocab_size={cfg.vocab_size} "
                                f"from this data ({why}); raise vocab_size") from None
    sp = load_tokenizer(tok_path)
    log(f"  encoding windows (tokenizer trained on {sample['sentences']} of {sample['of']} utterances)")
    writers = {s: WindowWriter(os.path.join(tmp, s), sp, cfg.max_utt_len, cfg.max_context)
               for s in sources.SPLITS}
    for split, dialog in _dialogues(cfg.data, src, cfg.seed, cfg.max_dialogues):
        writers[split].add(dialog)
    meta = {"vocab_size": sp.get_piece_size(), "tokenizer_sample": sample,
            "dialogues": {}, "windows": {}, "target_tokens": {}}
    for s, w in writers.items():
        w.close()
        meta["dialogues"][s], meta["windows"][s], meta["target_tokens"][s] = w.dialogues, w.windows, w.target_tokens
        log(f"  {s}: {w.dialogues} dialogues, {w.windows} windows, {w.target_tokens} target tokens")
    return meta


# --- batches -----------------------------------------------------------------------------------

@dataclass
class Batch:
    """A batch of dialogue windows, utterances flattened dialogue by dialogue.

    tokens: (U, L) <bos> w_1 .. w_l <eos> <pad>.. for all U utterances
    lens:   (U,)   l + 2, the unpadded length of each row of tokens
    turns:  (B,)   utterances per dialogue; sum(turns) == U
    weights: (T,)  the loss weight of each target (every utterance but a dialogue's first), when
                   the training weighs them (train.WhReplies); None: all 1
    """
    tokens: torch.Tensor
    lens: torch.Tensor
    turns: torch.Tensor
    weights: torch.Tensor | None = None

    def to(self, device, non_blocking: bool = False) -> "Batch":
        """The tokens to the device (to a GPU through pinned memory, so a non-blocking copy
        overlaps compute); lens and turns stay on the host, where packing and indexing read them."""
        pin = non_blocking and torch.device(device).type == "cuda"
        tokens = (self.tokens.pin_memory() if pin else self.tokens).to(device, non_blocking=non_blocking)
        weights = None if self.weights is None else self.weights.to(device, non_blocking=non_blocking)
        return Batch(tokens, self.lens, self.turns, weights)

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


def once_per_context(encode, contexts: list[list[list[int]]], batch: int = 64) -> torch.Tensor:
    """encode(contexts) -> (C, H) states, run once per distinct context and spread back to every
    row: ranking scores each context with its 80 candidates, one pair a row. (P, H)"""
    keys = [tuple(map(tuple, c)) for c in contexts]
    distinct = list(dict.fromkeys(keys))
    states = torch.cat([encode([list(map(list, c)) for c in distinct[s:s + batch]])
                        for s in range(0, len(distinct), batch)])              # (D, H)
    index = {key: i for i, key in enumerate(distinct)}
    return states[torch.tensor([index[key] for key in keys], device=states.device)]


class DialogueData:
    """One processed split: memory-mapped rows plus the lengths needed to bucket them."""

    def __init__(self, folder: str, split: str, ds=None):
        import datasets
        self.ds = ds if ds is not None else datasets.Dataset.from_file(os.path.join(folder, split, "data.arrow"))
        # straight from the Arrow columns: 8 bytes a window each, no Python list of the column
        self.n_turns, self.max_len, self.n_tokens = (self.ds.data.column(c).to_numpy().astype(np.int64)
                                                     for c in ("n_turns", "max_len", "n_tokens"))

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
