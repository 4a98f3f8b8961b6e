"""Distinct-n (Li et al., 2016): unique n-grams / total n-grams (the command is `python -m eval.distinct`).

For several samples per context: intra-distinct (within each context's samples, averaged over contexts), inter-distinct (over all
samples of all contexts) and response-distinct (within each single response, averaged over all
responses). DialogWAE (Gu et al., 2019) names the last "intra-dist" and the first "inter-dist"
(its code scores one context's samples at a time).
"""
def ngrams(tokens: list[str], n: int) -> list[tuple]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(sentences: list[list[str]], n: int) -> float:
    """Distinct n-grams over all sentences divided by all n-grams; 0 when there are none."""
    grams = [g for s in sentences for g in ngrams(s, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def intra_inter(samples: list[list[list[str]]], n: int) -> tuple[float, float]:
    """(intra, inter) distinct-n of several samples per context."""
    intra = sum(distinct_n(s, n) for s in samples) / len(samples)
    inter = distinct_n([s for group in samples for s in group], n)
    return intra, inter


def response_distinct(samples: list[list[list[str]]], n: int) -> float:
    """Distinct-n within each single response, averaged over all responses (0 for a response with
    no n-gram, as in DialogWAE's code): how much a response repeats itself."""
    flat = [s for group in samples for s in group]
    return sum(distinct_n([s], n) for s in flat) / len(flat)
