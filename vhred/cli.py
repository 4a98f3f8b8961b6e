"""What every command shares: one place that turns expected errors into one line and an exit code.

    @command
    def main(args): ...          # raise UserError subclasses; never print tracebacks for them

Exit codes: 2 for a user error (bad flag, config, data, checkpoint), 1 for an operating-system
error (disk full, permissions: the message names the file), 130 for Ctrl-C, 143 for SIGTERM.
"""
import argparse
import errno
import functools
import json
import math
import os
import re
import signal
import stat
import sys
import threading
import time
from contextlib import contextmanager

from . import cache
from .errors import InputError, UserError

INVOKED_AS = None   # "vhred chat" etc. while the `vhred` command (vhred/__main__.py) runs one


def program(module_form: str) -> str:
    """The name a command's --help shows: `vhred chat` when run as that, else `python -m ...`."""
    return INVOKED_AS or module_form


def text_lines(path: str) -> list[str]:
    """The lines of a UTF-8 text file a command reads; a missing, non-UTF-8, non-regular
    (/dev/zero) or too large file, or one with a line over MAX_LINE_BYTES, is one line."""
    from .limits import MAX_LINE_BYTES, readable_file
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
        if m and not cache._alive(int(m.group(1) or 0)):
            try:
                os.remove(os.path.join(folder, name))
            except OSError:
                pass


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt: the same clean stop, exit code 143."""


def sigterm_as_ctrl_c():
    """SIGTERM (kill, systemd, docker, timeout, a cancelled CI job) ends the command as Ctrl-C
    does: its finally blocks run, so temporary files go and the servers and child processes it
    started stop too. Returns the handler it replaced."""
    return signal.signal(signal.SIGTERM, _raise_terminated)


_stop_seen = False   # a SIGTERM, remembered: Python drops an exception raised inside __del__ or gc


def _raise_terminated(signum, frame):
    global _stop_seen
    _stop_seen = True
    raise Terminated


def check_stop() -> None:
    """Raise Terminated if a SIGTERM came whose exception was dropped (it landed in a __del__):
    called before an output is renamed into place and when a command ends."""
    if _stop_seen:
        raise Terminated


def interrupted_code(e: KeyboardInterrupt) -> int:
    """The shell's exit code for a stop by this signal: 130 for Ctrl-C, 143 for SIGTERM."""
    return 128 + (signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)


def say(message: str):
    """A last line on stderr. Under torchrun every process meets the same bad setting or file:
    the others wait before they print, and torchrun, which stops them all once one has failed,
    stops them first when process 0 failed too. One line, not one a process; and a line of
    theirs alone is still printed, marked with its rank."""
    rank = os.environ.get("RANK", "0") if "WORLD_SIZE" in os.environ else "0"   # torchrun sets both
    if rank != "0":
        if threading.current_thread() is threading.main_thread():   # torchrun's SIGTERM ends the wait unheard
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            time.sleep(2)   # torchrun looks at its processes every 0.1 s
        except KeyboardInterrupt:
            pass
        message = f"[rank {rank}] {message}"
    print(message, file=sys.stderr, flush=True)


class Parser(argparse.ArgumentParser):
    """argparse whose malformed flag is one error line, as every other user error, not its usage
    block first (a dozen lines for `vhred generate`): the line names where the flags are listed."""

    def error(self, message):
        fail(f"{self.prog}: {message} (`{self.prog} --help` lists the flags)")

    def parse_known_args(self, args=None, namespace=None):
        ns, extras = super().parse_known_args(args, namespace)
        if not hasattr(ns, "_vhred_parser"):   # a subcommand's parser ran first and named itself
            ns._vhred_parser = self
        return ns, extras

    def parse_args(self, args=None, namespace=None):
        """As argparse's, but a flag no parser knows is reported by the innermost one that ran
        (`vhred rate score`, whose --help lists its flags, not `vhred rate`)."""
        ns, extras = self.parse_known_args(args, namespace)
        parser = vars(ns).pop("_vhred_parser", self)
        if extras:
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        return ns


def fail(message: str, code: int = 2):
    message = message.replace("\0", "\\0")   # a NUL byte printed raw corrupts terminals and logs
    say(f"error: {message}")
    sys.exit(code)


def command(fn):
    """Wrap a command's main(argv) so expected errors end it with one line, never a traceback."""
    @functools.wraps(fn)
    def main(argv=None):
        from . import _interrupted_while_starting
        if signal.getsignal(signal.SIGINT) is _interrupted_while_starting:   # started: Ctrl-C is ours to handle
            signal.signal(signal.SIGINT, signal.default_int_handler)
        global _stop_seen
        main_thread = threading.current_thread() is threading.main_thread()   # where signals are handled
        before = sigterm_as_ctrl_c() if main_thread else None
        _stop_seen = False
        stdout = sys.stdout
        if main_thread and stdout is not None:
            sys.stdout = _NamedStdout(stdout)
        try:
            result = fn(argv)
            check_stop()
            _flush_stdout()
            return result
        except UserError as e:
            fail(str(e), 2)
        except BrokenPipeError:   # `vhred ... | head`: the reader left; nothing more to say
            _quiet_stdout()
            sys.exit(141)
        except OSError as e:   # disk full, permissions, a vanished file
            if e.filename == STDOUT:
                _quiet_stdout()   # what could not be written is dropped: the exit does not fail again
            fail(f"{e.strerror or e} ({e.filename or 'while reading or writing files'})", 1)
        except KeyboardInterrupt as e:
            say("interrupted")
            sys.exit(interrupted_code(e))
        finally:
            _stop_seen = False   # answered by this exit: a command called from Python next starts clean
            if isinstance(sys.stdout, _NamedStdout) and sys.stdout.file is stdout:
                sys.stdout = stdout
            if main_thread and before is not None:   # a command called from Python leaves the caller's handler as it was
                signal.signal(signal.SIGTERM, before)
    return main


STDOUT = "writing standard output"   # the file name an OSError on standard output carries


class _NamedStdout:
    """sys.stdout while a command runs: print() to a full disk raises an OSError that names no
    file, so a failed write or flush is given the name STDOUT; the rest is the file's own."""

    def __init__(self, file):
        self.file = file

    def write(self, text):
        return _named(self.file.write, text)

    def flush(self):
        return _named(self.file.flush)

    def __getattr__(self, name):   # fileno, isatty, encoding...
        return getattr(self.file, name)


def _named(call, *args):
    try:
        return call(*args)
    except BrokenPipeError:
        raise
    except OSError as e:
        if e.filename is not None:
            raise
        raise OSError(e.errno, e.strerror, STDOUT) from e


def _flush_stdout():
    """Output still buffered (stdout a file) fails here, as one line, not at Python's exit: a full
    disk says so, and what could not be written is dropped, so the exit does not fail again."""
    if sys.stdout is None:   # started with stdout closed (`>&-`): print writes nothing, nor does this
        return
    _named(sys.stdout.flush)


def _quiet_stdout():
    """After a broken pipe, point stdout at /dev/null so Python's exit flush does not fail again."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass
