"""Stock replies: turns a corpus says whole again and again ("Thank you.", "OK.", "I see.",
"Sure."), counted without a reader beside blind rating (vhred/rate.py).

A stock reply fits after almost any turn, so readers who keep every fluent reply that fits keep
most of them, and a ranking trained on their labels learns to show them. A share kept can then
rise while the replies say less and less. The stock share tells that apart: the share of replies
whose words are those of a turn said whole at least MIN_COUNT times in the training text (on
DailyDialog's 87,171 training turns, 158 such turns, 5.2% of the training turns and 5.5% of the
validation split's). Words are the non-word check's (surface.words): "OK." and "ok!" are one turn,
"Yes, of course." is "yes of course". A reply without a letter ("$10.", "7:30.") is never stock.
"""
from collections import Counter

from .surface import words

MIN_COUNT = 10   # said whole this often in the training text: a stock turn


def turn_key(text: str) -> str:
    """The words of a turn, as stock turns are matched: "OK." and "ok !" are the same."""
    return " ".join(words(text))


def stock_turns(utterances, min_count: int | None = None) -> frozenset:
    """The keys of the turns said whole at least min_count (MIN_COUNT) times among utterances."""
    counts = Counter(turn_key(u) for u in utterances)
    return frozenset(k for k, n in counts.items() if n >= (min_count or MIN_COUNT) and k)


def is_stock(text: str, stock: frozenset) -> bool:
    return turn_key(text) in stock


def stock_metrics(replies: list[str], stock: frozenset | None) -> dict:
    """{"stock_share": share of replies that are stock turns (only with the stock turns),
    "words_per_reply": mean words of a reply, split at spaces as shown ("$150." is one)}; {} for
    no replies."""
    if not replies:
        return {}
    out = {"words_per_reply": sum(len(r.split()) for r in replies) / len(replies)}
    if stock is not None:
        out["stock_share"] = sum(is_stock(r, stock) for r in replies) / len(replies)
    return out
