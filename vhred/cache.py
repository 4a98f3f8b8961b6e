"""The processed-data cache's housekeeping (for vhred/dataset.py): the checksums that catch a
cache whose files changed after it was built, and the removal of half-built folders that killed
preparations leave behind.

A cache's meta.json holds the SHA-256 of each of its files and of its own other entries, written
when it is built and checked each time it is reused: flipped bytes in an Arrow table, or an edited
vocab_size, would otherwise surface as an IndexError many steps into training, or not at all.
"""
import hashlib
import json
import os
import re
import shutil

from .files import alive


def file_sha256(path: str) -> str:
    """The SHA-256 of a file's bytes, read 1 MB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def digests(folder: str, files) -> dict:
    """SHA-256 of each file (a path inside folder): {path: hex digest}."""
    return {rel: file_sha256(os.path.join(folder, rel)) for rel in files}


def intact(folder: str, files, log=print) -> bool:
    """Do the files hold what they held when the cache was built? False, with a warning, means:
    build it again: a file changed, or meta.json is malformed, edited or from before its own
    checksum (anything in a cache that cannot be verified means a rebuild, never a traceback)."""
    meta_path = os.path.join(folder, "meta.json")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        now = digests(folder, files)
    except (OSError, ValueError, RecursionError) as e:   # a file gone, a meta.json that is no longer JSON
        log(f"warning: the cache {folder} is unreadable ({e}); preparing it again")
        return False
    why = malformed(meta)
    if why:
        log(f"warning: the cache {folder} has a malformed meta.json ({why}); preparing it again")
        return False
    if "meta_sha256" not in meta:   # from before meta.json was checksummed: it cannot be verified
        log(f"warning: the cache {folder} is from an older vhred (its meta.json has no checksum); preparing it again")
        return False
    changed = [rel for rel in files if meta.get("sha256", {}).get(rel) != now[rel]]
    if changed:
        log(f"warning: the cache {folder}: {', '.join(changed)} changed since it was built "
            "(disk corruption?); preparing it again")
    return not changed


def seal(meta: dict) -> dict:
    """meta with "meta_sha256": the SHA-256 of its own other entries, so an edited meta.json
    (vocab_size changed, a key removed) is caught like a changed table."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return {**body, "meta_sha256": hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()}


def malformed(meta) -> str:
    """Why meta (a parsed meta.json) cannot be used, or "": the entries training reads have
    their types and ranges, and its own checksum matches."""
    from .config import CAPS
    if not isinstance(meta, dict):
        return "not a JSON object"
    if not isinstance(meta.get("sha256", {}), dict) or not isinstance(meta.get("source"), str):
        return "sha256 or source missing or of the wrong kind"
    vocab = meta.get("vocab_size")
    if not isinstance(vocab, int) or isinstance(vocab, bool) or not 16 <= vocab <= CAPS["vocab_size"]:
        return f"vocab_size {str(vocab)[:20]} is not an integer between 16 and {CAPS['vocab_size']}"
    if "meta_sha256" in meta and seal(meta)["meta_sha256"] != meta["meta_sha256"]:
        return "its contents do not match its checksum"
    return ""


def remove_crashed(processed: str, stem: str = ""):
    """Remove the half-built folders (<name>.tmp<pid>) of preparations whose process is gone;
    given a stem, only <stem>.tmp<pid> (a folder of the user's, where another name is theirs).
    A preparation on another machine sharing the folder would look gone too: preparing one
    data_dir from two machines at once is not supported."""
    if not os.path.isdir(processed):
        return
    pattern = rf"{re.escape(stem)}\.tmp(\d+)" if stem else r".+\.tmp(\d*)"
    for name in os.listdir(processed):
        m = re.fullmatch(pattern, name)
        if m and not alive(int(m.group(1) or 0)):
            shutil.rmtree(os.path.join(processed, name), ignore_errors=True)
