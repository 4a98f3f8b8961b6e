"""BLEU for dialogue responses, with nltk (the command is `python -m eval.bleu`).

Tokenisation: vhred.metrics.text.tokenize (lower case, words and punctuation). BLEU-n uses uniform weights over 1..n-grams and nltk's smoothing method 1 (an epsilon of 0.1
for empty n-gram counts), corpus and sentence level alike, so identical strings of n tokens or
more score 1 (shorter ones less: "thank you ." scores 0.56 against itself at BLEU-4). nltk's corpus
BLEU also counts one n-gram for a reply shorter than n, so on short replies its figures are lower
than sacrebleu's.

The DialogWAE code (Gu et al., 2019, after Zhao et al., 2017) scores samples with sentence BLEU,
weights (1/3, 1/3, 1/3) and smoothing method 7; `dialogwae_bleu` reproduces it for comparisons
with published figures. Method 7 can exceed 1 (identical strings of 5 tokens or more score 1.154), so we
report it beside our own numbers, never instead of them.
"""
from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu, sentence_bleu


SMOOTH = SmoothingFunction()


def weights(n: int) -> tuple:
    return tuple([1.0 / n] * n)


def corpus_bleu_n(hyps: list[list[str]], refs: list[list[list[str]]], max_n: int = 4) -> dict:
    """Corpus BLEU-1..max_n of token lists; refs[i] holds the references of hyps[i]."""
    return {f"bleu-{n}": corpus_bleu(refs, hyps, weights=weights(n), smoothing_function=SMOOTH.method1)
            for n in range(1, max_n + 1)}


def sentence_bleu_n(hyp: list[str], refs: list[list[str]], n: int, smoothing=SMOOTH.method1) -> float:
    """Sentence BLEU-n (uniform weights up to n-grams); 0 for an empty hypothesis."""
    if not hyp:
        return 0.0
    return sentence_bleu(refs, hyp, weights=weights(n), smoothing_function=smoothing)


def dialogwae_bleu(hyp: list[str], refs: list[list[str]]) -> float:
    """Sentence BLEU as the DialogWAE code computes it: up to trigrams, smoothing method 7."""
    return sentence_bleu_n(hyp, refs, 3, smoothing=SMOOTH.method7)


def multi_sample_bleu(samples: list[list[list[str]]], refs: list[list[str]], n: int, score=None) -> dict:
    """The multi-sample protocol (Zhao et al. 2017; DialogWAE): for each context, precision is
    the mean sentence BLEU of its samples against the reference, recall the max; both are
    averaged over contexts, and F1 is their harmonic mean. `score(hyp, refs)` replaces
    sentence BLEU-n when given (dialogwae_bleu, say)."""
    score = score or (lambda h, r: sentence_bleu_n(h, r, n))
    precision = recall = 0.0
    for hyps, ref in zip(samples, refs):
        scores = [score(h, [ref]) for h in hyps] or [0.0]
        precision += sum(scores) / len(scores)
        recall += max(scores)
    p, r = precision / len(refs), recall / len(refs)
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}
