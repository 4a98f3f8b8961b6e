"""Blind rating: what people see, measured by people (or helper readers) who do not know which
system wrote a reply.

    vhred rate pack --system default=a.jsonl --system new=b.jsonl \\
        --out rating/pack.txt --key rating/key.json [--contexts 40] [--per-context 5] [--pairwise]
    vhred rate score --key rating/key.json --answers rater1.txt [--rater NAME]

A system is a file of `vhred generate` (or the samples file of `vhred eval`): one line per
context, {"context": [...], "samples": [best first, ...]}, so systems are checkpoints or decoding
settings alike. Every system must answer the same contexts in the same order.

pack writes two files. The pack (for the rater) lists each context once, its turns, and under it
the replies of all systems, shuffled with the seed, each behind a random id; a reply two systems
share is shown once. The key (never shown to the rater) maps each id to the systems and the rank
within the context (1 = first in the system's own list; the pack shuffles them), and holds each
system's automatic proxies: the surface faults (vhred/metrics/surface.py), words per reply and,
when --checkpoint names the run whose training text is the lexicon, the non-word and stock-reply
shares (vhred/metrics/stock.py: a kept share that rises on "OK." and "I see." says so there).
The rater writes one line per id: `<id> good` or `<id> bad`; good = fluent English that fits
the last turn as the next speaker's reply.

--pairwise writes the A/B form of ACUTE-Eval (Li et al. 2019): for every context, every two
systems and every rank up to --per-context, one pair of replies in a random order; the rater
writes `<id> A` or `<id> B` for the better next reply. Pairs of identical replies are left out.

score prints each system's good share over all its shown replies and over its top-1 replies
(or, for pairs, each system's win rate against each other), with a 95% Wilson interval, and
the proxies. It names the rater (--rater, default the answers file's name) in every table.
"""
import collections
import glob
import hashlib
import itertools
import json
import math
import os
import random
import re
import sys

from .cli import command, Parser, program

from .errors import InputError
from .files import output_file, output_files, text_lines

Z95 = 1.959963984540054   # the standard normal's 97.5% quantile


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion k/n (Wilson 1927): (low, high); (0, 1) for n = 0.
    Unlike p +- z sqrt(p(1-p)/n) it stays inside [0, 1] and is not empty at k = 0 or k = n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


# --- reading systems --------------------------------------------------------------------------

def read_system(spec: str) -> tuple[str, str, list[dict]]:
    """NAME=FILE -> (name, file, rows {"context", "samples"}, and "scores" where a row has one
    number for each sample)."""
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise InputError(f"--system takes NAME=FILE (a `vhred generate` output), got '{spec}'")
    rows = []
    for lineno, line in enumerate(text_lines(path), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            ok = isinstance(row["context"], list) and isinstance(row["samples"], list) \
                and all(isinstance(s, str) for s in row["samples"])
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            raise InputError(f'{path}: line {lineno}: expected {{"context": [...], "samples": [...]}} '
                             "as `vhred generate` writes it")
        scores = row.get("scores")
        scored = isinstance(scores, list) and len(scores) == len(row["samples"]) \
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in scores)
        rows.append({"context": row["context"], "samples": row["samples"], **({"scores": scores} if scored else {})})
    if not rows:
        raise InputError(f"{path} holds no contexts")
    return name, path, rows


def same_contexts(systems: dict, n: int) -> list[list[str]]:
    """The first n contexts (0: all), which every system must share, in the same order."""
    first = next(iter(systems.values()))
    counts = {name: len(rows) for name, rows in systems.items()}
    if not n and len(set(counts.values())) > 1:   # a generate cut short: not all, and the others' rest dropped
        fewest = min(counts, key=counts.get)
        raise InputError(f"system '{fewest}' answers {counts[fewest]} contexts and the others up to "
                         f"{max(counts.values())}: decode every system from the same contexts file, or give "
                         f"--contexts {counts[fewest]} to rate the first {counts[fewest]}")
    n = n or len(first)
    for name, rows in systems.items():
        if len(rows) < n:
            raise InputError(f"system '{name}' answers {len(rows)} contexts, fewer than the {n} asked for")
        for i in range(n):
            if rows[i]["context"] != first[i]["context"]:
                raise InputError(f"system '{name}' line {i + 1} answers another context than the first "
                                 "system: decode every system from the same contexts file")
    return [row["context"] for row in first[:n]]


