"""DialogWAE's evaluation (Gu et al. 2019), rule by rule as its code computes it, so that our
numbers can sit next to published ones. Read from guxd/DialogWAE at commit 29f206a: data.py
(DailyDialCorpus, DailyDialDataLoader), sample.py (evaluate), experiments/metrics.py (Metrics).

- Tokens: nltk's WordPunctTokenizer on the lower-cased utterance (punctuation runs such as
  "?!" or "'" are tokens of their own: "i'm" -> i ' m); <s> and </s> around each utterance.
- Vocabulary: the 10,000 most frequent training tokens (the markers counted among them, as
  their Counter does); any other word is <unk>, in references and in our responses alike.
- Targets: each dialogue is [<s> <d> </s>] + its utterances, cut into windows of 10 that end
  one utterance before the dialogue does. So every utterance but the last is a target, the
  first too, with a context of the start marker alone. Our model has no start marker: its
  context is one empty turn there (the model reads only <eos>). Later targets see up to 9
  earlier utterances (the start marker takes a place while it is in the window).
- Length: utterances are cut to 40 tokens with <s> and </s> (38 words, then </s>); decoding
  runs 40 steps, so a response that has not ended by then has 40 words and no </s>.
- Sampling: 10 responses per context, each greedy words from its own z drawn from the prior.
- BLEU: nltk sentence_bleu of each response against the one reference, weights (1/3, 1/3, 1/3),
  SmoothingFunction().method7, 0 when nltk raises; both sides keep the end token </s>.
  Per context recall = max over the 10 responses, precision = mean; both averaged over
  contexts; F1 = 2PR / (P + R + 1e-11).
- intra-dist-n: distinct n-grams / n-grams within one response ((d + 1e-12) / (len + 1e-5)),
  averaged over all responses; inter-dist-n: the same over the 10 responses of one context,
  averaged over contexts. Words only (no </s>); <unk> counts as one word.
- L: mean response length in words before </s>.
- An exact copy of the reference scores above 1 (1.154 from five tokens on): method7 smooths
  the n-gram counts over neighbouring orders, so recall can exceed 1.
- Added, not theirs: the targets the training split already holds (the same reply after the
  same turn, compared as their tokens; the first utterance after no turn). DailyDialog's
  training split holds 23% of its test targets (1,557 of 6,740), so the report gives BLEU on the
  unseen rest too: there a model cannot score by recalling its training replies; and on the
  seen part, where it can.
- Not reproduced: the embedding scores (need GloVe twitter vectors, not shipped here).
"""
from collections import Counter

from .text import normal

MAX_TOKENS = 40     # per utterance, with <s> and </s> (their maxlen)
WINDOW = 10         # utterances per window, the target included (their diaglen)
SAMPLES = 10        # responses per context (their --n_samples)
VOCAB_SIZE = 10000  # their vocab_size
EOS, UNK = "</s>", "<unk>"
START = ["<s>", "<d>", "</s>"]   # their dialogue-start utterance


def tokenize(text: str) -> list[str]:
    """Their WordPunctTokenizer, of the text in the form the model writes (text.normal: no
    DailyDialog character changes, a user's full-width marks do)."""
    from nltk.tokenize import WordPunctTokenizer
    return WordPunctTokenizer().tokenize(normal(text).lower())


def vocabulary(train_dialogues: list[list[str]], size: int = VOCAB_SIZE) -> set[str]:
    """Their word list: the most frequent tokens of the training utterances and markers."""
    counts = Counter()
    for d in train_dialogues:
        counts.update(START)
        for u in d:
            counts.update(["<s>", *tokenize(u), "</s>"])
    return {w for w, _ in counts.most_common(size)}


def targets(dialogues: list[list[str]]) -> list[tuple[list[str], str]]:
    """(context, reference) as their test loader makes them: every utterance but each
    dialogue's last; the first with one empty turn for their start marker."""
    pairs = []
    for d in dialogues:
        for i in range(len(d) - 1):
            pairs.append((d[max(0, i - (WINDOW - 1)):i] or [""], d[i]))
    return pairs


