"""A stop by signal: SIGTERM ends a command as Ctrl-C does, and a stop that landed where Python
drops exceptions (inside __del__) is remembered, so an output is never renamed into place after it.
Before a command's own handling starts (while torch imports), a stop ends it at once, exit 130/143.
"""
import os
import signal
import sys


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


def forget_stop() -> None:
    """A command's stop was answered by its exit: the next command called from Python starts clean."""
    global _stop_seen
    _stop_seen = False


def interrupted_while_starting(signum, frame):
    """Ctrl-C or SIGTERM while a command imports its modules: nothing is written yet, and an
    exception raised inside torch's or numpy's import can abort the process (SIGABRT) or become
    an ImportError. Exit 130 or 143, as the command's own handling (vhred/cli.py) later."""
    if os.environ.get("RANK", "0") == "0":   # under torchrun every process gets the stop: one line
        print("interrupted", file=sys.stderr, flush=True)
    os._exit(128 + signum)


def catch_stops_while_starting():
    """Ctrl-C and SIGTERM end the process at once (interrupted_while_starting) until cli.command
    takes over; a handler the program set itself stays."""
    for sig, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
        if signal.getsignal(sig) is default:   # a program's own handler stays
            signal.signal(sig, interrupted_while_starting)