def asks(turns: list[str]) -> bool:
    """Whether a context's last turn is a question (ends with "?"): a reply to it has to answer,
    where an acknowledgement fits after most statements. Rounds are split by it (eval/)."""
    return turns[-1].rstrip().endswith("?")


WH_WORDS = ("what", "where", "when", "why", "who", "whom", "whose", "which", "how")
WH_WORD = "(" + "|".join(WH_WORDS) + ")"
# a question that asks for something: a clause of it opens with a wh-word ("Where is it?", "Aside
# from you, who plays?"), or a wh-word follows "tell me", "know", "ask" ("Do you know where it is?");
# "Did he leave when you left?" asks yes or no
ASKS_FOR = re.compile(r"(^|,)\W*((and|but|so|then|well|oh|ok|okay|now|yes|no|sorry|hey|hi|hello)\W+)*" + WH_WORD
                      + r"\b|\b(tell me|tell us|know|ask|wonder|any idea)\W+" + WH_WORD + r"\b", re.IGNORECASE)
# wh-words that make a suggestion, not a request for something: "Why don't we ...?", "How about tea?"
SUGGESTION = re.compile(r"\b(why don't|why not|how about|what about)\b", re.IGNORECASE)
TURN_KINDS = ("wh", "yes-no", "other")


def turn_kind(turns: list[str]) -> str:
    """What the last turn asks for: "wh" when it is a question and one of its questions asks what,
    where, when, why, who, which or how (ASKS_FOR: "Where is the toilet?", "Can you tell me where
    it is?", not "How about tea?"): a reply must say something, and "Yes." or "OK." does not;
    "yes-no" for the other questions, which a short "Yes." can answer; "other" when it is not a
    question."""
    if not asks(turns):
        return "other"
    if any(ASKS_FOR.search(q) and not SUGGESTION.search(q) for q in questions(turns[-1])):
        return "wh"
    return "yes-no"


def questions(turn: str) -> list[str]:
    """A turn's questions (its sentences that end in "?"), stripped, with DailyDialog's spaced
    apostrophes joined ("don ’ t" -> "don't") as the patterns above expect."""
    text = re.sub(r"\s*['\u2019]\s*", "'", turn)
    return [q.strip() for q in re.findall(r"[^.!?]*[.!?]+", text) if q.rstrip().endswith("?")]


LAST_TURN_KINDS = ("question", *TURN_KINDS)


def last_turn_is(turns: list[str], kind: str) -> bool:
    """Whether a context's last turn is of kind "question" (any), "wh", "yes-no" or "other" (not a
    question): the --last-turn filter of eval/rating_contexts.py and eval/pooled_rating.py."""
    return asks(turns) if kind == "question" else turn_kind(turns) == kind


def new_id(rng: random.Random, taken: set) -> str:
    while True:
        i = f"{rng.randrange(16 ** 6):06x}"
        if i not in taken:
            taken.add(i)
            return i


def speaker_lines(context: list[str]) -> list[str]:
    """The turns as two speakers, S1 and S2, the last turn S1's (so every reply is S2's)."""
    n = len(context)
    return [f"  S{1 if (n - i) % 2 else 2}: {turn}" for i, turn in enumerate(context)]


# --- pack -------------------------------------------------------------------------------------

def pack_pointwise(systems: dict, contexts, per_context: int, rng) -> tuple[list[str], dict]:
    """(pack lines, key items {id: [{"system", "context", "rank", "text"}, ...]})."""
    lines, items, taken = [], {}, set()
    order = list(range(len(contexts)))
    rng.shuffle(order)
    for number, c in enumerate(order, 1):
        by_text = {}   # reply text -> its id: a reply two systems share is rated once
        for name, rows in systems.items():
            for rank, text in enumerate(rows[c]["samples"][:per_context], 1):
                i = by_text.setdefault(text, new_id(rng, taken))
                items.setdefault(i, []).append({"system": name, "context": c, "rank": rank, "text": text})
        shown = list(by_text.items())
        rng.shuffle(shown)
        lines += [f"== context {number} ==", *speaker_lines(contexts[c]), "  replies of S2:"]
        lines += [f"[{i}] {text}" for text, i in shown] + [""]
    return lines, items


