"""What every command shares: one place that turns expected errors into one line and an exit code.

    @command
    def main(args): ...          # raise UserError subclasses; never print tracebacks for them

Exit codes: 2 for a user error (bad flag, config, data, checkpoint), 1 for an operating-system
error (disk full, permissions: the message names the file), 130 for Ctrl-C.
"""
import functools
import sys

from .errors import InputError, UserError

INVOKED_AS = None   # "vhred chat" etc. while the `vhred` command (vhred/__main__.py) runs one


def program(module_form: str) -> str:
    """The name a command's --help shows: `vhred chat` when run as that, else `python -m ...`."""
    return INVOKED_AS or module_form


def text_lines(path: str) -> list[str]:
    """The lines of a UTF-8 text file a command reads; a missing or non-UTF-8 file is one line."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        raise InputError(f"{path} not found") from None
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text") from None


def fail(message: str, code: int = 2):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def command(fn):
    """Wrap a command's main(argv) so expected errors end it with one line, never a traceback."""
    @functools.wraps(fn)
    def main(argv=None):
        try:
            return fn(argv)
        except UserError as e:
            fail(str(e), 2)
        except OSError as e:   # disk full, permissions, a vanished file
            fail(f"{e.strerror or e} ({e.filename or 'while reading or writing files'})", 1)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
    return main
