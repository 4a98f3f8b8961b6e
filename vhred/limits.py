"""The caps on every count a user can give: one table, read by the flags, the API and the server.

Each cap is sized to a machine with 2 CPU cores and a few GB of memory (and is far above what
the recipes use): the largest value allowed must run in bounded memory, and anything above it is
refused when the flags or the request are read, in one line, before a model is loaded. The
table with its reasons is docs/limits.md.
"""
import math
import os
import stat

from .errors import InputError

# decoding (flags of chat/generate/eval/serve, Bot.respond, POST /respond)
MAX_SAMPLES = 1000        # responses per context (the chat draws 16N by default to pick N distinct ones)
MAX_LEN = 1000            # tokens per response (min_len too)
MAX_BEAM = 100            # beam width
MAX_BEAM_ROWS = 2000      # samples x beam width; a search decodes draws (up to MAX_DRAWS, 16) x that many rows
MAX_TOP_K = 1_000_000     # top-k (clipped to the vocabulary anyway)
# evaluation and the latent variable
MAX_IW_SAMPLES = 1000     # K of the importance-weighted bound (eval, rank)
MAX_STEPS = 1000          # points of `latent interpolate` / Bot.interpolate
MAX_AROUND_MEAN = 100.0   # --around-mean K (sigmas from the prior mean)
MAX_DIALOGUES = 100_000   # `latent plot --dialogues`
MAX_Z = 1000.0            # |each element| of a given z (a prior sample is within a few units)
# inputs read whole
MAX_INPUT_BYTES = 64 * 2 ** 20    # a contexts or metric-lines file (read whole)
MAX_LINE_BYTES = 16 * 2 ** 20     # one line of a JSONL file (contexts or training dialogues)
MAX_CONFIG_BYTES = 2 ** 20        # a YAML config
MAX_YAML_DEPTH = 32               # nesting of a YAML config (ours nests 2 deep)


def count(name: str, value, low: int, high: int) -> int:
    """An integer between low and high, or one line saying which range it must be in."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InputError(f"{name} must be an integer, got {shown(value)}")
    if not low <= value <= high:
        raise InputError(f"{name} must be between {low:,} and {high:,}, got {shown(value)}")
    return value


def number(name: str, value, low: float, high: float) -> float:
    """A finite number between low and high (NaN and infinities refused)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and isinstance(value, int):
        ok = low <= value <= high   # exact for any int: a 400-digit one never becomes a float
    elif ok:
        ok = math.isfinite(value) and low <= value <= high
    if not ok:
        raise InputError(f"{name} must be a number between {low:g} and {high:g}, got {shown(value)}")
    return float(value)


def shown(value) -> str:
    """A value as an error line quotes it: its repr, cut at 40 characters (an int too long for
    repr is named by its digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 10_000:
        return f"an integer of about {int(value.bit_length() * math.log10(2)):,} digits"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def readable_file(path: str, max_bytes: int = MAX_INPUT_BYTES) -> int:
    """Check that path is a regular file of at most max_bytes before reading it: a device
    (/dev/zero), a FIFO or a huge file is refused in one line. Returns its size."""
    if not path:   # `--input ''`: "not found" would name no file
        raise InputError("a file name is empty; give the path of a file")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{path} not found") from None
    except ValueError:   # a NUL character in the path
        raise InputError(f"{path!r} is not a usable file name") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path} is not a regular file; give the path of a text file")
    if st.st_size > max_bytes:
        raise InputError(f"{path} is {st.st_size / 2 ** 20:.0f} MB; at most {max_bytes // 2 ** 20} MB is read "
                         "(split it into smaller files)")
    return st.st_size
