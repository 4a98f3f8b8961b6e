"""A stop by signal: SIGTERM ends a command as Ctrl-C does, and a stop that landed where Python
drops exceptions (inside __del__) is remembered, so an output is never renamed into place after it.
"""
import signal


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
