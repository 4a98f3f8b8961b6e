"""The files commands read and write: text in as lines, results out whole or not at all.

    with output_file("samples.jsonl") as f: ...     # renamed into place only once written whole
    write_bytes("tokenizer.model", data)             # the same for bytes made in one piece

A stop (Ctrl-C, SIGTERM), a full disk or a permission error never leaves half a file where a
whole one was: each output is written to <path>.tmp<pid> and renamed over path at the end.
"""
import errno
import json
import math
import os
import re
import stat
from contextlib import contextmanager

from .errors import InputError
from .limits import MAX_LINE_BYTES, readable_file
from .stops import check_stop


def text_lines(path: str) -> list[str]:
    """The lines of a UTF-8 text file a command reads; a missing, non-UTF-8, non-regular
    (/dev/zero) or too large file, or one with a line over MAX_LINE_BYTES, is one line."""
    readable_file(path)
    try:
        with open(path, encoding="utf-8-sig") as f:   # -sig: a byte-order mark (Notepad) is read past
            text = f.read()   # \r\n and \r read as \n
        # lines end at \n alone: str.splitlines() also splits at U+2028, U+0085 and others that
        # JSON holds raw inside a string (json_line writes them so)
        lines = text.split("\n")[:-1] if text.endswith("\n") else text.split("\n") if text else []
        for n, line in enumerate(lines, 1):
            if len(line.encode("utf-8")) > MAX_LINE_BYTES:
                raise InputError(f"{path}: line {n} is longer than {MAX_LINE_BYTES // 2 ** 20} MB")
        return lines
    except FileNotFoundError:
        raise InputError(f"{path} not found") from None
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text") from None


def json_safe(obj):
    """obj with every non-finite float as None (JSON has no NaN or Infinity: a bare NaN breaks
    every parser) and lone surrogates as U+FFFD (they cannot be written as UTF-8)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, str):
        return re.sub("[\ud800-\udfff]", "\ufffd", obj)
    if isinstance(obj, dict):
        return {json_safe(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def json_line(obj) -> str:
    """One line of JSON that any parser reads (see json_safe)."""
    return json.dumps(json_safe(obj), ensure_ascii=False, allow_nan=False)


@contextmanager
def output_file(path: str, encoding: str = "utf-8", together: list | None = None):
    """An output file written in place of path only when everything was written: a temporary
    <path>.tmp<pid> renamed over it at the end, removed on any error or Ctrl-C. A path that
    exists and is not a regular file (/dev/full, a FIFO, a folder) is refused before anything
    is written: renaming over it would replace the device with a file. together: the list of
    output_files(), which renames the file with the others of its set (alone, a set of one)."""
    if together is None:
        with output_files() as alone, output_file(path, encoding, alone) as f:
            yield f
        return
    check_output(path)
    _remove_stale(path)
    tmp, handed = f"{path}.tmp{os.getpid()}", False
    try:
        with open(tmp, "w", encoding=encoding) as f:   # an error names path, not its temporary (below)
            yield f
        together.append((tmp, path))
        handed = True   # output_files renames or removes it
    except OSError as e:
        raise named(e, path, tmp) from None
    finally:
        if not handed and os.path.exists(tmp):
            os.remove(tmp)


@contextmanager
def output_files():
    """Files that belong together (a report's samples, results and summary; a rating pack and its
    key), each written by output_file(..., together=<this>) and all renamed into place only once
    every one is whole: a stop or a full disk never leaves new ones beside old ones."""
    written = []
    try:
        yield written
        check_stop()
        for tmp, path in written:
            try:
                os.replace(tmp, path)
            except OSError as e:
                raise named(e, path, tmp) from None
    finally:
        for tmp, _ in written:
            if os.path.exists(tmp):
                os.remove(tmp)


def atomic(path: str, write_to) -> None:
    """path written whole or not at all: write_to(<path>.tmp<pid>) makes the file, which is then
    renamed over path; removed on any error, Ctrl-C or SIGTERM. An error names path."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        write_to(tmp)
        os.chmod(tmp, 0o666 & ~_umask())   # as open() would make it (safetensors writes 0600)
        check_stop()
        os.replace(tmp, path)
    except OSError as e:
        raise named(e, path, tmp) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes(path: str, data: bytes) -> None:
    """data in place of path, whole or not at all (see atomic)."""
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    atomic(path, write)