def pack_pairwise(systems: dict, contexts, per_context: int, rng) -> tuple[list[str], dict]:
    """(pack lines, key items {id: {"context", "rank", "A", "B", "text_A", "text_B"}})."""
    lines, items, taken, pairs = [], {}, set(), []
    for c in range(len(contexts)):
        for x, y in itertools.combinations(systems, 2):
            for rank in range(1, per_context + 1):
                a, b = systems[x][c]["samples"][rank - 1:rank], systems[y][c]["samples"][rank - 1:rank]
                if a and b and a != b:
                    pairs.append((c, rank, x, y))
    rng.shuffle(pairs)
    for c, rank, x, y in pairs:
        if rng.random() < 0.5:
            x, y = y, x
        i = new_id(rng, taken)
        ta, tb = systems[x][c]["samples"][rank - 1], systems[y][c]["samples"][rank - 1]
        items[i] = {"context": c, "rank": rank, "A": x, "B": y, "text_A": ta, "text_B": tb}
        lines += [f"== pair [{i}] ==", *speaker_lines(contexts[c]), f"  A (S2): {ta}", f"  B (S2): {tb}", ""]
    return lines, items


HEADER = {
    "pointwise": ["# Blind rating pack: {n} replies to {c} contexts. Under each context, the replies are",
                  "# possible next turns of S2. For each reply write one line: <id> good  or  <id> bad",
                  "# good = fluent English AND fits the last turn as S2's next reply; bad otherwise.", ""],
    "pairwise": ["# Blind rating pack: {n} pairs of replies to {c} contexts. For each pair write one line:",
                 "# <id> A  or  <id> B  (the better next turn of S2: fluent English that fits the last turn).", ""],
}


