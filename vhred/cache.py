"""The processed-data cache's housekeeping (for vhred/dataset.py): the checksums that catch a
cache whose files changed after it was built, and the removal of half-built folders that killed
preparations leave behind.

A cache's meta.json holds the SHA-256 of each of its files, written when it is built and
checked each time it is reused: flipped bytes in an Arrow table would otherwise surface as an
IndexError many steps into training, or not at all.
"""
import hashlib
import json
import os
import re
import shutil


def digests(folder: str, files) -> dict:
    """SHA-256 of each file (a path inside folder), read 1 MB at a time: {path: hex digest}."""
    out = {}
    for rel in files:
        h = hashlib.sha256()
        with open(os.path.join(folder, rel), "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        out[rel] = h.hexdigest()
    return out


def intact(folder: str, files, log=print) -> bool:
    """Do the files hold what they held when the cache was built? False, with a warning, means:
    build it again. A cache from before the checksums gets them now (trusted once)."""
    meta_path = os.path.join(folder, "meta.json")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        now = digests(folder, files)
    except (OSError, ValueError) as e:   # a file gone, a meta.json that is no longer JSON
        log(f"warning: the cache {folder} is unreadable ({e}); preparing it again")
        return False
    if not isinstance(meta, dict) or not isinstance(meta.get("sha256", {}), dict):
        log(f"warning: the cache {folder} has a malformed meta.json; preparing it again")
        return False
    if "sha256" not in meta:
        _write_json(meta_path, {**meta, "sha256": now})
        return True
    changed = [rel for rel in files if meta["sha256"].get(rel) != now[rel]]
    if changed:
        log(f"warning: the cache {folder}: {', '.join(changed)} changed since it was built "
            "(disk corruption?); preparing it again")
    return not changed


def _write_json(path: str, obj):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)   # readers see the old file or the new one, never half of one


def remove_crashed(processed: str):
    """Remove the half-built folders (<name>.tmp<pid>) of preparations whose process is gone.
    A preparation on another machine sharing the folder would look gone too: preparing one
    data_dir from two machines at once is not supported."""
    if not os.path.isdir(processed):
        return
    for name in os.listdir(processed):
        m = re.fullmatch(r".+\.tmp(\d*)", name)
        if m and not _alive(int(m.group(1) or 0)):
            shutil.rmtree(os.path.join(processed, name), ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid <= 0:   # an old-style ".tmp" folder names no process
        return False
    try:
        os.kill(pid, 0)   # signal 0 sends nothing: it only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:   # it exists, under another user
        pass
    return True