def save_table(table: dict, folder: str, name: str) -> str:
    """A JSON table a run's ranking reads (answers.json, kept.json), written into its folder whole."""
    path = os.path.join(folder, name)
    write_bytes(path, json.dumps(table, ensure_ascii=False, sort_keys=True).encode("utf-8"))
    return path


def load_table(run: str, name: str, well_formed, module: str, rebuild: str) -> dict | None:
    """The JSON table `name` beside a run's checkpoint (or in a model folder), None without one. One
    unreadable, or not as `module` writes it (well_formed(table) is False: anything else would fail
    mid-ranking), is a CheckpointError that says to rebuild it: `rebuild` with {folder} filled in."""
    from .errors import CheckpointError
    folder = run if os.path.isdir(run) else os.path.dirname(run)
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        return None
    again = "rebuild it with `" + rebuild.format(folder=folder) + "`"
    try:
        with open(path, encoding="utf-8") as f:
            table = json.load(f)
        ok = well_formed(table)
    except (OSError, ValueError, AttributeError, RecursionError) as e:   # RecursionError: "[[[[..." nested too deep
        raise CheckpointError(f"{path} is unreadable ({str(e)[:120]}): {again}") from None
    if not ok:
        raise CheckpointError(f"{path} is not a table of {module}: {again}")
    return table


def append_line(path: str, line: str) -> None:
    """line + "\n" at the end of path, whole or not at all: a write that fails part-way (a full
    disk) is cut off again, so the file never ends in half a row; the error names path."""
    data = (line + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        end = os.lseek(fd, 0, os.SEEK_END)
        try:
            done = 0
            while done < len(data):   # a write may take only part of it
                done += os.write(fd, data[done:])
        except BaseException as e:   # Ctrl-C between two parts too
            os.ftruncate(fd, end)
            raise named(e, path) if isinstance(e, OSError) else e from None
    finally:
        os.close(fd)


def named(e: OSError, path: str, tmp: str = "") -> OSError:
    """e naming path where it names no file (a full disk's error on write() names none, and "No
    space left on device" alone does not say what was lost) or names only path's temporary."""
    return e if e.filename and e.filename != tmp else OSError(e.errno, e.strerror or str(e), path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output(path: str) -> None:
    """Refuse an output path that exists and is not a regular file, or whose folder is missing."""
    if not path or path.endswith(os.sep):
        raise InputError(f"{path!r} is not a file name; give the path of a file to write")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise InputError(f"cannot write {path} ({e.strerror or e})") from None
    except ValueError:   # a NUL character in the path
        raise InputError(f"{path!r} is not a usable file name") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path} exists and is not a regular file; give the path of a file to write")
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise InputError(f"cannot write {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):   # found now, not after the work whose result it is
        raise OSError(errno.EACCES, os.strerror(errno.EACCES), path)


def _remove_stale(path: str):
    """Remove <path>.tmp<pid> files of writers that were killed (SIGKILL leaves no time to clean)."""
    folder, base = os.path.dirname(path) or ".", os.path.basename(path)
    for name in os.listdir(folder):
        m = re.fullmatch(re.escape(base) + r"\.tmp(\d*)", name)
        if m and not alive(int(m.group(1) or 0)):
            try:
                os.remove(os.path.join(folder, name))
            except OSError:
                pass


def alive(pid: int) -> bool:
    """Whether process pid still runs: a <name>.tmp<pid> of a process that is gone is stale."""
    if pid <= 0:   # an old-style ".tmp" folder names no process
        return False
    try:
        os.kill(pid, 0)   # signal 0 sends nothing: it only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:   # it exists, under another user
        pass
    return True
