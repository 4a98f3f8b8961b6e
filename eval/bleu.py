"""Corpus BLEU-1..4 of a hypothesis file against one or more reference files, as JSON:

    python -m eval.bleu --hyps hyps.txt --refs refs.txt [--refs refs2.txt ...]

One sentence per line, files of the same length. The metric itself is vhred.metrics.bleu.
"""
import json

from vhred.cli import command, Parser
from vhred.errors import InputError
from vhred.metrics.bleu import corpus_bleu_n
from vhred.metrics.text import read_lines, tokenize


@command
def main(argv=None):
    p = Parser(prog="python -m eval.bleu", description="Corpus BLEU-1..4 of a hypothesis file.")
    p.add_argument("--hyps", required=True, help="one hypothesis per line")
    p.add_argument("--refs", required=True, action="append", help="one reference per line; repeat for more")
    args = p.parse_args(argv)
    hyps = read_lines(args.hyps)
    ref_files = [read_lines(r) for r in args.refs]
    for path, refs in zip(args.refs, ref_files):
        if len(refs) != len(hyps):
            raise InputError(f"{path} has {len(refs)} lines but {args.hyps} has {len(hyps)}")
    refs = [[tokenize(r[i]) for r in ref_files] for i in range(len(hyps))]
    result = corpus_bleu_n([tokenize(h) for h in hyps], refs)
    print(json.dumps({**result, "sentences": len(hyps), "references": len(ref_files)}))


if __name__ == "__main__":
    main()
