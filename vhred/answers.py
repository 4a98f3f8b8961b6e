"""What an answer to a wh-question says: trigger pairs between the question's wh-phrase and the
words of the answers people gave in the training split.

    vhred answers --checkpoint runs/dailydialog-cpu-vhred     # writes answers.json there (vhred critic does too)

Blind readers keep a good reply first after only one wh-question in five ("What time shall we
call you?"), against two turns in three otherwise (docs/rating-rounds.md, "Where the targets are
missed"). The model's draws often hold the answer ("It's at 7:30."), but the critic and the MMI
score put "Fine." or a garbled reply above it. People's answers carry the question's type in
their words: "how long" is answered with minutes and weeks, "what time" with o'clock and 7:30,
"how much" with $ and yuan. A trigger pair (Lau, Rosenfeld and Roukos 1993) counts how much more
often a word appears in the answers to one wh-phrase than in replies at large:

    pmi(f, w) = log p(w in the reply | the last turn asks f) / p(w in a reply)

with p(w | f) smoothed toward p(w) by SMOOTH pseudo-answers. f is the wh-phrase ("how long"),
or the wh-word alone ("how") when the phrase was asked fewer than MIN_ASKED times. A reply's
answer score is the largest pmi of its words, and 0 when no word is typical of the answers or the
last turn holds no wh-question. A turn holds one wherever its question stands in the pieces the
model reads (its first max_utt_len; the ranking reads the context so): "What time is it?
I forgot my watch." does, though vhred.rate.turn_kind, which reads how a turn ends, calls it
"other" (30 of the 2,522 "other" turns of the rated contexts). The ranking adds it to a run's score
(candidates._scores: rank "critic" and "mmi", + DecodeOptions.answer_weight x the score). Words
are lowercased; numbers become <num>, clock times <time>. Rated blind on 240 new contexts ending
in a wh-question (twelve readers, docs/rating.md): a good first reply +4.2 [+0.4, +8.1] points.
"""
import collections
import math
import re

from .cli import command, Parser, program

from .errors import DataError
from .files import load_table, save_table
from .rate import ASKS_FOR, SUGGESTION, WH_WORDS, questions

FILE = "answers.json"
MIN_ASKED = 20     # a wh-phrase asked fewer times in the training split falls back to its wh-word
SMOOTH = 10        # pseudo-answers of p(w) added to each wh-phrase's counts
MIN_PAIR = 2       # a (phrase, word) pair seen fewer times is not kept


def answer_words(text: str) -> set[str]:
    """The reply's words as the pairs count them: lowercased, DailyDialog's "don ’ t" joined,
    numbers <num>, clock times <time>, "$" a word."""
    text = re.sub(r"\s*['\u2019]\s*", "'", text.lower())
    out = set()
    for w in re.findall(r"\$|\d+[:.]\d+|\d+|[a-z']+", text):
        out.add("<time>" if re.fullmatch(r"\d+:\d+", w) else "<num>" if w[0].isdigit() else w)
    return out


def wh_phrases(turn: str) -> tuple[str, str] | None:
    """(wh-word, wh-word and the word after it) of the last question of a turn that asks one
    ("how long will it take?" -> ("how", "how long")), or None."""
    for q in reversed(questions(turn.lower())):
        m = ASKS_FOR.search(q) if not SUGGESTION.search(q) else None
        if m:
            word = next(g for g in reversed(m.groups()) if g in WH_WORDS)
            after = re.findall(r"[a-z']+", q[m.end():])
            return word, f"{word} {after[0] if after else ''}".strip()
    return None


