"""Text in and out of the model: a user's turns encoded as the corpus writes them, and a reply
written as people write it (words joined, contractions whole, the corpus's quote marks, initialisms
and emoticons put back), cut replies marked.
"""
import re

from .metrics.surface import unglue
from .metrics.text import CJK
from .sources import normalise, spaced, valid_text   # text in: written as the corpus writes it

CUT = " …"   # appended to a response shown cut at the length limit


# --- text out --------------------------------------------------------------------------------
# DailyDialog writes punctuation spaced off ("Hi , how are you ?", "$ 60"), contractions with a
# straight apostrophe joined ("I'm") and with a curly one spaced ("I ’ m": 1,605 times in the
# training split). A user's text is spaced so by sources.spaced; what the model writes is joined
# back by nltk's Treebank detokenizer, with the corpus's initialisms and quote marks first.

CONTRACTIONS = {"m", "s", "t", "re", "ve", "ll", "d"}


def _join_apostrophes(words: list[str]) -> list[str]:
    """The corpus's split contractions joined into words: I ' m -> I'm, I 'Ve -> I've, don ’ t ->
    don't (whole words: a quote mark joined to them later cannot hide them from the detokenizer)."""
    out = []
    for w in words:
        low = w.lower()   # I ’ Ve (766 times in the training split) -> I've
        if len(out) > 1 and out[-1] == "'" and low in CONTRACTIONS and out[-2][-1:].isalnum():
            out.pop()
            out[-1] += "'" + low
        elif out and w[:1] == "'" and low[1:] in CONTRACTIONS and out[-1][-1:].isalnum():
            out[-1] += low
        else:
            out.append(w)
    return out


INITIALISM = re.compile(r"(?<!\S)[A-Za-z] \.(?: [A-Za-z] \.)+(?: \.)?(?!\S)")   # U . S . ; a . m . .
MONEY = re.compile(r"([£€¥]) (?=\d)")   # the detokenizer joins $ 60 only
CENTS = re.compile(r"(\d,\d{3})\. (\d+)\b")   # 2,699 . 00, as the corpus and TweetTokenizer split it
CLOCK = re.compile(r"(?<![\d:])(\d{1,2}): (\d{2})(?![\d:])")   # 8 : 00, which the detokenizer leaves "8: 00"
TRAILING_DOTS = re.compile(r"(?<=\w) \.\.\.(?=[\s!?]|$)")   # "Wait ..." -> "Wait...", "OK ...!" -> "OK...!"
# quote marks joined to their words travel through the detokenizer as characters it leaves alone
QUOTE_STAND_IN = {'"': "\ue000", "'": "\ue001"}
QUOTES_BACK = str.maketrans({v: k for k, v in QUOTE_STAND_IN.items()})
FACE = "\ue002"   # an emoticon's place while the detokenizer works
# Chinese and Japanese are written without spaces, their marks full width; the model writes the
# marks NFKC made ASCII ("，" as ","), each spaced off as the corpus writes marks
CLOSING = "。、，！？；：」』）】》〉،؛؟"   # CJK marks and Arabic ones, written against the word before
OPENING = "「『（【《〈"
FULL_WIDTH = str.maketrans(",!?;:", "，！？；：")
MARK_AFTER_CJK = re.compile(rf"(?<=[{CJK}]) *([,!?;:])(?: (?=[{CJK}{OPENING}]))?")   # 包子 , 我们 -> 包子，我们
SPACE_BEFORE_CLOSING = re.compile(rf" +(?=[{CLOSING}])")
# between characters, after an opening mark, around the quotes, brackets and "..." NFKC made ASCII
SPACE_IN_CJK = re.compile(rf"(?<=[{CJK}{CLOSING}{OPENING}]) +(?=[{CJK}{OPENING}\"(])|(?<=[{OPENING}]) +"
                          rf"|(?<=[)\"]) +(?=[{CJK}])|(?<=\.\.\.) +(?=[{CJK}])")
EMOTICON = re.compile(r"[<>]?[:;=][-o*']?[()\[\]dDpP/\\{}@|]|<3")   # :) ;-( :P <3, eyes first (not "::", ");")


