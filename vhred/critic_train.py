"""Train a run's reply critic (vhred/critic.py) on blind readers' labels.

    vhred critic --checkpoint runs/dailydialog-cpu-vhred --ratings $(cat eval/critic_rounds.txt) [--held-out DIR]

(eval/critic_rounds.txt: the 38 rounds the last rated critic learned from, as `make critic` trains;
`--ratings eval/ratings/*/` takes every round.)

Each DIR is a pointwise rating round written by `vhred rate pack` and answered by readers: its
key.json and rater*.txt files (eval/ratings/ holds the project's). Every rated reply is labelled
with the share of its readers who kept it. The critic, started from the model's embeddings and
encoders, first learns which turn a reply fits from the model's training split (response
selection: the reply people gave above the turns around it and a turn of another dialogue,
--pretrain steps), then to order the replies of one context as the readers did: a pairwise logistic
loss over every two replies of a context that the readers judged differently (RankNet, Burges et
al. 2005), weighted by how far apart their shares are. Rounds named with --held-out are not
trained on: the pairwise accuracy on them (the share of such pairs put in the readers' order, each
pair weighted by how far apart the readers' shares are) is printed before and after.
critic.safetensors is written into the run folder, where chat, generate, serve and the API rank by it (rank "auto", the default); with --pretrain, so is the
answer table of the same training split (answers.json, vhred/answers.py).
"""
import dataclasses
import json
import os
import random
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import answers, checkpoint, kept, limits, loading
from .cli import command, Parser, program
from .config import MAX_INT
from .critic import TURN, Critic, from_model, reply_ids, save, tokenizer_sha256
from .errors import DataError, InputError, TrainingError
from .rate import checked_rounds

CONTEXTS = 8        # contexts per step
REPLIES = 12        # rated replies of each, at most, per step
SELECTION = 16      # training-split contexts per pretraining step (--pretrain)
# Response selection on the training split before the readers' labels (--pretrain steps). Rated
# blind on 240 new contexts against the same critic without it, both on the same 32 rounds (forty-
# fourth to forty-ninth rounds, twelve readers): a good first reply +4.6 [+0.2, +9.4] points, the
# five +0.7 [-1.5, +2.7]; pairwise accuracy on ten later rounds 0.753 against 0.729 (docs/rating.md).
PRETRAIN = 1000


def rated_replies(folder: str) -> list[tuple[list[str], list[tuple[str, float]]]]:
    """One rating round's (context turns, [(reply text, share of readers who kept it)]), every
    reply its readers saw; a pairwise round has no such labels and is refused."""
    from .rate import rated_labels
    return [(turns, [(text, good / rated) for text, good, rated in replies]) for turns, replies in rated_labels(folder)]


def encoded(rounds: list[str], sp, cfg, ordered_only: bool = True) -> list[tuple[list[list[int]], list[tuple[list[int], float]]]]:
    """The rounds' contexts and replies as the model's token ids (text written as the corpus is);
    only the contexts whose replies the readers judged differently, unless ordered_only is False."""
    from .render import encode_turns
    from .sources import spaced
    out = []
    for folder in rounds:
        for turns, replies in rated_replies(folder):
            ctx = encode_turns(sp, [spaced(t) for t in turns], cfg.max_utt_len, cfg.max_context)
            rows = [(reply_ids(sp, text)[:cfg.max_utt_len], kept) for text, kept in replies]
            if not ordered_only or len({k for _, k in rows}) > 1:   # replies that all rate alike teach no order
                out.append((ctx, rows))
    return out


def pair_loss(critic: Critic, batch) -> torch.Tensor:
    """RankNet's loss over every two replies of a context with different shares kept:
    softplus(-(s_better - s_worse)), weighted by the difference of their shares."""
    replies, kept, owner = [], [], []
    for i, (_, rows) in enumerate(batch):
        for ids, k in rows:
            replies.append(ids)
            kept.append(k)
            owner.append(i)
    owner = torch.tensor(owner)
    rows = critic.context([ctx for ctx, _ in batch])[owner.to(critic.device)]  # each context read once: (R, ...)
    s = critic(rows, replies, [len(batch[i][0]) for i in owner.tolist()])  # (R,)
    kept, owner = torch.tensor(kept, device=s.device), owner.to(s.device)
    gap = kept[:, None] - kept[None, :]                                     # (R, R): > 0 where row beats column
    pairs = (owner[:, None] == owner[None, :]) & (gap > 0)
    margin = s[:, None] - s[None, :]
    return (F.softplus(-margin[pairs]) * gap[pairs]).sum() / gap[pairs].sum()


