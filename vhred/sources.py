"""Where dialogues come from: the DailyDialog archive (local or downloaded) or a user's JSONL file.

Every source ends as three splits of dialogues; a dialogue is a list of utterance strings.
"""
import codecs
import hashlib
import http.client
import io
import json
import os
import re
import sys
import urllib.request
import zipfile
import zlib

DAILYDIALOG_URL = "http://yanran.li/files/ijcnlp_dailydialog.zip"
DAILYDIALOG_ARCHIVE = "ijcnlp_dailydialog.zip"
DAILYDIALOG_SIZES = {"train": 11118, "validation": 1000, "test": 1000}
# SHA-256 of the official split files (dialogues_<split>.txt, as released; the archive's own
# checksum is not stable across copies, these files are)
DAILYDIALOG_SHA256 = {
    "train": "71633bd5fdb0b09dd82215b131b56432cf7329a0fe50bc8adec168713d350d1a",
    "validation": "2ad64701fe3a4449e7a6ee7cdc6c2a71c80f77b8a34f708ac0532395f499081c",
    "test": "3c323651cdfb09f7b529f850eddf96a638fc6cc9b43330b77956ab248484a1a8",
}
SPLITS = ("train", "validation", "test")
STANDIN_MANIFEST = "standin.json"   # marks a small corpus in DailyDialog's layout (see standin_manifest)
MAX_MEMBER_BYTES = 64 << 20   # the largest DailyDialog file is 6 MB: a far larger one is not it


from .cache import file_sha256  # noqa: E402
from .errors import DataError  # noqa: E402  (missing, truncated or malformed data)
from .limits import MAX_LINE_BYTES  # noqa: E402


# Characters that show nothing and that str.split() does not take for white space: a turn of them
# alone is empty (SentencePiece reads them as nothing). Zero-width joiners (U+200C, U+200D) are
# left alone: they shape Persian and Indic words and emoji.
INVISIBLE = str.maketrans(dict.fromkeys([0x200B, 0x200E, 0x200F, 0x2060, 0xFEFF, *range(0x202A, 0x202F),
                                         *range(0x2066, 0x206A)], " "))


def normalise(text: str) -> str:
    """Collapse runs of white space (invisible marks count as space), trim the ends."""
    return " ".join(text.translate(INVISIBLE).split())


# DailyDialog writes punctuation spaced off ("Hi , how are you ?", "$ 60") and contractions with a
# straight apostrophe joined ("I'm": 4,009 times in the training split, "I ' m" 12 times). A
# user's text, typed or in a JSONL file, is split the same way by nltk's TweetTokenizer, so the
# tokenizer and the model read one writing wherever the text came from.

def valid_text(text: str) -> str:
    """Lone surrogates (undecodable bytes on stdin, "\\ud800" in JSON) as U+FFFD: SentencePiece
    takes valid Unicode only, and a user's odd bytes must not end the chat."""
    return re.sub("[\ud800-\udfff]", "\ufffd", text)


def spaced(text: str) -> str:
    """Text written as the corpus writes it: "I'm fine, it costs $60." ->
    "I'm fine , it costs $ 60 ." (typographic apostrophes made straight first; a time stays whole)."""
    from nltk.tokenize import TweetTokenizer
    text = valid_text(text).replace("’", "'")
    # a run of 4 or more of one mark is 3 to the tokenizer; done first by Python's re, since the
    # tokenizer's regex module runs out of memory on a run of millions
    text = LONG_RUN.sub(r"\1\1\1", text)
    try:
        words = TweetTokenizer().tokenize(text)
    except TimeoutError:   # its phone-number pattern gives up on a long run of digits (5 s)
        words = TweetTokenizer(match_phone_numbers=False).tokenize(text)
    out = SPLIT_SELECTOR.sub(r"\1", " ".join(words))
    # the tokenizer reads "8:" of "8:30" as an emoticon ("8: 30"); the corpus writes times whole
    return SPLIT_TIME.sub(lambda m: _whole_if_typed(m[0], text), out)