def _join_quotes(words: list[str]) -> list[str]:
    """Quote marks the corpus spaces off, joined to what they quote: " hello " -> "hello",
    ' New College ' -> 'New College', ' 90s -> '90s, o ' clock -> o'clock; nested ones too. A
    lone ' after a plural stays the possessive it is ("parents' house")."""
    out = []
    for w in words:
        if len(out) > 1 and out[-1] == "'" and out[-2].lower() == "o" and w.lower() == "clock":
            out[-2:] = [out[-2] + "'" + w]
        elif out and out[-1] == "'" and re.fullmatch(r"\d+s", w):   # a decade
            out[-1] = "'" + w
        else:
            out.append(w)
    pairs, opened = [], {}   # (opening, closing) positions; the open one of each mark
    for i, w in enumerate(out):
        if w not in QUOTE_STAND_IN:
            continue
        if w in opened and i > opened[w] + 1:
            pairs.append((opened.pop(w), i))
        elif w not in opened and out[i + 1:i + 2] and (out[i + 1][:1].isalnum() or out[i + 1] in QUOTE_STAND_IN) \
                and (w == '"' or not _possessive(out, i)):
            opened[w] = i
    gone = {i for pair in pairs for i in pair}
    before, after = [""] * len(out), [""] * len(out)   # stand-ins joined to each word, in order
    for o, c in sorted(pairs):
        before[next(j for j in range(o + 1, c) if j not in gone)] += QUOTE_STAND_IN[out[o]]
    for o, c in sorted(pairs, key=lambda p: p[1]):
        after[next(j for j in range(c - 1, o, -1) if j not in gone)] += QUOTE_STAND_IN[out[c]]
    return [b + w + a for i, (b, w, a) in enumerate(zip(before, out, after)) if i not in gone]


NOT_PLURALS = {"is", "was", "has", "does", "says", "as", "us", "this", "thus", "yes", "his", "its"}


def _possessive(words: list[str], i: int) -> bool:
    """words[i] is a ' after a plural ("parents ' house", "Teachers ' Day"), not a quote's opening
    ("says ' No '": a lower-case word, then a capital; "It is ' yes '": no plural)."""
    before, after = words[i - 1] if i else "", words[i + 1]
    return (before[-1:] in ("s", "S") and before.lower() not in NOT_PLURALS
            and not (before.islower() and after[:1].isupper()))


def pretty(text: str) -> str:
    """The model's corpus-style text made readable: "I ’ m fine , it costs $ 60 ." ->
    "I'm fine, it costs $60." (nltk's Treebank detokenizer); initialisms and quotes joined
    ("U . S ." -> "U.S.", \' New College \' -> 'New College'); a sentence mark the model glued to
    the next word gets its space ("25.How" -> "25. How", vhred/metrics/surface.py)."""
    from nltk.tokenize.treebank import TreebankWordDetokenizer
    text = re.sub("[\ue000-\ue002]", "", text)   # the stand-ins below are ours alone
    text = text.replace("’", "'").replace("“", '"').replace("”", '"')
    text = INITIALISM.sub(lambda m: m.group(0).replace(" ", "").replace("..", "."), text)
    words = _join_quotes(_join_apostrophes(unglue(text).split()))
    faces = [w for w in words if EMOTICON.fullmatch(w)]                      # :) stays a word: the
    words = [FACE if w in faces else w for w in words]                       # detokenizer glues its marks
    text = unglue(TreebankWordDetokenizer().detokenize(words))   # and what the joining glued ("ll,ll")
    text = TRAILING_DOTS.sub("...", CENTS.sub(r"\1.\2", MONEY.sub(r"\1", text))).translate(QUOTES_BACK)
    text = CLOCK.sub(r"\1:\2", text)
    text = close_up(text)   # before the faces are back: ":)" after a Chinese word is no mark
    for face in faces:
        text = text.replace(FACE, face, 1)
    return text[:1].upper() + text[1:]   # a turn starts with a capital (the corpus writes some in lower case)


def close_up(text: str) -> str:
    """Chinese and Japanese as they are written: no space between characters or around their
    marks, a mark after a character full width again ("我不喜欢包子 , 我们去吧 。" ->
    "我不喜欢包子，我们去吧。"); an Arabic mark against its word ("بخير ، شكرا" -> "بخير، شكرا")."""
    text = MARK_AFTER_CJK.sub(lambda m: m[1].translate(FULL_WIDTH), text)
    return SPACE_IN_CJK.sub("", SPACE_BEFORE_CLOSING.sub("", text))


def response_text(sp, ids: list[int], max_len: int, mark_cut: bool = True) -> str:
    """A response as a user reads it; one that reached the length limit ends in " …"."""
    text = pretty(sp.decode(ids))
    return text + CUT if mark_cut and len(ids) >= max_len else text


def uncut(reply: str) -> str:
    """A reply as the model wrote it: without the mark response_text shows where max_len cut it."""
    return reply[:-len(CUT)] if reply.endswith(CUT) else reply


def history_read(history: list[str]) -> list[str]:
    """A conversation's turns written as the corpus writes them (spaced), the model's own (every
    second one before the last, which is the turn answered) without a cut mark: a reply the chat
    page or an API caller passes back is read as the text shown, less the mark that is not its own."""
    last = len(history) - 1
    return [spaced(uncut(t) if (last - i) % 2 else t) for i, t in enumerate(history)]


def encode_turns(sp, turns: list[str], max_utt_len: int, max_context: int) -> list[list[int]]:
    """Utterance strings -> token ids, each cut to the model's length, the last max_context kept."""
    turns = [normalise(valid_text(t)) for t in turns][-max_context:]
    return [sp.encode(t)[:max_utt_len] for t in turns]
