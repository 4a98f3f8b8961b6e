"""The tokenisation every system is scored with, and the line files the metric commands read."""
import re

from ..errors import InputError


def tokenize(text: str) -> list[str]:
    """The one tokenisation every system is scored with: lower-cased words (apostrophes kept
    inside them, as in "don't") and single punctuation marks. "Hi, I'm fine." -> hi , i'm fine ."""
    return re.findall(r"\w+(?:'\w+)*|[^\w\s]", text.lower())


def read_lines(path: str) -> list[str]:
    """Lines of a UTF-8 text file, one sentence each; empty files and blank lines are errors."""
    from ..cli import text_lines
    lines = text_lines(path)
    if not lines:
        raise InputError(f"{path} is empty")
    blank = [i for i, line in enumerate(lines, 1) if not line.strip()]
    if blank:
        raise InputError(f"{path}: line {blank[0]} is blank ({len(blank)} blank lines); "
                         "every line must hold one sentence")
    return lines