def corpus_dialogues(cfg, sp) -> list[list[list[int]]]:
    """The training split's dialogues of three turns or more, as the model's token ids."""
    from .sources import split_dialogues
    from .render import encode_turns
    try:
        dialogues = split_dialogues(cfg, "train")
    except (DataError, OSError) as e:
        raise DataError(f"the critic's pretraining reads the model's training split: {str(e).splitlines()[0]} "
                        f"(or train without it: --pretrain 0)") from None
    return [encode_turns(sp, d, cfg.max_utt_len, len(d)) for d in dialogues if len(d) > 2]


def selection_batch(dialogues, rng: random.Random, max_context: int, n: int):
    """n (context, [(reply, kept)]) of the training split for pretraining: the reply people gave
    (kept 1) above four a reader would not keep after that turn (kept 0): the turn itself said
    back, the turn after the reply (the other party's line), the same party's turn before (a
    reply to an earlier turn) and a turn of another dialogue."""
    out = []
    for _ in range(n):
        d = dialogues[rng.randrange(len(dialogues))]
        t = rng.randrange(1, len(d))
        other = dialogues[rng.randrange(len(dialogues))]
        wrong = [d[t - 1], other[rng.randrange(len(other))]] + d[t + 1:t + 2] + (d[t - 2:t - 1] if t > 1 else [])
        out.append((d[max(0, t - max_context):t], [(d[t], 1.0)] + [(w, 0.0) for w in wrong if w != d[t]]))
    return out


def _update(critic: Critic, opt, loss: torch.Tensor):
    opt.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(critic.parameters(), 1.0)
    opt.step()


@torch.no_grad()
def pair_accuracy(critic: Critic, data) -> float:
    """Of every two replies of a context the readers judged differently, the weighted share the
    critic puts in the readers' order (0.5 is chance)."""
    from .critic import scores
    right = total = 0.0
    for ctx, rows in data:
        s = scores(critic, [ctx] * len(rows), [ids for ids, _ in rows])
        for i, (_, ki) in enumerate(rows):
            for j, (_, kj) in enumerate(rows):
                if ki > kj:
                    total += ki - kj
                    right += (ki - kj) * (1.0 if s[i] > s[j] else 0.5 if s[i] == s[j] else 0.0)
    return right / total if total else float("nan")


def train(path: str, rounds: list[str], held_out: list[str], steps: int, lr: float, seed: int, turn: int = TURN,
          log=print, pretrain: int = PRETRAIN) -> dict:
    """Train a critic for a checkpoint's model on the rounds' labels; returns what critic.safetensors holds."""
    model, cfg, sp = loading.load_model(path, critic_file=False)   # the old critic, even a damaged one, is replaced
    data, held = encoded(rounds, sp, cfg), encoded(held_out, sp, cfg)
    if not data:
        raise InputError("the rounds hold no context whose replies the readers judged differently")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    critic = from_model(model, cfg.arch, turn)
    opt = torch.optim.Adam(critic.param_groups(lr))
    start_held = pair_accuracy(critic, held) if held else None
    log(f"critic: {len(data)} contexts, {sum(len(r) for _, r in data):,} rated replies"
        + (f"; held-out pairwise accuracy at start {start_held:.3f}" if held else ""))
    start, loss = time.time(), torch.tensor(float("nan"))
    if pretrain:
        # response selection on the training split first: which turn a reply fits, from far more
        # pairs than readers have labelled
        dialogues = corpus_dialogues(cfg, sp)
        for step in range(1, pretrain + 1):
            critic.train()
            loss = pair_loss(critic, selection_batch(dialogues, rng, cfg.max_context, SELECTION))
            _update(critic, opt, loss)
            if step % 100 == 0:
                log(f"pretraining step {step}: loss {loss.item():.3f}, {(time.time() - start) / 60:.1f} min")
        if held:
            log(f"held-out pairwise accuracy after pretraining {pair_accuracy(critic, held):.3f}")
    for step in range(1, steps + 1):
        critic.train()
        batch = [data[rng.randrange(len(data))] for _ in range(CONTEXTS)]
        batch = [(ctx, rng.sample(rows, min(len(rows), REPLIES))) for ctx, rows in batch]
        if not any(len({k for _, k in rows}) > 1 for _, rows in batch):
            continue
        loss = pair_loss(critic, batch)
        _update(critic, opt, loss)
        if step % 100 == 0:
            log(f"step {step}: loss {loss.item():.3f}, {(time.time() - start) / 60:.1f} min")
    result = {"steps": steps, "pretrain": pretrain, "lr": lr, "seed": seed, "loss": loss.item(), "minutes": (time.time() - start) / 60,
              "contexts": len(data), "replies": sum(len(r) for _, r in data),
              "rounds": [os.path.normpath(r) for r in rounds], "train_pair_accuracy": pair_accuracy(critic, data)}
    if held:
        result.update(held_out=[os.path.normpath(r) for r in held_out], held_out_pair_accuracy_start=start_held,
                      held_out_pair_accuracy=pair_accuracy(critic, held))
    return {"weights": critic.state_dict(), "arch": dataclasses.asdict(cfg.arch),
            "vocab_size": critic.encoder.vocab_size, "tokenizer_sha256": tokenizer_sha256(sp),
            "turn": turn, "training": result}