def pack_seed(seed: int, systems: dict, contexts: list, kind: str = "pointwise", per_context: int = 5) -> str:
    """The seed of a pack's ids and order: --seed and what the pack shows, so the same command
    gives the same pack, and packs of other replies get other ids (answers to one then cannot be
    scored against another's key without an error). The form and --per-context count too: a
    3-reply pack of the same draws drew the 5-reply pack's first ids for other replies. (The
    default form, pointwise with 5, adds nothing: the committed rounds' packs keep their ids.)"""
    shown = {name: [r["samples"] for r in rows[:len(contexts)]] for name, rows in systems.items()}
    form = [] if (kind, per_context) == ("pointwise", 5) else [kind, per_context]
    text = json.dumps([seed, contexts, shown, *form], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def write_pack(args):
    systems, sources = {}, {}
    for spec in args.system:
        name, path, rows = read_system(spec)
        if name in systems:
            raise InputError(f"two systems are named '{name}'")
        systems[name], sources[name] = rows, path
    if len(systems) < (2 if args.pairwise else 1):
        raise InputError("--pairwise needs at least two --system" if args.pairwise else "give at least one --system")
    if args.per_context < 1 or args.contexts < 0:
        raise InputError("--per-context must be at least 1 and --contexts not negative")
    contexts = same_contexts(systems, args.contexts)
    kind = "pairwise" if args.pairwise else "pointwise"
    rng = random.Random(pack_seed(args.seed, systems, contexts, kind, args.per_context))
    lines, items = (pack_pairwise if args.pairwise else pack_pointwise)(systems, contexts, args.per_context, rng)
    header = [h.format(n=len(items), c=len(contexts)) for h in HEADER[kind]]
    key = {"kind": kind, "seed": args.seed, "per_context": args.per_context, "systems": sources,
           "contexts": contexts, "items": items,
           "proxies": system_proxies(systems, len(contexts), args.per_context, args.checkpoint)}
    key_text = json.dumps(key, indent=1, ensure_ascii=False) + "\n"
    check_pack_paths(args.out, args.key, sources.values(), key_text)
    with output_files() as together:   # never a new pack beside an old key
        for path, text in ((args.out, "\n".join(header + lines) + "\n"), (args.key, key_text)):
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with output_file(path, together=together) as f:
                f.write(text)
    print(f"wrote {len(items)} {'pairs' if args.pairwise else 'replies'} of {len(systems)} systems "
          f"to {len(contexts)} contexts: {args.out} (for the rater), {args.key} (the key: keep it apart)", file=sys.stderr)


def check_pack_paths(out: str, key: str, inputs, key_text: str) -> None:
    """Refuse to write a pack over its key or its inputs, or a key over another pack's: the
    answers to that pack could never be scored again."""
    same = lambda a, b: os.path.realpath(a) == os.path.realpath(b)
    if same(out, key):
        raise InputError(f"--out and --key are both {out}: the key must be kept apart from the pack")
    for path in (out, key):
        if any(same(path, i) for i in inputs):
            raise InputError(f"{path} is a --system file: write the pack and key elsewhere")
    if os.path.isfile(key):
        with open(key, encoding="utf-8", errors="replace") as f:
            if f.read() != key_text:
                what = ("holds the key of another pack (answers to it would no longer score)" if is_key(key)
                        else "exists and is not this pack's key (a pack, another file?)")
                raise InputError(f"{key} {what}: remove it, or give another --key")
    if is_key(out):
        raise InputError(f"--out {out} holds the key of a pack (answers to it would no longer score): "
                         "give another --out")


def is_key(path: str) -> bool:
    """Whether path holds a key that `rate pack` wrote."""
    try:
        with open(path, encoding="utf-8") as f:
            key = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(key, dict) and "items" in key and key.get("kind") in ("pointwise", "pairwise")


def lexicon_and_stock(run: str, leave_out: str = "--checkpoint for proxies without the non-word and stock shares"
                      ) -> tuple[frozenset, frozenset]:
    """The words and the stock turns of a run's training text (its checkpoint's config says where
    that is); leave_out: what the message offers when that text is not here."""
    from . import checkpoint
    from .lexicon import training_lexicon, training_stock
    path = checkpoint.resolve(run)
    cfg = checkpoint.config_of(checkpoint.load(path), path)
    known = training_lexicon(cfg)
    if known is None:
        raise InputError(f"the training text of {path} is not on this machine (set DAILYDIALOG_SRC); "
                         f"or leave out {leave_out}")
    return known, training_stock(cfg)


def system_proxies(systems: dict, n_contexts: int, per_context: int, run: str | None) -> dict:
    """Each system's surface-fault shares, words per reply and stock share over the replies it
    shows in the pack."""
    from .metrics.stock import stock_metrics
    from .metrics.surface import surface_metrics
    if run is not None and not run.strip():   # an unset shell variable: say so, not drop the proxy
        raise InputError("--checkpoint is empty; give the run whose training text is the lexicon, or leave the "
                         "flag out for proxies without the non-word and stock shares")
    known, stock = lexicon_and_stock(run) if run else (None, None)
    shown = {name: [s for row in rows[:n_contexts] for s in row["samples"][:per_context]] for name, rows in systems.items()}
    return {name: {**surface_metrics(replies, known), **stock_metrics(replies, stock)} for name, replies in shown.items()}


# --- score ------------------------------------------------------------------------------------

def read_answers(path: str, key: dict) -> dict:
    """{id: answer} from the rater's lines `<id> good|bad` (pointwise) or `<id> A|B` (pairwise)."""
    allowed = {"good", "bad"} if key["kind"] == "pointwise" else {"a", "b"}
    answers = {}
    for lineno, line in enumerate(text_lines(path), 1):
        parts = line.replace("[", " ").replace("]", " ").split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) != 2 or parts[1].lower() not in allowed:
            raise InputError(f"{path}: line {lineno}: expected '<id> {' or '.join(sorted(allowed))}', got '{line.strip()}'")
        if parts[0] not in key["items"]:
            raise InputError(f"{path}: line {lineno}: id {parts[0]} is not in the key; is it the key of this pack?")
        if parts[0] in answers and answers[parts[0]] != parts[1].lower():
            raise InputError(f"{path}: line {lineno}: id {parts[0]} is answered twice, differently")
        answers[parts[0]] = parts[1].lower()
    if not answers:
        raise InputError(f"{path} holds no answers")
    return answers