def _whole_if_typed(split: str, text: str) -> str:
    """A time the tokenizer split, whole again where the text wrote it whole."""
    whole = split.replace(" ", "")
    return whole if whole in text else split


LONG_RUN = re.compile(r"(\W|_)\1{3,}")   # nltk's HANG_RE, ([^\p{L}\p{N}])\1{3,}, in Python's re
SPLIT_TIME = re.compile(r"(?<![\d:])\d ?: ?\d\d(?!\d)")
SPLIT_SELECTOR = re.compile(" ([\ufe0e\ufe0f])")   # the tokenizer splits "❤️" into the heart and its emoji selector


# --- DailyDialog -------------------------------------------------------------------------------

def find_dailydialog(data_dir: str, url: str = DAILYDIALOG_URL, remembered: str = "") -> str:
    """The DailyDialog source to read, as an absolute path: $DAILYDIALOG_SRC, else `remembered`
    (where a checkpoint's training read it) while it exists, else data/raw/dailydialog/, else
    a download."""
    src = os.environ.get("DAILYDIALOG_SRC")
    if src:
        if not os.path.exists(src):
            raise DataError(f"DAILYDIALOG_SRC={src} does not exist: point it at {DAILYDIALOG_ARCHIVE} "
                            "or a folder holding it or its split files")
        return os.path.abspath(src)
    if remembered and os.path.exists(remembered):
        return remembered
    local = os.path.join(data_dir, "raw", "dailydialog")
    if os.path.isdir(local) and any(not name.endswith(".part") for name in os.listdir(local)):
        return os.path.abspath(local)   # a .part file alone is a download cut short: fetched again
    return os.path.abspath(download(url, os.path.join(local, DAILYDIALOG_ARCHIVE)))


def _makedirs(path: str) -> list[str]:
    """Create path and its missing parents; return the folders created, deepest first."""
    made, p = [], os.path.abspath(path)
    while not os.path.exists(p):
        made.append(p)
        p = os.path.dirname(p)
    os.makedirs(path, exist_ok=True)
    return made


def download(url: str, dest: str) -> str:
    """Fetch url to dest with a progress bar; the file appears only once complete, and a failed
    download leaves no folder behind that it created."""
    from tqdm import tqdm
    made = _makedirs(os.path.dirname(dest))
    tmp, whole = dest + ".part", False
    try:
        with urllib.request.urlopen(url, timeout=30) as resp, open(tmp, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {os.path.basename(dest)}") as bar:
                while chunk := resp.read(1 << 16):
                    out.write(chunk)
                    bar.update(len(chunk))
            if total and out.tell() != total:   # a connection closed early ends the reads as the end does
                raise OSError(f"the connection closed after {out.tell()} of {total} bytes")
        whole = True
    except (OSError, http.client.HTTPException) as e:   # URLError, timeouts, disk errors, a cut-short read
        raise DataError(f"could not download {url} ({getattr(e, 'reason', e)}); without internet, put "
                        f"{DAILYDIALOG_ARCHIVE} in {os.path.dirname(dest)}/ or set DAILYDIALOG_SRC=<path>") from None
    finally:
        if not whole:   # failed, or Ctrl-C: nothing left that a later run would take for the data
            _discard(tmp, made)
    os.replace(tmp, dest)
    return dest


def _discard(tmp: str, made: list[str]):
    """Remove a download's partial file and the folders it created (deepest first; one that is
    no longer empty stays)."""
    if os.path.exists(tmp):
        os.remove(tmp)
    for folder in made:
        try:
            os.rmdir(folder)
        except OSError:
            break


def _members(src):
    """(name, read) pairs of a zip archive or a folder, read() giving the bytes."""
    if isinstance(src, str) and os.path.isdir(src):
        for root, _, files in os.walk(src):
            for name in sorted(files):
                path = os.path.join(root, name)
                yield os.path.relpath(path, src), lambda p=path: open(p, "rb").read()
        return
    try:
        archive = zipfile.ZipFile(src)
        for name in archive.namelist():
            if name.startswith(("/", "\\")) or ".." in name.replace("\\", "/").split("/"):
                raise DataError(f"{_label(src)} holds an unsafe path ({name!r}); refusing to read it")
            yield name, lambda n=name: _read_member(archive, archive.getinfo(n), src)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{_label(src)} is not a readable zip archive ({e}); the download may be "
                        f"truncated: delete it and fetch {DAILYDIALOG_ARCHIVE} again") from None