def build(pairs) -> dict:
    """The table from (context turns, reply) pairs: {"asked": {f: times}, "pmi": {f: {word: pmi}}},
    only the pairs above chance (pmi > 0) seen MIN_PAIR times or more."""
    replies, with_word = 0, collections.Counter()
    asked, together = collections.Counter(), collections.defaultdict(collections.Counter)
    for context, reply in pairs:
        words = answer_words(reply)
        replies += 1
        with_word.update(words)
        for f in set(wh_phrases(context[-1]) or ()):
            asked[f] += 1
            together[f].update(words)
    table = {}
    for f, n in asked.items():
        kept = {}
        for w, k in together[f].items():
            p = (with_word[w] + 1) / (replies + 2)
            value = math.log((k + SMOOTH * p) / (n + SMOOTH) / p)
            if k >= MIN_PAIR and value > 0:
                kept[w] = round(value, 4)
        table[f] = kept
    return {"asked": dict(asked), "pmi": table}


def typical(table: dict, turn: str) -> dict:
    """{word: pmi} of the answers to the wh-phrase a turn asks ({} when it asks none)."""
    phrases = wh_phrases(turn)
    if not phrases:
        return {}
    word, phrase = phrases
    return table["pmi"].get(phrase if table["asked"].get(phrase, 0) >= MIN_ASKED else word, {})


def score(table: dict, context: list[str], reply: str) -> float:
    """The reply's answer score: the largest pmi of its words for the wh-phrase the last turn asks,
    0 when it asks none or no word is typical of its answers."""
    return best(typical(table, context[-1]) if context else {}, reply)


def best(pmi: dict, reply: str) -> float:
    """The largest pmi of the reply's words (typical() of the turn it answers), 0 for none."""
    return max((pmi.get(w, 0.0) for w in answer_words(reply)), default=0.0) if pmi else 0.0


class Scorer:
    """A run's table with its tokenizer: answer scores of (context, reply) pairs given as token ids,
    as the ranking holds them (loading.load_model attaches one as model.answers)."""

    def __init__(self, table: dict, sp):
        self.table, self.sp = table, sp

    def scores(self, contexts: list[list[list[int]]], replies: list[list[int]]) -> list[float]:
        words = {}   # last turn's ids -> typical(): once per context, not once per candidate
        out = []
        for c, r in zip(contexts, replies):
            last = tuple(c[-1]) if c else ()
            if last not in words:
                words[last] = typical(self.table, self.sp.decode(list(last))) if last else {}
            out.append(best(words[last], self.sp.decode(r)) if words[last] else 0.0)
        return out


def save(table: dict, folder: str) -> str:
    return save_table(table, folder, FILE)


def load(run: str) -> dict | None:
    """The answers.json beside a run's checkpoint (or in a model folder), None without one."""
    return load_table(run, FILE, _well_formed, "vhred.answers", "vhred answers --checkpoint {folder}")


def _well_formed(table) -> bool:
    """{"asked": {phrase: count}, "pmi": {phrase: {word: number}}}, as build() writes it: anything
    else would fail mid-ranking, so it is refused on load."""
    number = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
    return (isinstance(table, dict) and isinstance(table.get("asked"), dict) and isinstance(table.get("pmi"), dict)
            and all(number(n) for n in table["asked"].values())
            and all(isinstance(p, dict) and all(number(v) for v in p.values()) for p in table["pmi"].values()))


def from_run(path: str) -> dict:
    """The table of a run's own training split (where training found its data)."""
    from . import checkpoint
    from .sources import split_dialogues
    from .metrics.protocol import context_pairs
    path = checkpoint.resolve(path)
    cfg = checkpoint.config_at(path)   # a .pt file or an exported model folder
    try:
        dialogues = split_dialogues(cfg, "train")
    except (DataError, OSError) as e:
        raise DataError(f"the answer table reads the model's training split: {str(e).splitlines()[0]}") from None
    return build(context_pairs(dialogues, cfg.max_context))


@command
def main(argv=None):
    p = Parser(prog=program("python -m vhred.answers"), description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a run folder or checkpoint; answers.json is written beside it")
    args = p.parse_args(argv)
    from . import checkpoint
    path = checkpoint.resolve(args.checkpoint)
    table = from_run(path)
    out = save(table, checkpoint.results_folder(path))
    print(f"{out}: {sum(map(len, table['pmi'].values()))} pairs of {len(table['pmi'])} wh-phrases")


if __name__ == "__main__":
    main()