def share(k: int, n: int) -> dict:
    low, high = wilson(k, n)
    return {"good": k, "of": n, "share": k / n if n else None, "low": low, "high": high}


def clustered_share(by_context: dict) -> dict:
    """share() of labels that come in contexts, {context: [good, labels]}: a context's five
    replies are not five independent draws (a context the model does well on gives several good
    ones), so Wilson's interval over all labels is too narrow. Kish's design effect widens it:
    n becomes the effective n = p(1-p) / var(p), var(p) the ratio estimator's variance over the
    contexts, C/(C-1) sum_c (k_c - p n_c)^2 / n^2, never above n. One label a context: plain Wilson."""
    k, n = (sum(c[i] for c in by_context.values()) for i in (0, 1))
    out = share(k, n)
    contexts = len(by_context)
    if n == 0 or contexts < 2 or all(c[1] == 1 for c in by_context.values()):
        return out
    p = k / n
    var = contexts / (contexts - 1) * sum((g - p * m) ** 2 for g, m in by_context.values()) / n ** 2
    if var > 0:   # every context at one share (all good, say) has no spread to widen it by
        n_eff = min(n, p * (1 - p) / var)
        out["low"], out["high"] = wilson(p * n_eff, n_eff)
    return out


def score_pointwise(key: dict, answers: dict) -> dict:
    """{system: {"all": share, "top1": share, "by_last_turn": {kind: {"all": share, "top1": share}}}}
    over the answered replies; by_last_turn splits them by what the context's last turn asks for
    (turn_kind), the kinds of the pack's contexts only."""
    kinds = [turn_kind(c) for c in key["contexts"]]
    names = key.get("systems") or sorted({e["system"] for entries in key["items"].values() for e in entries})
    counts = {name: {part: {} for part in ("all", "top1", *(f"{k} {p}" for k in TURN_KINDS for p in ("all", "top1")))}
              for name in names}   # part -> {context: [good, labels]}
    for i, entries in key["items"].items():
        if i not in answers:
            continue
        for e in entries:
            kind = kinds[e["context"]]
            for part in ("all", "top1") if e["rank"] == 1 else ("all",):
                for name in (part, f"{kind} {part}"):
                    c = counts[e["system"]][name].setdefault(e["context"], [0, 0])
                    c[0] += answers[i] == "good"
                    c[1] += 1
    return {name: {"all": clustered_share(c["all"]), "top1": clustered_share(c["top1"]),
                   "by_last_turn": {k: {p: clustered_share(c[f"{k} {p}"]) for p in ("all", "top1")}
                                    for k in TURN_KINDS if k in kinds}}
            for name, c in counts.items()}


def score_pairwise(key: dict, answers: dict) -> dict:
    """{"X vs Y": {"X": wins share of X, ...}} over the answered pairs of each two systems."""
    wins = {}
    for i, item in key["items"].items():
        if i in answers:
            x, y = sorted((item["A"], item["B"]))
            w = wins.setdefault(f"{x} vs {y}", {x: 0, y: 0})
            w[item["A"] if answers[i] == "a" else item["B"]] += 1
    out = {}
    for pair, w in wins.items():
        n = sum(w.values())
        out[pair] = {name: share(k, n) for name, k in w.items()}
    return out


def pct(s: dict) -> str:
    if not s["of"]:
        return "-"
    return f"{100 * s['share']:.0f}% [{100 * s['low']:.0f}, {100 * s['high']:.0f}] ({s['good']}/{s['of']})"