def seen_in_training(train_dialogues: list[list[str]], pairs: list[tuple[list[str], str]]) -> list[bool]:
    """For each (context, reference): does a training dialogue have the same reply after the same
    turn (its first utterance after no turn)? Compared as their lower-cased tokens."""
    def key(turn, reply):
        return " ".join(tokenize(turn)), " ".join(tokenize(reply))
    seen = {key(d[i - 1] if i else "", d[i]) for d in train_dialogues for i in range(len(d))}
    return [key(context[-1], reply) in seen for context, reply in pairs]


def reference_tokens(text: str, vocab: set[str]) -> list[str]:
    words = tokenize(text)[:MAX_TOKENS - 2]
    return [w if w in vocab else UNK for w in words] + [EOS]


def response_tokens(text: str, ended: bool, vocab: set[str]) -> list[str]:
    """A response as their decoder would hold it: 40 steps, </s> kept when it came in time."""
    words = [w if w in vocab else UNK for w in tokenize(text)]
    return (words + [EOS] if ended else words)[:MAX_TOKENS]


def words_of(tokens: list[str]) -> list[str]:
    return tokens[:-1] if tokens and tokens[-1] == EOS else tokens


def bleu(hyp: list[str], ref: list[str]) -> float:
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    try:
        return sentence_bleu([ref], hyp, smoothing_function=SmoothingFunction().method7, weights=[1 / 3] * 3)
    except Exception:   # their code scores any nltk failure as 0
        return 0.0


def _grams(words: list[str], n: int) -> list[tuple]:
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def distinct(responses: list[list[str]], n: int) -> tuple[list[float], float]:
    """(intra-dist-n of each response, inter-dist-n over them all), with their epsilons."""
    intra = [(len(set(_grams(w, n))) + 1e-12) / (max(0, len(w) - n + 1) + 1e-5) for w in responses]
    pooled = [g for w in responses for g in _grams(w, n)]
    return intra, (len(set(pooled)) + 1e-12) / (len(pooled) + 1e-5)


def scores(responses: list[list[list[str]]], refs: list[list[str]]) -> dict:
    """Their report over contexts: responses[c] holds context c's token lists (with </s> where
    it came), refs[c] its reference tokens."""
    recall = precision = inter1 = inter2 = length = 0.0
    intra1, intra2 = [], []
    for hyps, ref in zip(responses, refs):
        b = [bleu(h, ref) for h in hyps]
        recall, precision = recall + max(b), precision + sum(b) / len(b)
        words = [words_of(h) for h in hyps]
        (i1, e1), (i2, e2) = distinct(words, 1), distinct(words, 2)
        intra1, intra2, inter1, inter2 = intra1 + i1, intra2 + i2, inter1 + e1, inter2 + e2
        length += sum(len(w) for w in words) / len(words)
    C = len(refs)
    r, p = recall / C, precision / C
    return {"bleu-recall": r, "bleu-precision": p, "bleu-f1": 2 * p * r / (p + r + 1e-11),
            "intra-dist-1": sum(intra1) / len(intra1), "intra-dist-2": sum(intra2) / len(intra2),
            "inter-dist-1": inter1 / C, "inter-dist-2": inter2 / C, "length": length / C}


def overlap_scores(responses: list[list[list[str]]], refs: list[list[str]], seen: list[bool]) -> dict:
    """BLEU on the targets the training split does not hold ("unseen-") and on those it does
    ("seen-": where recalling a training reply scores), each with its count of contexts."""
    out = {}
    for part, held in (("unseen", False), ("seen", True)):
        keep = [i for i, s in enumerate(seen) if s == held]
        out[f"{part}_contexts"] = len(keep)
        if keep:
            m = scores([responses[i] for i in keep], [refs[i] for i in keep])
            out.update({f"{part}-{k}": v for k, v in m.items() if k.startswith("bleu")})
    return out


def report(train_dialogues: list[list[str]], pairs: list[tuple[list[str], str]],
           responses: list[list[tuple[str, bool]]]) -> tuple[dict, list[bool]]:
    """Their report for pairs[c] answered by responses[c] ((text, ended) each), BLEU on the unseen
    and the seen targets beside it; and which targets the training split holds (seen_in_training)."""
    vocab = vocabulary(train_dialogues)
    hyps = [[response_tokens(text, ended, vocab) for text, ended in row] for row in responses]
    refs = [reference_tokens(r, vocab) for _, r in pairs]
    seen = seen_in_training(train_dialogues, pairs)
    return {"contexts": len(pairs), **scores(hyps, refs), **overlap_scores(hyps, refs, seen)}, seen