def _read_member(archive, info, src) -> bytes:
    """A member's bytes, its size checked in the zip directory first (a small archive can hold a
    huge member), and read no further than the limit in case the directory lies."""
    too_big = DataError(f"{_label(src)}: {info.filename} unpacks to more than {MAX_MEMBER_BYTES >> 20} MB; "
                        "DailyDialog's files are far smaller, so this is not the DailyDialog archive")
    if info.file_size > MAX_MEMBER_BYTES:
        raise too_big
    try:
        with archive.open(info) as f:
            data = f.read(MAX_MEMBER_BYTES + 1)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{_label(src)}: {info.filename} is damaged ({e}); fetch {DAILYDIALOG_ARCHIVE} again") from None
    if len(data) > MAX_MEMBER_BYTES:
        raise too_big
    return data


def _label(src) -> str:
    """The path a message names: a file's or folder's, or a nested archive's within it."""
    return src if isinstance(src, str) else getattr(src, "name", "an archive inside the DailyDialog zip")


def _split_bytes(src, depth: int = 0, kind: str = "") -> dict:
    """Find dialogues<kind>_<split>.txt for each split (kind "" for the text, "_act" for the
    dialogue acts), looking inside nested zips as the official archive has them."""
    found, nested = {}, []
    for name, read in _members(src):
        base = os.path.basename(name)
        for split in SPLITS:
            if base == f"dialogues{kind}_{split}.txt":
                found[split] = read()
            elif base in (f"{split}.zip", DAILYDIALOG_ARCHIVE):
                nested.append((name, read))
    if len(found) < len(SPLITS) and depth < 2:
        for name, read in nested:
            inner = io.BytesIO(read())
            inner.name = os.path.join(_label(src), name)   # a damaged one is named in the message
            for split, data in _split_bytes(inner, depth + 1, kind).items():
                found.setdefault(split, data)
    return found