def report(key: dict, answers: dict, rater: str) -> tuple[str, dict]:
    answered, total = len(answers), len(key["items"])
    lines = [f"rater: {rater}; {answered} of {total} items answered ({key['kind']}, "
             f"{len(key['contexts'])} contexts); 95% Wilson intervals", ""]
    if key["kind"] == "pointwise":
        result = score_pointwise(key, answers)
        lines += ["| system | good, all shown | good, top-1 |", "|---|---|---|"]
        lines += [f"| {name} | {pct(r['all'])} | {pct(r['top1'])} |" for name, r in result.items()]
        lines += by_last_turn(key, result)
    else:
        result = score_pairwise(key, answers)
        lines += ["| pair | wins of the first | wins of the second |", "|---|---|---|"]
        for pair, r in result.items():
            x, y = pair.split(" vs ")
            lines.append(f"| {pair} | {x}: {pct(r[x])} | {y}: {pct(r[y])} |")
    proxies = key.get("proxies") or {}
    if proxies:
        names = sorted({k for p in proxies.values() for k in p})
        lines += ["", "automatic proxies (share of the replies in the pack; words: mean words a reply):", "",
                  "| system | " + " | ".join(n.replace("_share", "").replace("_per_reply", "") for n in names) + " |",
                  "|---|" + "---|" * len(names)]
        lines += [f"| {s} | " + " | ".join(proxy_cell(n, p) for n in names) + " |" for s, p in proxies.items()]
    return "\n".join(lines), {"rater": rater, "answered": answered, "items": total, "kind": key["kind"],
                              "scores": result, "proxies": proxies}


def proxy_cell(name: str, proxies: dict) -> str:
    if name not in proxies:
        return "-"
    return f"{proxies[name]:.1f}" if name == "words_per_reply" else f"{100 * proxies[name]:.1f}%"


def by_last_turn(key: dict, result: dict) -> list[str]:
    """The pointwise table again, split by what the last turn asks for (turn_kind): replies to
    wh-questions are kept far less often than the others, which a share over all hides."""
    kinds = list(next(iter(result.values()))["by_last_turn"]) if result else []
    if len(kinds) < 2:
        return []
    count = {k: sum(turn_kind(c) == k for c in key["contexts"]) for k in kinds}
    lines = ["", "by what the last turn asks for (wh: what, where, when, why, who, which, how; "
             "yes-no: another question; other: not a question):", "",
             "| system | " + " | ".join(f"{k} ({count[k]}): all shown | top-1" for k in kinds) + " |",
             "|---|" + "---|---|" * len(kinds)]
    for name, r in result.items():
        parts = [f"{pct(r['by_last_turn'][k]['all'])} | {pct(r['by_last_turn'][k]['top1'])}" for k in kinds]
        lines.append(f"| {name} | " + " | ".join(parts) + " |")
    return lines


def rating_rounds(folders: list[str]) -> list[str]:
    """The rounds among folders: each folder with a key.json, and each such folder one level
    below (a round rated in several packs)."""
    rounds = [d for d in folders if os.path.isfile(os.path.join(d, "key.json"))]
    return rounds + [os.path.dirname(k) for d in folders for k in sorted(glob.glob(os.path.join(d, "*", "key.json")))]


def checked_rounds(flag: str, folders: list[str]) -> list[str]:
    """rating_rounds() of the folders a flag gave, each of which must hold a round: a misspelt
    round is named, not left out of the critic or table that replaces the run's."""
    for d in folders:
        if not os.path.isdir(d):
            raise InputError(f"{flag} {d}: no such folder; give rating rounds, folders with the key.json "
                             "of `vhred rate pack` (or folders of them)")
        if not rating_rounds([d]):
            raise InputError(f"{flag} {d} holds no rating round: a round is a folder with the key.json "
                             "of `vhred rate pack` (or a folder of such folders)")
    return rating_rounds(folders)


def rated_labels(folder: str) -> list[tuple[list[str], list[tuple[str, int, int]]]]:
    """One pointwise round's (context turns, [(reply text, readers who kept it, readers who
    rated it)]), every reply its readers saw (a reply two systems gave to one context once); a
    pairwise round has no such labels and is refused."""
    key = read_key(os.path.join(folder, "key.json"))
    if key["kind"] != "pointwise":
        raise InputError(f"{folder} is a pairwise round; good/bad labels come from pointwise rounds")
    raters = sorted(glob.glob(os.path.join(folder, "rater*.txt")))
    if not raters:
        raise InputError(f"{folder} has no rater*.txt answers beside its key.json")
    labels = collections.defaultdict(list)
    for path in raters:
        for item, answer in read_answers(path, key).items():
            it = key["items"][item][0]
            labels[(it["context"], it["text"])].append(answer == "good")
    by_context = collections.defaultdict(list)
    for (c, text), kept in sorted(labels.items()):
        by_context[c].append((text, sum(kept), len(kept)))
    return [(key["contexts"][c], replies) for c, replies in sorted(by_context.items())]


