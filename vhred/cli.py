"""What every command shares: one place that turns expected errors into one line and an exit code.

    @command
    def main(argv=None): ...     # raise UserError subclasses; never print tracebacks for them

Exit codes: 2 for a user error (bad flag, config, data, checkpoint), 1 for an operating-system
error (disk full, permissions: the message names the file), 130 for Ctrl-C, 143 for SIGTERM.
"""
import argparse
import functools
import os
import signal
import sys
import threading
import time

from .errors import UserError
from .stops import check_stop, forget_stop, interrupted_code, interrupted_while_starting, sigterm_as_ctrl_c

INVOKED_AS = None   # "vhred chat" etc. while the `vhred` command (vhred/__main__.py) runs one


def program(module_form: str) -> str:
    """The name a command's --help shows: `vhred chat` when run as that, else `python -m ...`."""
    return INVOKED_AS or module_form


PEER_LINE_WAIT = 2   # seconds a process other than torchrun's first waits before its last line (say)


def say(message: str):
    """A last line on stderr. Under torchrun every process meets the same bad setting or file:
    the others wait before they print, and torchrun, which stops them all once one has failed,
    stops them first when process 0 failed too. One line, not one a process; and a line of
    theirs alone is still printed, marked with its rank."""
    rank = os.environ.get("RANK", "0") if "WORLD_SIZE" in os.environ else "0"   # torchrun sets both
    if rank != "0":
        _wait_for_torchrun(PEER_LINE_WAIT)   # torchrun looks at its processes every 0.1 s
        message = f"[rank {rank}] {message}"
    print(message, file=sys.stderr, flush=True)


def outlast_peer():
    """Under torchrun, when another process ended first: give its last line (said after
    PEER_LINE_WAIT) time to be printed before this one ends, for torchrun then stops the rest,
    that one among them. Stopped meanwhile by torchrun, this one ends without a word."""
    _wait_for_torchrun(PEER_LINE_WAIT + 1)


def _wait_for_torchrun(seconds: float):
    """Sleep, ended unheard by torchrun's SIGTERM (it stops the others once one has ended)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        time.sleep(seconds)
    except KeyboardInterrupt:
        pass


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
        main_thread = threading.current_thread() is threading.main_thread()   # where signals are handled
        before, stdout = None, sys.stdout
        try:   # from here a Ctrl-C is this one line and 130, even one that lands while the handlers are set
            if signal.getsignal(signal.SIGINT) is interrupted_while_starting:   # started: Ctrl-C is ours to handle
                signal.signal(signal.SIGINT, signal.default_int_handler)
            before = sigterm_as_ctrl_c() if main_thread else None
            forget_stop()
            if main_thread and stdout is not None:
                sys.stdout = _NamedStdout(stdout)
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
            forget_stop()   # answered by this exit: a command called from Python next starts clean
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
