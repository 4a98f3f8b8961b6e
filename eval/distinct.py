"""Distinct-1/2 of response files, as JSON:

    python -m eval.distinct FILE [FILE ...]          one response per line
    python -m eval.distinct --jsonl samples.jsonl    {"samples": [...]} per line

With --jsonl it also reports intra-distinct (within each context's samples, averaged over
contexts), inter-distinct (over all samples of all contexts) and response-distinct (within each
single response). The metrics themselves are vhred.metrics.distinct.
"""
import json

from vhred.cli import command, Parser
from vhred.errors import InputError
from vhred.metrics.distinct import distinct_n, intra_inter, response_distinct
from vhred.metrics.text import read_lines, tokenize


def read_samples(path: str) -> list[list[str]]:
    rows = []
    for i, line in enumerate(read_lines(path), 1):
        try:
            samples = json.loads(line)["samples"]
            if not (isinstance(samples, list) and samples and all(isinstance(s, str) for s in samples)):
                raise ValueError("not a list of samples")   # an explicit check: asserts vanish under python -O
        except (ValueError, KeyError, TypeError):
            raise InputError(f'{path}: line {i}: expected {{"samples": ["response", ...]}}') from None
        rows.append(samples)
    return rows


def file_report(path: str, jsonl: bool) -> dict:
    if not jsonl:
        flat = [tokenize(s) for s in read_lines(path)]
        return {"distinct-1": distinct_n(flat, 1), "distinct-2": distinct_n(flat, 2), "sentences": len(flat)}
    samples = [[tokenize(s) for s in row] for row in read_samples(path)]
    flat = [s for row in samples for s in row]
    r = {"distinct-1": distinct_n(flat, 1), "distinct-2": distinct_n(flat, 2)}
    for n in (1, 2):
        r[f"intra-distinct-{n}"], r[f"inter-distinct-{n}"] = intra_inter(samples, n)
        r[f"response-distinct-{n}"] = response_distinct(samples, n)
    return {**r, "sentences": len(flat)}


@command
def main(argv=None):
    p = Parser(prog="python -m eval.distinct", description="distinct-1/2 of response files.")
    p.add_argument("files", nargs="+", help="response files")
    p.add_argument("--jsonl", action="store_true", help="files are samples JSONL (several per context)")
    args = p.parse_args(argv)
    out = {path: file_report(path, args.jsonl) for path in args.files}
    print(json.dumps(out if len(out) > 1 else out[args.files[0]]))


if __name__ == "__main__":
    main()