def read_key(path: str) -> dict:
    if not path:
        raise InputError("--key is empty; give the key.json that `vhred rate pack` wrote beside the pack")
    if not os.path.isfile(path):
        raise InputError(f"key {path} not found (`vhred rate pack` writes it beside the pack)")
    try:
        key = json.loads("\n".join(text_lines(path)))
        ok = _key_is_whole(key)
    except (ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:   # an explicit check: asserts vanish under python -O
        raise InputError(f"{path} is not a key written by `vhred rate pack`")
    return key


def _key_is_whole(key) -> bool:
    """Whether a key holds every field scoring reads, of the types it reads them as."""
    if not (isinstance(key, dict) and key.get("kind") in ("pointwise", "pairwise")
            and isinstance(key.get("items"), dict) and isinstance(key.get("contexts"), list)
            and isinstance(key.get("systems", {}), dict)):
        return False
    n = len(key["contexts"])
    is_index = lambda v: isinstance(v, int) and not isinstance(v, bool)
    in_pack = lambda e: is_index(e.get("context")) and 0 <= e["context"] < n and is_index(e.get("rank"))
    named = (lambda s: s in key["systems"]) if "systems" in key else (lambda s: isinstance(s, str))
    if key["kind"] == "pointwise":
        return all(isinstance(v, list) and all(isinstance(e, dict) and in_pack(e) and named(e.get("system")) for e in v)
                   for v in key["items"].values())
    return all(isinstance(v, dict) and in_pack(v) and isinstance(v.get("A"), str) and isinstance(v.get("B"), str)
               for v in key["items"].values())


def score_answers(args):
    if not args.rater.isprintable():   # a line break would split the figures' lines that name it
        raise InputError(f"--rater must be one line of text, got {args.rater!r}")
    key = read_key(args.key)
    answers = read_answers(args.answers, key)
    rater = args.rater or os.path.splitext(os.path.basename(args.answers))[0]
    text, result = report(key, answers, rater)
    print(json.dumps(result) if args.json else text)


def parse_args(argv):
    p = Parser(prog=program("python -m vhred.rate"),
               description="Blind rating of replies: write a pack, score a rater's answers.")
    sub = p.add_subparsers(dest="action", required=True, metavar="pack|score",
                           help="pack: write a blind rating pack and its key; score: score one rater's answers")
    a = sub.add_parser("pack", help="write a blind rating pack and its key")
    a.add_argument("--system", action="append", default=[], required=True,
                   help="NAME=FILE, a `vhred generate` output; repeat for each system")
    a.add_argument("--out", required=True, help="the pack, for the rater")
    a.add_argument("--key", required=True, help="the key (id -> system, rank), kept apart from the rater")
    a.add_argument("--contexts", type=int, default=0, help="the first N contexts, 0 for all (default %(default)s)")
    a.add_argument("--per-context", type=int, default=5, help="replies per context and system (default %(default)s)")
    a.add_argument("--pairwise", action="store_true", help="A/B pairs (ACUTE-Eval) instead of good/bad")
    a.add_argument("--checkpoint", help="the run whose training text gives the non-word and stock proxies "
                        "(default: none, proxies without those two shares)")
    a.add_argument("--seed", type=int, default=0, help="seed of the ids and the order (default %(default)s)")
    b = sub.add_parser("score", help="score one rater's answers against the key")
    b.add_argument("--key", required=True, help="the key written by `rate pack`")
    b.add_argument("--answers", required=True, help="the rater's file: `<id> good|bad` or `<id> A|B` per line")
    b.add_argument("--rater", default="", help="who rated, shown with every figure (default: the answers file's name)")
    b.add_argument("--json", action="store_true", help="print the result as JSON")
    return p.parse_args(argv)


@command
def main(argv=None):
    args = parse_args(argv if argv is not None else sys.argv[1:])
    return write_pack(args) if args.action == "pack" else score_answers(args)


if __name__ == "__main__":
    main()
