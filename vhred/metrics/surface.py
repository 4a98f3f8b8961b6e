"""Surface faults of replies a reader sees at once, counted without a reader (automatic proxies
of blind rating, vhred/rate.py):

  non-word   a reply holds a word never seen whole in the training text ("produceer",
             "thoughted", "Sriatchingta": a subword vocabulary can spell words that do not exist);
  glued      a reply glues a sentence mark to the next word ("25.How", "Mr.Wory", "$10.The");
  empty      a reply without a letter or digit ("", ".", " …");
  repeated   a reply repeats a fragment three times in a row ("C-in-in-in-in-int", "the the the");
  mangled    a mark doubled inside a token ("9::30", "5,,000"), a money sign on a clock time
             ("$12:00."), or a clock time no clock shows ("25:30", "9:75"): pieces of two formats
             spliced, which no one writes (the training split's 87,171 turns hold one such time,
             a score, "99:80"); or a reply that stops on a colon ("About 3:"), as one of those
             turns does.

Each is a share of replies (0..1). Words are runs of letters (any script's: "Zürich", "Москва"),
lower-cased, so "don't" is checked as "don" and "t", which the training text holds whichever way
it writes the apostrophe; in the scripts written without spaces (Chinese, Japanese kana) a
character is a word. Text is compared in its normal form (NFKC), the form the model writes.
"""
import re

from .text import CJK, normal

LETTER = rf"(?:(?![{CJK}])[^\W\d_])"   # a letter of a script that spaces its words
WORD = re.compile(rf"[{CJK}]|{LETTER}+")
# a word, contraction or number, a sentence mark or "...", a word: "25.How", "it.But", "I'm.So", "Hmm...yes",
# "Привет.Как"; not "a.m." (one letter before the mark), "3.5" (digits after it) or a web address ("Stars.com")
GLUED = re.compile(rf"(?<![\w.'])(?:{LETTER}{{2,}}|{LETTER}*'{LETTER}+|\d+)(?:\.\.\.|[.!?,;:])({LETTER}+)")
# the endings of web addresses, less those that are English words ("it", "me", "us", "to"...),
# which after a mark are more often a glued sentence
DOMAINS = {"com", "net", "org", "edu", "gov", "info", "biz", "html", "htm", "php", "cn", "uk", "de", "fr", "io",
           "ai", "co", "ca", "au", "jp", "ru", "es", "nl", "eu", "ch", "tv", "app", "dev"}
# www.amazon.com, Stars.com/x, jean.dupont@example.xyz, https://shop.example.xyz/a; an ending in
# capitals is a glued sentence ("it.TV wastes time", "prettier.Co"), an address only after www.
ADDRESS = re.compile(r"\S*\.(?:" + "|".join(sorted(DOMAINS)) + r")\b|\S@\S|://|\b(?i:www)\.")
ABBREVIATIONS = {"ph.d"}   # written with a mark inside: "Ph.D student"
FRAGMENT = re.compile(r"(\S{2,}?)\1{2,}")                       # in-in-in-, hahaha
# the the the, I am I am I am, music) music) music): words with the marks glued to them
WORDS_AGAIN = re.compile(r"\b(\w+[^\w\s]*(?: \w+[^\w\s]*){0,3}) \1 \1(?!\w)")
# "9::30", "5,,000", "$$10" (not "..." nor "?!"), a price written as a time, "$12:00", and an
# hour past 24 or minutes past 59, "25:30", "9:75"; and a colon the reply stops on, "About 3:"
MANGLED = re.compile(r"(?<=\w)([:;,])\1+(?=\w)|([$£€])\2+(?=\d)|([()\[\]{}])\3{2,}|[$£€¥]\d{1,2}:\d{2}\b"
                     r"|(?<![\d:.])(?:2[5-9]|[3-9]\d):\d{2}(?![\d:])|(?<![\d:.])\d{1,2}:[6-9]\d(?![\d:])"
                     r"|:\s*$")


def words(text: str) -> list[str]:
    """The words of a text as the lexicon holds them: runs of letters, lower-cased."""
    return WORD.findall(normal(text).lower())


def lexicon(utterances) -> frozenset:
    """Every word seen whole in an iterable of (training) utterances."""
    return frozenset(w for u in utterances for w in words(u))


def non_words(text: str, known: frozenset) -> list[str]:
    """The words of text that the lexicon has never seen."""
    return [w for w in words(text) if w not in known]


def _is_glued(m: re.Match) -> bool:
    """A GLUED match that is no web address ("www.amazon.com") or abbreviation ("Ph.D")."""
    if m.group(0).lower() in ABBREVIATIONS:
        return False
    start = m.string.rfind(" ", 0, m.start()) + 1   # the whole token the match lies in
    end = m.string.find(" ", m.end())
    return not ADDRESS.search(m.string[start:end if end >= 0 else len(m.string)])


def glued(text: str) -> list[str]:
    """The places where a sentence mark is glued to the next word, e.g. ["25.How"]."""
    return [m.group(0) for m in GLUED.finditer(text) if _is_glued(m)]


def unglue(text: str) -> str:
    """A space after every glued sentence mark, as the corpus writes it: "25.How" -> "25. How".
    Again until none is left: a match takes the word after its mark, which may be glued in turn
    ("OK...OK...Anyway")."""
    while True:
        spaced = GLUED.sub(lambda m: m.group(0)[:m.start(1) - m.start(0)] + " " + m.group(1) if _is_glued(m)
                           else m.group(0), text)
        if spaced == text:
            return text
        text = spaced


def empty(text: str) -> bool:
    return not re.search(r"[^\W_]", text)


def repeated(text: str) -> bool:
    """A fragment said three times in a row: within a word ("in-in-in-") or as words."""
    frag = FRAGMENT.search(text)
    return bool(frag and re.search(r"[A-Za-z]", frag.group(1))) or bool(WORDS_AGAIN.search(text.lower()))


def faults(text: str, known: frozenset | None) -> dict:
    """Which faults one reply has: {"non_word", "glued", "empty", "repeated", "mangled"} -> bool
    (no "non_word" without a lexicon)."""
    out = {"glued": bool(glued(text)), "empty": empty(text), "repeated": repeated(text),
           "mangled": bool(MANGLED.search(text))}
    if known is not None:
        out["non_word"] = bool(non_words(text, known))
    return out


def clean(text: str, known: frozenset | None) -> bool:
    """No fault at all: a reply worth showing."""
    return not any(faults(text, known).values())


def surface_metrics(replies: list[str], known: frozenset | None) -> dict:
    """The share of replies with each fault, and with any: {"non_word_share": ..., ...}."""
    if not replies:
        return {}
    rows = [faults(r, known) for r in replies]
    out = {f"{k}_share": sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    out["any_fault_share"] = sum(any(r.values()) for r in rows) / len(rows)
    return out
