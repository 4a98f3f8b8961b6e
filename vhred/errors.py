"""The one family of errors a user can cause and fix: each message says what to do.

Every command catches `UserError` in one place (`vhred.cli.command`) and prints it as one line,
so a new command cannot forget to; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the user's input, files or environment; str(e) says how to fix it."""


class ConfigError(UserError, ValueError):
    """A mistake in a config file or override."""


class DataError(UserError):
    """Missing, truncated or malformed data."""


class CheckpointError(UserError):
    """A missing, unreadable or mismatched checkpoint."""


class TrainingError(UserError):
    """Training cannot go on (a diverged loss)."""


class InputError(UserError, ValueError):
    """A file or value given to a command that it cannot use (contexts, metric inputs, flags)."""