def parse_dailydialog_text(data: bytes, split: str) -> list[list[str]]:
    """One dialogue per line, utterances ending with __eou__."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"dialogues_{split}.txt is not UTF-8 text (byte {e.start}), so not the official "
                        f"DailyDialog file: fetch {DAILYDIALOG_ARCHIVE} again, or bring edited dialogues as "
                        "JSONL (docs/data.md)") from None
    dialogues = []
    for line in text.splitlines():
        utts = [normalise(u) for u in line.split("__eou__")]
        utts = [u for u in utts if u]
        if utts:
            dialogues.append(utts)
    return dialogues


def standin_manifest(src) -> dict | None:
    """The STANDIN_MANIFEST at the top of an archive or folder (beside its split folders), or None.

    A stand-in corpus in DailyDialog's layout (the tests' own, tests/fixtures/standin-corpus/)
    says so in this file and gives its own split sizes and checksums, which are then checked
    instead of the official ones: the checks stay, against the figures of the corpus at hand.
    """
    for name, read in _members(src):
        parts = name.replace("\\", "/").split("/")
        if parts[-1] == STANDIN_MANIFEST and len(parts) <= 2:
            try:
                manifest = json.loads(read())
                sizes, digests = manifest["sizes"], manifest["sha256"]
                if set(sizes) != set(SPLITS) or set(digests) != set(SPLITS):
                    raise ValueError("sizes and sha256 must name train, validation and test")
            except (ValueError, KeyError, TypeError) as e:
                raise DataError(f"{_label(src)}: {name} is not a stand-in manifest ({e}); "
                                "rewrite it with tests/fixtures/make_corpus.py or remove it") from None
            return manifest
    return None


def read_dailydialog(src: str) -> dict:
    """The official splits of DailyDialog from an archive or folder, with their sizes and
    checksums checked (a stand-in corpus's against its own manifest)."""
    raw = _split_bytes(src)
    missing = [s for s in SPLITS if s not in raw]
    if missing:
        raise DataError(f"{src} does not hold DailyDialog's {', '.join(missing)} split "
                        f"(expected {DAILYDIALOG_ARCHIVE} or dialogues_<split>.txt files)")
    splits = {s: parse_dailydialog_text(raw[s], s) for s in SPLITS}
    manifest = standin_manifest(src)
    sizes, digests = (manifest["sizes"], manifest["sha256"]) if manifest else (DAILYDIALOG_SIZES, DAILYDIALOG_SHA256)
    held = f"its {STANDIN_MANIFEST} says" if manifest else "DailyDialog has"
    release = f"the stand-in's {STANDIN_MANIFEST}" if manifest else "the official DailyDialog release"
    for s, want in sizes.items():
        if len(splits[s]) != want:
            raise DataError(f"{src}: {s} split has {len(splits[s])} dialogues, {held} {want}; "
                            "the archive is truncated or not DailyDialog")
    for s, digest in digests.items():
        if hashlib.sha256(raw[s]).hexdigest() != digest:
            raise DataError(f"{src}: dialogues_{s}.txt differs from {release} "
                            "(checksum); fetch the official archive, or bring changed data as JSONL")
    return splits


def read_dailydialog_acts(src: str, split: str) -> list[list[int]]:
    """DailyDialog's dialogue act of every utterance of a split (1 inform, 2 question,
    3 directive, 4 commissive), one list per dialogue, aligned with read_dailydialog's."""
    raw = _split_bytes(src, kind="_act").get(split)
    if raw is None:
        raise DataError(f"{src} has no dialogues_act_{split}.txt (the official archive has one per split)")
    return [[int(a) for a in line.split()] for line in raw.decode("ascii", "replace").splitlines() if line.strip()]


# --- a user's JSONL ----------------------------------------------------------------------------

def _hash_split(seed: int, lineno: int) -> str:
    """A seeded 90/5/5 split that needs no pass over the whole file."""
    h = int.from_bytes(hashlib.blake2b(f"{seed}:{lineno}".encode(), digest_size=8).digest(), "big")
    r = h / 2 ** 64
    return "train" if r < 0.9 else "validation" if r < 0.95 else "test"


_SURROGATE = re.compile("[\ud800-\udfff]")


def _parse_jsonl_line(line: str):
    """(dialogue, split or None), or raise ValueError saying what is wrong."""
    try:
        obj = json.loads(line.rstrip("\r\n"))
    except RecursionError:   # [[[[...]]]] nested deeper than Python's parser goes
        raise ValueError("JSON nested too deeply") from None
    except json.JSONDecodeError as e:   # the column within this line: its "line 1" says nothing
        raise ValueError(f"not valid JSON: {e.msg.split(' starting at')[0]} at column {e.colno}") from None
    if isinstance(obj, dict) and "dialog" not in obj and "messages" in obj:
        obj = {**obj, "dialog": _turns_of_messages(obj["messages"])}
    if not isinstance(obj, dict) or "dialog" not in obj:
        raise ValueError('expected an object with a "dialog" list (or a "messages" list of {"role", "content"})')
    dialog = obj["dialog"]
    if not isinstance(dialog, list) or not all(isinstance(u, str) for u in dialog):
        raise ValueError('"dialog" must be a list of strings')
    if any(_SURROGATE.search(u) for u in dialog):   # "\ud800" is valid JSON but no text
        raise ValueError('an utterance holds a lone surrogate (such as "\\ud800"), which is not Unicode text')
    split = obj.get("split")
    if split is not None and split not in SPLITS:
        raise ValueError(f'"split" must be one of {", ".join(SPLITS)}, got {split!r}')
    return [u for u in (spaced(normalise(u)) for u in dialog) if u], split   # as chat will read it


NOT_SPOKEN = {"system", "developer", "tool", "function", "ipython"}   # prompts and tool output, no one's turn


def _turns_of_messages(messages) -> list[str]:
    """The chat format of fine-tuning files and Hugging Face chat datasets, [{"role": "user",
    "content": "Hi"}, {"role": "assistant", ...}], as turns: system prompts, tool calls and tool
    output left out, content given as parts read as its text parts, and a speaker's messages in a
    row joined into one turn (a dialogue is two people taking turns)."""
    if not isinstance(messages, list):
        raise ValueError('"messages" must be a list of {"role": ..., "content": "text"} objects')
    turns, last_role = [], None
    for i, m in enumerate(messages, 1):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ValueError(f'message {i} of "messages" has no "role" string')
        if m["role"] in NOT_SPOKEN:
            continue
        text = _message_text(m.get("content"), i)
        if not text.strip():   # an assistant's tool call has no text
            continue
        if m["role"] == last_role:
            turns[-1] += " " + text
        else:
            turns.append(text)
        last_role = m["role"]
    return turns


def _message_text(content, i: int) -> str:
    """A message's text: a string, or the "text" of a list of parts ({"type": "text", "text": ...})."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        return " ".join(p["text"] for p in content if p.get("type") == "text" and isinstance(p.get("text"), str))
    raise ValueError(f'message {i} of "messages": "content" must be text or a list of {{"type": "text", "text": ...}} parts')


def iter_jsonl(path: str, seed: int, report=None, marked=None):
    """Yield (split, dialogue) from a JSONL file, streaming; bad lines go to report(lineno, why),
    and marked (a set), when given, collects the splits that lines name themselves."""
    for lineno, raw in enumerate(_bounded_lines(path), 1):
        if raw is not None:
            raw = raw.removeprefix(codecs.BOM_UTF8)   # Notepad's BOM: the first line's, or a pasted file's
        if raw is None or not raw.strip():
            if raw is None and report:
                report(lineno, f"longer than {MAX_LINE_BYTES // 2 ** 20} MB")
            continue
        try:
            dialog, split = _parse_jsonl_line(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            if report:
                report(lineno, str(e).splitlines()[0][:120])
            continue
        if len(dialog) < 2:
            if report:
                report(lineno, "fewer than two non-empty utterances")
            continue
        if split and marked is not None:
            marked.add(split)
        yield split or _hash_split(seed, lineno), dialog


def _bounded_lines(path: str):
    """The lines of a file as bytes, each read with at most MAX_LINE_BYTES in memory: a longer
    line is skipped (None in its place), so one 200 MB line cannot take gigabytes."""
    with open(path, "rb") as f:
        while line := f.readline(MAX_LINE_BYTES + 1):
            if len(line) <= MAX_LINE_BYTES or line.endswith(b"\n"):
                yield line
                continue
            while (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass   # the rest of the long line, a megabyte at a time
            yield None


def no_data_file(path: str) -> DataError:
    """The error for a data= that is no file: missing, or a folder."""
    what = "is a folder" if os.path.isdir(path) else "not found"
    return DataError(f"data file {path} {what} (give data=dailydialog or a path to a .jsonl file)")


def _split_hint(counts: dict, marked: set, skipped: int) -> str:
    """What to do when the train or validation split of a JSONL file came out empty."""
    if not any(counts.values()):
        return ("no line held a dialogue; see the skipped lines above" if skipped else
                'the file holds no dialogues: write one JSON object a line, {"dialog": ["turn", "reply", ...]}')
    empty = "train" if counts["train"] == 0 else "validation"
    n = sum(counts.values())
    if not marked:   # every split came from the seeded 90/5/5 rule
        return (f"the seeded 90/5/5 split of {n} dialogue{'' if n == 1 else 's'} put none in {empty}: add dialogues "
                f'(a few hundred fill every split) or mark some lines "split": "{empty}"')
    return (f'mark some lines "split": "{empty}", or leave "split" out of every line for a seeded 90/5/5 split')


def scan_jsonl(path: str, seed: int) -> dict:
    """Count dialogues per split and report malformed lines, before anything is built."""
    if not os.path.isfile(path):
        raise no_data_file(path)
    with open(path, "rb") as f:
        head = f.read(4096)
    if head[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in head:   # UTF-16 with or without its BOM: NULs
        raise DataError(f"{path} is UTF-16 text (or holds NUL bytes): save it as UTF-8 (one JSON object a line)")
    bad, skipped = [], 0   # the first ten bad lines are shown; the rest only counted
    counts, marked = dict.fromkeys(SPLITS, 0), set()

    def report(lineno, why):
        nonlocal skipped
        skipped += 1
        if len(bad) < 10:
            bad.append((lineno, why))

    for split, _ in iter_jsonl(path, seed, report=report, marked=marked):
        counts[split] += 1
    for lineno, why in bad:
        print(f"{path}: line {lineno}: skipped: {why}", file=sys.stderr)
    if skipped > 10:
        print(f"{path}: ... and {skipped - 10} more skipped lines", file=sys.stderr)
    if counts["train"] == 0 or counts["validation"] == 0:
        lines = f"{skipped} line{'' if skipped == 1 else 's'}"
        raise DataError(f"{path}: need dialogues in the train and validation splits, found {counts} "
                        f"({lines} skipped): {_split_hint(counts, marked, skipped)}")
    return {"dialogues": counts, "skipped_lines": skipped}


def split_dialogues(cfg, split: str, trained: bool = True) -> list[list[str]]:
    """The dialogues of a split of the checkpoint's own data source, as training split it
    (trained=False: of a config's data, which no model read: vhred nearest)."""
    if cfg.data == "dailydialog":
        src = find_dailydialog(cfg.data_dir, remembered=cfg.data_source)   # as training found it
        dialogues = read_dailydialog(src)[split]
    else:
        src = trained_jsonl(cfg) if trained else cfg.data
        if not trained and not os.path.isfile(src):
            raise no_data_file(src)
        dialogues = [d for s, d in iter_jsonl(src, cfg.seed) if s == split]
    dialogues = [d for d in dialogues if len(d) > 1]
    if not dialogues:
        other = "--split validation" if split == "test" else "a file with dialogues in every split"
        raise DataError(f"{src} holds no {split} dialogues of two turns or more: use {other}, "
                        f'or give some lines "split": "{split}"' + (" and train again" if trained else ""))
    return dialogues[:cfg.max_dialogues] if cfg.max_dialogues else dialogues


_CHECKED: dict = {}   # (path, size, mtime) -> its SHA-256: one read per file and process


def trained_jsonl(cfg) -> str:
    """The JSONL file the checkpoint trained on: where training read it (data_source), else data=
    from here; refused when its bytes differ from training's, since the seeded 90/5/5 split follows
    line numbers and an edited file would score training dialogues as held-out ones."""
    here = os.path.basename(cfg.data)   # moved beside the user: found by its name, and checked below
    path = next((p for p in (cfg.data_source, cfg.data, here if cfg.data_sha256 else "") if p and os.path.isfile(p)), "")
    if not path:
        where = (f"a folder that holds {here}" if os.path.isabs(cfg.data) or cfg.data == here else
                 f"the folder where data={cfg.data} names it, or from one that holds {here}")
        raise DataError(f"{cfg.data_source or cfg.data}, the file this model trained on, is not here: put it "
                        f"back, or run from {where}")
    if cfg.data_sha256:   # checkpoints from before it was recorded are taken as they are
        st = os.stat(path)
        key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
        if key not in _CHECKED:
            _CHECKED[key] = file_sha256(path)
        if _CHECKED[key] != cfg.data_sha256:
            raise DataError(f"{path} is not the file this model trained on (it changed since: its SHA-256 "
                                    "differs), and its split would now mix training dialogues into the held-out "
                                    "ones; restore the file as it was, or train again on it")
    return path
