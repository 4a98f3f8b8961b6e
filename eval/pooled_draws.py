"""The chat's draws shared between two models: half from each, ranked by the first model's ranking.

Readers' first-reply misses are turns where none of a model's draws holds a fitting reply
(docs/rating.md). Two models trained alike make different mistakes; half of the 80 draws from
each, pooled, repeats dropped, faulty ones last, and ranked as the first model's chat ranks (its
critic + 2 x MMI when its folder holds a critic), keeps the chat's budget of draws and widens
what they hold. The two runs must share one tokenizer (runs of one config and data do).

    python -m eval.pooled_draws --checkpoint RUN --second RUN2 --input contexts.jsonl --output sys-p.jsonl

Writes generate's JSONL (context, samples, scores) and, per line, which shown replies only the
second model drew ("from_second"). `--committee` ranks the pool by the sum of both models'
rankings (each run's critic + 2 x MMI) instead of the first's alone (`--judge-only`: all 80 draws
the first model's, ranked so), as the chat's `--pool-with`
(vhred/candidates.py, drawn) now does; the chat keeps the best-ranked spelling of a repeated reply
where this script keeps the first drawn, as the rated rounds were made.
"""
import filecmp
import json
import os
from dataclasses import replace

from vhred import loading
from vhred.cli import command, Parser
from vhred.device import pick_device
from vhred.errors import InputError
from vhred.generate import read_contexts, replaceable_output
from vhred.candidates import _dedup, _rank, generate, same_reply, shown_filter
from vhred.decoding import DecodeOptions
from vhred.render import encode_turns, response_text
from vhred.sources import spaced


def shown_of(model, cfg, sp, ids: list[list[int]], pool: list, opts: DecodeOptions, judges=()):
    """What the chat shows from a pool of draws for one context, as vhred.candidates.candidates
    makes it: repeats dropped, ranked by model's ranking (plus the judges' own, summed), of two
    spellings of the same words the better ranked kept, faulty ones last, the first opts.num_samples."""
    same, keep = same_reply(sp), shown_filter(sp, cfg, opts)
    ranked = _dedup(_rank(model, [ids], [_dedup(pool)], opts, judges)[0], key=same)
    if keep:
        ranked = [r for r in ranked if keep(r[0])] + [r for r in ranked if not keep(r[0])]
    return ranked[:opts.num_samples]


def pooled(first, second, cfg, sp, context: list[str], opts: DecodeOptions, committee: bool = False,
           judge_only: bool = False):
    """The shown opts.num_samples replies from opts.draws x num_samples draws, half from each model,
    and for each whether only the second model drew it. committee: ranked by both models' scores;
    judge_only: every draw the first model's, ranked by both."""
    ids = encode_turns(sp, context, cfg.max_utt_len, cfg.max_context)
    half = replace(opts, num_samples=opts.draws * opts.num_samples // 2, rank="none", dedup=False)
    same = same_reply(sp)
    if judge_only:
        mine, theirs = generate(first, [ids], replace(half, num_samples=2 * half.num_samples))[0], []
    else:
        mine, theirs = generate(first, [ids], half)[0], generate(second, [ids], half)[0]
    shown = shown_of(first, cfg, sp, ids, mine + theirs, opts, [second] if committee or judge_only else ())
    drawn_by_first = {same(r[0]) for r in mine}
    return shown, [same(r[0]) not in drawn_by_first for r in shown]


@command
def main(argv=None):
    p = Parser(prog="python -m eval.pooled_draws", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="the first model: its tokenizer, config and ranking")
    p.add_argument("--second", required=True, help="the second model, with the same tokenizer")
    p.add_argument("--input", required=True, help='JSONL, one {"context": [...]} per line')
    p.add_argument("--output", required=True)
    p.add_argument("--num-samples", type=int, default=5)
    p.add_argument("--committee", action="store_true",
                   help="rank by the sum of both models' own ranking scores (critic + 2 x MMI for a run with a critic, MMI without)")
    p.add_argument("--judge-only", action="store_true",
                   help="every draw from --checkpoint, ranked as --committee ranks: the second model only judges")
    args = p.parse_args(argv)
    replaceable_output(args.input, args.output)
    contexts = read_contexts(args.input)[0]   # a bad input is refused before the output is touched
    if not filecmp.cmp(os.path.join(args.checkpoint, "tokenizer.model"), os.path.join(args.second, "tokenizer.model"),
                       shallow=False):
        raise InputError("the two runs have different tokenizers: pool draws of runs made with one config and data")
    first, cfg, sp = loading.load_model(args.checkpoint, pick_device("cpu"))
    second, _, _ = loading.load_model(args.second, pick_device("cpu"))
    opts = DecodeOptions(num_samples=args.num_samples).check()
    with open(args.output, "w") as out:
        for context in contexts:
            shown, from_second = pooled(first, second, cfg, sp, [spaced(t) for t in context], opts, args.committee,
                                        args.judge_only)
            out.write(json.dumps({"context": context, "samples": [response_text(sp, r[0], opts.max_len) for r in shown],
                                  "scores": [round(r[1], 4) for r in shown], "from_second": from_second}) + "\n")


if __name__ == "__main__":
    main()