def parse_args(argv):
    p = Parser(prog=program("python -m vhred.critic_train"),
               description="Train a run's reply critic on blind readers' labels.")
    p.add_argument("--checkpoint", required=True, help="a run folder or a checkpoint in one; critic.safetensors is written into its folder")
    p.add_argument("--ratings", nargs="+", required=True, metavar="DIR",
                   help="pointwise rating rounds (key.json and rater*.txt), e.g. eval/ratings/*/")
    p.add_argument("--held-out", nargs="*", default=[], metavar="DIR", help="rounds to measure on, not train on (default: none)")
    p.add_argument("--steps", type=int, default=1200, help="optimiser steps of %d contexts (default %%(default)s)" % CONTEXTS)
    p.add_argument("--pretrain", type=int, default=PRETRAIN, metavar="STEPS",
                   help="first, STEPS steps of %d contexts of response selection on the model's training split "
                        "(default %%(default)s; 0: none)" % SELECTION)
    p.add_argument("--lr", type=float, default=3e-5, help="Adam's learning rate (default %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the critic's initial weights and the order it reads contexts in (default %(default)s)")
    p.add_argument("--turn", type=int, default=TURN, metavar="N",
                   help="match the reply's words with the first N words of the turn it answers (default %(default)s; 0: no)")
    args = p.parse_args(argv)
    limits.count("--steps", args.steps, 1, MAX_INT)
    limits.count("--turn", args.turn, 0, 1024)
    limits.count("--pretrain", args.pretrain, 0, MAX_INT)
    limits.count("--seed", args.seed, 0, 2 ** 63 - 1)
    limits.number("--lr", args.lr, 0, 1)
    if args.lr == 0:
        raise InputError("--lr must be above 0: at 0 the critic would not learn")
    rounds, args.held_out = checked_rounds("--ratings", args.ratings), checked_rounds("--held-out", args.held_out)
    held_real = {os.path.realpath(h) for h in args.held_out}   # one round however its path is written
    args.rounds = [r for r in rounds if os.path.realpath(r) not in held_real]
    if not args.rounds:
        raise InputError("every --ratings round is also --held-out: leave some to train on")
    return args


@command
def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    path = checkpoint.resolve(args.checkpoint)
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    state = train(path, args.rounds, args.held_out, args.steps, args.lr, args.seed, args.turn,
                  log=lambda m: print(m, file=sys.stderr, flush=True), pretrain=args.pretrain)
    if not all(torch.isfinite(w).all() for w in state["weights"].values()):   # the run's critic stays as it was
        raise TrainingError(f"the critic's weights became NaN/inf; nothing was written to {folder}: "
                            f"lower --lr (now {args.lr:g})")
    written = {"critic": save(state, folder), "kept": kept.save(kept.build(args.rounds), folder)}
    if args.pretrain:   # the training split is at hand: its answer table ranks beside the critic
        written["answers"] = answers.save(answers.from_run(path), folder)
    print(json.dumps({**written, **state["training"]}))


if __name__ == "__main__":
    main()
