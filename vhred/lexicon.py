"""The words of a run's training text: the lexicon of the non-word check (vhred/metrics/surface.py)
that drops candidates before they are shown and that `vhred eval` and `vhred rate` report; and its
stock turns (vhred/metrics/stock.py), which they report too.

Read from the data the checkpoint was trained on, once per process and data source; None when
that text is not on this machine (it is never downloaded for this: the check is then skipped).
"""
import os

from .errors import UserError
from .metrics.stock import stock_turns
from .metrics.surface import lexicon

_CACHE: dict = {}


def training_text(cfg) -> list[str] | None:
    """The utterances of the checkpoint's training split, or None when they are not here."""
    from .sources import split_dialogues
    try:
        if cfg.data == "dailydialog" and not (os.environ.get("DAILYDIALOG_SRC") or (
                cfg.data_source and os.path.exists(cfg.data_source)) or os.path.isdir(
                os.path.join(cfg.data_dir, "raw", "dailydialog"))):
            return None
        return [u for d in split_dialogues(cfg, "train") for u in d]
    except (UserError, OSError):
        return None


def training_lexicon(cfg) -> frozenset | None:
    """Every word seen whole in the checkpoint's training text, or None when it is not here."""
    return _from_training_text(cfg)[0]


def training_stock(cfg) -> frozenset | None:
    """The stock turns of the checkpoint's training text, or None when it is not here."""
    return _from_training_text(cfg)[1]


def _from_training_text(cfg) -> tuple:
    """(lexicon, stock turns) of the training text, read once per process and data source."""
    key = (cfg.data, cfg.data_source, cfg.data_dir, cfg.max_dialogues, os.environ.get("DAILYDIALOG_SRC"))
    if key not in _CACHE:
        text = training_text(cfg)
        _CACHE[key] = (None, None) if text is None else (lexicon(text), stock_turns(text))
    return _CACHE[key]
