"""The reply critic trained as a human-or-model discriminator (Li et al. 2017): tried, not shipped.

    python -m eval.discriminator_critic --checkpoint RUN --out DIR [--split train|validation]
        [--contexts 30000] [--steps 3000]
    python -m eval.candidate_ceiling ceiling ... --critic DIR     # replay on rated draws

Each context's true reply is set against the model's own draws for it (8 beam searches per z,
as the chat draws; distinct, the true reply left out) and the true reply of another context;
the critic (vhred/critic.py's network, started from the model's encoders) learns to pick the
true one with a softmax over the six (4 draws with repeats when fewer, 1 other reply). A tenth
of the contexts is held out to measure that. DIR receives a copy of the run's model files and
critic.safetensors, so that `--critic DIR` ranks by it. docs/rating.md ("Tried first, and not
shipped") has the result: it learns its task and puts the readers' bad replies first.
"""
import os
import random
import shutil
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from vhred.cli import command, Parser
from vhred import checkpoint, critic, loading
from vhred.errors import InputError
from vhred.sources import split_dialogues
from vhred.candidates import generate
from vhred.decoding import DecodeOptions
from vhred.render import encode_turns

DRAWS, WRONG, BATCH = 8, 5, 32


def pairs_of(dialogues, sp, cfg, n: int, seed: int):
    """n (context, true reply) pairs as token ids, from every turn with a turn before it."""
    spots = [(d, t) for d, dia in enumerate(dialogues) for t in range(1, len(dia))]
    random.Random(seed).shuffle(spots)
    out = []
    for d, t in spots[:n]:
        turns = encode_turns(sp, dialogues[d][:t + 1], cfg.max_utt_len, cfg.max_context + 1)
        if turns[-1]:
            out.append((turns[:-1][-cfg.max_context:], turns[-1]))
    return out


def model_draws(model, pairs, seed: int):
    """Each pair's distinct beam-per-z draws, the true reply left out."""
    opts = DecodeOptions(num_samples=DRAWS, rank="none", seed=seed)
    out = []
    for s in range(0, len(pairs), 64):
        chunk = pairs[s:s + 64]
        found = generate(model, [c for c, _ in chunk], opts)
        out += [[list(r[0]) for r in row if list(r[0]) != true] for row, (_, true) in zip(found, chunk)]
    return out


def candidates_of(pairs, drawn, rng):
    """The true reply first, then WRONG - 1 of the model's draws and one other context's true reply."""
    out = []
    for (_, true), mine in zip(pairs, drawn):
        other = pairs[rng.randrange(len(pairs))][1]
        wrong = [mine[rng.randrange(len(mine))] for _ in range(WRONG - 1)] if mine else [other] * (WRONG - 1)
        out.append([true, *wrong, other])
    return out


def batch_loss(judge, pairs, cands):
    k = len(cands[0])
    h = judge.context([c for c, _ in pairs]).repeat_interleave(k, 0)       # (B*K, Hc)
    before = [len(c) for c, _ in pairs for _ in range(k)]                  # turns each reply follows
    logits = judge(h, [r for row in cands for r in row], before).view(len(pairs), k)  # (B, K)
    target = torch.zeros(len(pairs), dtype=torch.long)
    return F.cross_entropy(logits, target), (logits.argmax(1) == 0).float().mean().item()


@torch.no_grad()
def accuracy(judge, pairs, cands) -> float:
    judge.eval()
    hits = sum(batch_loss(judge, pairs[s:s + 64], cands[s:s + 64])[1] * len(pairs[s:s + 64])
               for s in range(0, len(pairs), 64))
    return hits / len(pairs)


@command
def main(argv=None):
    p = Parser(prog="python -m eval.discriminator_critic", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="a new folder: the run's model files and the critic")
    p.add_argument("--split", default="train", choices=["train", "validation"])
    p.add_argument("--contexts", type=int, default=30000)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if os.path.exists(args.out) and (not os.path.isdir(args.out) or os.listdir(args.out)):
        raise InputError(f"--out {args.out} exists; give a new folder (the run's model files and the critic are "
                         "written there, over any of the same names)")
    model, cfg, sp = loading.load_model(args.checkpoint)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    pairs = pairs_of(split_dialogues(cfg, args.split), sp, cfg, args.contexts, args.seed)
    if len(pairs) < 10:   # a tenth is held out to measure the critic on
        raise InputError(f"the {args.split} split gives {len(pairs)} contexts; give --contexts 10 or more")
    held = pairs[:len(pairs) // 10]
    train = pairs[len(held):]
    train_drawn, held_drawn = model_draws(model, train, args.seed), model_draws(model, held, args.seed)
    held_cands = candidates_of(held, held_drawn, random.Random(args.seed))
    judge = critic.from_model(model, cfg.arch)
    opt = torch.optim.Adam(judge.parameters(), lr=args.lr)
    print(f"{len(train)} contexts; held-out accuracy at start {accuracy(judge, held, held_cands):.3f}", flush=True)
    start = time.time()
    for step in range(1, args.steps + 1):
        judge.train()
        idx = [rng.randrange(len(train)) for _ in range(BATCH)]
        batch = [train[i] for i in idx]
        loss, _ = batch_loss(judge, batch, candidates_of(batch, [train_drawn[i] for i in idx], rng))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(judge.parameters(), 1.0)
        opt.step()
        if step % 250 == 0 or step == args.steps:
            print(f"step {step}: held-out accuracy {accuracy(judge, held, held_cands):.3f}, "
                  f"{(time.time() - start) / 60:.1f} min", flush=True)
    os.makedirs(args.out, exist_ok=True)
    src = checkpoint.resolve(args.checkpoint)
    folder = src if os.path.isdir(src) else os.path.dirname(src)
    for name in ("best.pt", "config.json", "tokenizer.model"):
        if os.path.isfile(os.path.join(folder, name)):
            shutil.copyfile(os.path.join(folder, name), os.path.join(args.out, name))
    import dataclasses
    print(critic.save({"weights": judge.state_dict(), "arch": dataclasses.asdict(cfg.arch),
                       "vocab_size": judge.encoder.vocab_size, "tokenizer_sha256": critic.tokenizer_sha256(sp),
                       "training": {"discriminator": True, "split": args.split, "steps": args.steps}}, args.out))


if __name__ == "__main__":
    main()
