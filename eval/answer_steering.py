"""Draws steered toward the words people answer a wh-question with (weighted decoding).

After a turn that asks what, where, when, why, who, which or how, the model seldom draws a fitting
answer, and no ranking can show one it did not draw (docs/rating.md). The run's answer table
(vhred/answers.py) knows which words people's answers to each wh-phrase hold ("what time":
<time>, o'clock; "how long": minutes, weeks). Weighted decoding (See et al. 2019, "What makes a
good conversation?") adds w x feature to each word's score at every step; here the feature is the
word's pmi with the wh-phrase, given to the SentencePiece pieces that spell a whole word (and to
those that start with a digit, for <num>), as a bias on the decoder's logits:

    logits'(v) = logits(v) + w x pmi(f, word(v))

Each of the chat's z draws is decoded twice, as the chat decodes it and steered; the two sets of
draws are pooled and the chat's ranking picks the shown five, so steering can only add replies
(a turn with no wh-question is decoded as the chat decodes it).

    python -m eval.answer_steering --checkpoint RUN --input contexts.jsonl --output sys-s.jsonl \
        [--weight 0.5] [--num-samples 5] [--show-steered]

Writes generate's JSONL (context, samples, scores); --show-steered adds, for each shown reply,
whether only a steered draw gave it ("steered"), and how many replies only steered draws gave
("new_replies"). Read on 40 new validation contexts ending in a wh-question
(docs/rating-rounds.md, "Rankings tried after the nineteenth round, not shipped"): fewer good
first replies, 12 of 40 at w = 0.5 and 9 at w = 1 against the chat's 17.
"""
import json
from dataclasses import replace

import torch

from eval.pooled_draws import shown_of
from vhred import answers, loading
from vhred.candidates import generate, same_reply
from vhred.cli import command, Parser
from vhred.decoding import DecodeOptions
from vhred.device import pick_device
from vhred.errors import InputError
from vhred.generate import read_contexts, replaceable_output
from vhred.render import encode_turns, response_text
from vhred.sources import spaced


class Steered:
    """The model with a (V,) bias added to its decoder's logits at every step; everything else
    is the model's own."""

    def __init__(self, model, bias: torch.Tensor):
        self.model, self.bias = model, bias

    def __getattr__(self, name):
        return getattr(self.model, name)

    def decode(self, token, cond, state):
        logits, state = self.model.decode(token, cond, state)               # (R, T, V)
        return logits + self.bias, state


def piece_words(sp) -> list[str | None]:
    """Each piece's word as the answer table counts it (answers.answer_words): "▁Weeks" -> "weeks",
    "▁7" -> "<num>"; None for a piece that does not start a word or is not a word."""
    out = []
    for i in range(sp.get_piece_size()):
        p = sp.id_to_piece(i)
        words = answers.answer_words(p[1:]) if p.startswith("\u2581") else set()
        out.append(next(iter(words)) if len(words) == 1 else None)
    return out


def bias(table: dict, words: list[str | None], turn: str, weight: float) -> torch.Tensor:
    """(V,) weight x pmi of each piece's word with the wh-phrase the turn asks; 0 elsewhere, and
    everywhere when it asks none."""
    pmi = answers.typical(table, turn)
    return torch.tensor([weight * pmi.get(w, 0.0) if w else 0.0 for w in words])


def replies_for(model, cfg, sp, table, words, context: list[str], opts: DecodeOptions, weight: float):
    """The shown opts.num_samples replies from the chat's draws and the same z's decoded steered,
    pooled and ranked as the chat ranks; for each, whether only a steered draw gave it; and how
    many replies only steered draws gave."""
    ids = encode_turns(sp, context, cfg.max_utt_len, cfg.max_context)
    wide = replace(opts, num_samples=opts.draws * opts.num_samples, rank="none", dedup=False)
    plain = generate(model, [ids], wide)[0]
    b = bias(table, words, context[-1], weight).to(model.embed.weight.device)
    steered = generate(Steered(model, b), [ids], wide)[0] if b.any() else []
    same = same_reply(sp)
    new = {same(r[0]) for r in steered} - {same(r[0]) for r in plain}
    shown = shown_of(model, cfg, sp, ids, plain + steered, opts)
    return shown, [same(r[0]) in new for r in shown], len(new)


@command
def main(argv=None):
    p = Parser(prog="python -m eval.answer_steering", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--input", required=True, help='JSONL, one {"context": [...]} per line')
    p.add_argument("--output", required=True)
    p.add_argument("--weight", type=float, default=0.5, help="w, the bias per nat of pmi (default %(default)s)")
    p.add_argument("--num-samples", type=int, default=5)
    p.add_argument("--show-steered", action="store_true",
                   help="add which shown replies only a steered draw gave, and how many replies only those draws gave")
    args = p.parse_args(argv)
    if not 0 <= args.weight <= 10:
        p.error(f"--weight must be in [0, 10], got {args.weight}")
    replaceable_output(args.input, args.output)
    contexts = read_contexts(args.input)[0]   # a bad input is refused before the output is touched
    model, cfg, sp = loading.load_model(args.checkpoint, pick_device("cpu"))
    if not model.latent:
        raise InputError(f"{args.checkpoint} is a {cfg.arch.model} model: steering pools each z's two decodings, "
                         "and it has no z")
    table = model.answers.table if model.answers else answers.from_run(args.checkpoint)
    words = piece_words(sp)
    opts = DecodeOptions(num_samples=args.num_samples).check()
    with open(args.output, "w") as out:
        for context in contexts:
            shown, only_steered, new = replies_for(model, cfg, sp, table, words, [spaced(t) for t in context], opts, args.weight)
            row = {"context": context, "samples": [response_text(sp, r[0], opts.max_len) for r in shown],
                   "scores": [round(r[1], 4) for r in shown]}
            if args.show_steered:
                row.update(steered=only_steered, new_replies=new)
            out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
