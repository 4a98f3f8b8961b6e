"""The tokenisation every system is scored with, and the line files the metric commands read."""
import re
import unicodedata

from ..errors import InputError
from ..files import text_lines

# the scripts written without spaces between words (Chinese, Japanese kana): a character of them is
# a word to the metrics, as sacrebleu's zh tokenizer counts it, not the whole clause a run of them is
CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
TOKEN = re.compile(rf"[{CJK}]|(?:(?![{CJK}])\w)+(?:'(?:(?![{CJK}])\w)+)*|[^\w\s]")


def normal(text: str) -> str:
    """Text in the form the model reads and writes it: its SentencePiece normalises with NFKC
    (full-width "，" is ",", an accent typed as a combining mark is one letter), so a reference or
    a training word is compared in that form too. DailyDialog has no character NFKC changes."""
    return unicodedata.normalize("NFKC", text)


def tokenize(text: str) -> list[str]:
    """The one tokenisation every system is scored with: lower-cased words (apostrophes kept
    inside them, as in "don't"), single punctuation marks and single CJK characters, of the text
    in its normal form. "Hi, I'm fine." -> hi , i'm fine ."""
    return TOKEN.findall(normal(text).lower())


def read_lines(path: str) -> list[str]:
    """Lines of a UTF-8 text file, one sentence each; empty files and blank lines are errors."""
    lines = text_lines(path)
    if not lines:
        raise InputError(f"{path} is empty")
    blank = [i for i, line in enumerate(lines, 1) if not line.strip()]
    if blank:
        raise InputError(f"{path}: line {blank[0]} is blank ({len(blank)} blank lines); "
                         "every line must hold one sentence")
    return lines
