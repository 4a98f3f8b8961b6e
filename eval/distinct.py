"""Distinct-n (Li et al., 2016): unique n-grams / total n-grams.

    python -m eval.distinct FILE [FILE ...]          one response per line
    python -m eval.distinct --jsonl samples.jsonl    {"samples": [...]} per line

prints distinct-1 and distinct-2 of each file as JSON. With --jsonl it also reports
intra-distinct (within each context's samples, averaged over contexts), inter-distinct (over all
samples of all contexts) and response-distinct (within each single response, averaged over all
responses). DialogWAE (Gu et al., 2019) names the last "intra-dist" and the first "inter-dist"
(its code scores one context's samples at a time).
"""
import argparse
import json
import sys

from .text import InputError, read_lines, tokenize


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


def read_samples(path: str) -> list[list[str]]:
    rows = []
    for i, line in enumerate(read_lines(path), 1):
        try:
            samples = json.loads(line)["samples"]
            assert isinstance(samples, list) and samples and all(isinstance(s, str) for s in samples)
        except (ValueError, KeyError, TypeError, AssertionError):
            raise InputError(f'{path}: line {i}: expected {{"samples": ["response", ...]}}') from None
        rows.append(samples)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description="distinct-1/2 of response files.")
    p.add_argument("files", nargs="+")
    p.add_argument("--jsonl", action="store_true", help="files are samples JSONL (several per context)")
    args = p.parse_args(argv)
    out = {}
    try:
        for path in args.files:
            if args.jsonl:
                samples = [[tokenize(s) for s in row] for row in read_samples(path)]
                flat = [s for row in samples for s in row]
                r = {}
                for n in (1, 2):
                    r[f"intra-distinct-{n}"], r[f"inter-distinct-{n}"] = intra_inter(samples, n)
                    r[f"response-distinct-{n}"] = response_distinct(samples, n)
            else:
                flat = [tokenize(s) for s in read_lines(path)]
                r = {}
            out[path] = {"distinct-1": distinct_n(flat, 1), "distinct-2": distinct_n(flat, 2), **r,
                         "sentences": len(flat)}
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(out if len(out) > 1 else out[args.files[0]]))


if __name__ == "__main__":
    main()
