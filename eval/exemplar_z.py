"""Replies decoded from the latent of people's replies to similar turns (an exemplar's z).

The model's first-reply failures are turns that ask for something ("What time does the train
leave?") where none of the prior's draws holds an answer (docs/rating.md). The training split
holds replies to turns like them. Each such reply r_j, read by the posterior with this context,
gives z_j = E q(z | c, r_j): the latent of "a reply like r_j, to this context". Decoded as the
chat decodes a prior draw (beam search per z), z_j's reply is the model's own words, shaped by
what people answered; the exemplar's text is never shown. These draws join the prior's, and the
chat's ranking (critic + 2 x MMI) picks the shown five from them all.

    python -m eval.exemplar_z --checkpoint RUN --input contexts.jsonl --output sys-x.jsonl \
        [--exemplars 20] [--num-samples 5]

Writes generate's JSONL (context, samples, scores). Exemplars come from `vhred nearest`'s index
of the checkpoint's own training split (TF-IDF over the last turn and, at half weight, the one
before). VHRED and CVAE only: they have a Gaussian posterior to read an exemplar with.
"""
import json
from dataclasses import replace

import torch

from eval.pooled_draws import shown_of
from vhred import loading
from vhred.cli import command, Parser
from vhred.dataset import collate
from vhred.errors import InputError
from vhred.generate import read_contexts, replaceable_output
from vhred.device import pick_device
from vhred.sources import split_dialogues
from vhred.candidates import generate, same_reply
from vhred.decoding import context_states, DecodeOptions
from vhred.render import encode_turns, response_text
from vhred.sources import spaced
from vhred.nearest import Index


@torch.inference_mode()
def exemplar_z(model, context: list[list[int]], replies: list[list[int]]) -> torch.Tensor:
    """(K, Z) posterior means of the K replies given one context (token ids, no specials)."""
    ctx = context_states(model, [context]).expand(len(replies), -1)          # (K, Hc)
    b = collate([[r] for r in replies]).to(ctx.device)
    enc = model.encode_utterances(b.tokens[:, 1:], b.lens - 1)              # (K, 2*Hu)
    mean, _ = model.posterior(ctx, enc)                                     # (K, Z)
    return mean.float()


def replies_for(model, cfg, sp, index, context: list[str], opts: DecodeOptions, k: int):
    """The shown opts.num_samples replies: the default draws and k exemplar draws, pooled, repeats
    dropped, faulty ones last, ranked as the chat ranks. Returns them, the exemplars' texts, for each
    shown reply whether only an exemplar's z drew it, and how many replies only those z drew."""
    ids = encode_turns(sp, context, cfg.max_utt_len, cfg.max_context)
    n = opts.num_samples
    prior = generate(model, [ids], replace(opts, num_samples=opts.draws * n, rank="none", dedup=False))[0]
    exemplars = index.nearest([context], k)[0] if k else []
    pooled = list(prior)
    if exemplars:
        ex_ids = [sp.encode(t)[:cfg.max_utt_len] for t in exemplars]
        z = exemplar_z(model, ids, ex_ids)                                  # (K, Z)
        found = generate(model, [ids] * len(z), replace(opts, num_samples=1, rank="none", dedup=False), z=z)
        pooled += [row[0] for row in found]                              # one draw per exemplar
    same = same_reply(sp)
    new = {same(r[0]) for r in pooled[len(prior):]} - {same(r[0]) for r in prior}   # a reply the prior also drew is the prior's
    shown = shown_of(model, cfg, sp, ids, pooled, opts)
    return shown, exemplars, [same(r[0]) in new for r in shown], len(new)


@command
def main(argv=None):
    p = Parser(prog="python -m eval.exemplar_z", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--input", required=True, help='JSONL, one {"context": [...]} per line')
    p.add_argument("--output", required=True)
    p.add_argument("--exemplars", type=int, default=20, help="training replies read as z per context (0: the default)")
    p.add_argument("--num-samples", type=int, default=5)
    p.add_argument("--show-exemplars", action="store_true",
                   help="add the exemplars' texts, which shown replies only they drew, and how many such replies")
    args = p.parse_args(argv)
    replaceable_output(args.input, args.output)
    contexts = read_contexts(args.input)[0]   # a bad input is refused before the output is touched
    model, cfg, sp = loading.load_model(args.checkpoint, pick_device("cpu"))
    if not hasattr(model, "posterior"):
        raise InputError(f"{args.checkpoint} is a {cfg.arch.model} model; exemplar z's are read by VHRED's or CVAE's "
                         "posterior")
    index = Index(split_dialogues(cfg, "train"), previous_weight=0.5)
    opts = DecodeOptions(num_samples=args.num_samples).check()
    with open(args.output, "w") as out:
        for context in contexts:
            shown, exemplars, from_exemplar, new = replies_for(model, cfg, sp, index, [spaced(t) for t in context], opts, args.exemplars)
            row = {"context": context, "samples": [response_text(sp, r[0], opts.max_len) for r in shown],
                   "scores": [round(r[1], 4) for r in shown]}
            if args.show_exemplars:
                row.update(exemplars=exemplars, from_exemplar=from_exemplar, new_replies=new)
            out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
