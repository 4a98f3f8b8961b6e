"""Choose decoding and ranking by measurement on a fixed set of held-out contexts (docs/rating.md).

    python -m eval.ranking_sweep --checkpoint RUN [--contexts 200] [--out sweep]

1. Fixed contexts: --contexts test-split (context, reference) pairs drawn with seed 0 from all of
   them (vhred.metrics.protocol.context_pairs), the same for every setting.
2. Candidates: 10 per context for each decoding (greedy words per prior z; nucleus sampling at
   a lower temperature), each with log p(r | c) and log p(r | neutral) (K = RANK_SAMPLES z
   samples, as ranking scores them) and its surface faults; cached in OUT/candidates.jsonl.
3. Sweep the MMI family [log p(r|c) - lambda log p(r)] / T + gamma T over lambda and gamma, with
   and without dropping faulty candidates first, as the chat shows them (repeats dropped, best 5
   of 10): single-reference BLEU-2 of the top-1 and multi-sample BLEU-2 F1 of the five, the
   fault share, mean length, the top-1's log-likelihood per token (fluency) and inter-distinct-2.
   Prints a markdown table per decoding and writes OUT/sweep.json.
"""
import json
import os
import random

import torch

from vhred import checkpoint, loading
from vhred.cli import command, Parser
from vhred.errors import InputError
from vhred.sources import split_dialogues
from vhred.lexicon import training_lexicon
from vhred.candidates import generate
from vhred.decoding import DecodeOptions
from vhred.render import encode_turns, pretty, response_text
from vhred.metrics.bleu import multi_sample_bleu, sentence_bleu_n
from vhred.metrics.distinct import intra_inter
from vhred.metrics.protocol import context_pairs
from vhred.metrics.surface import faults
from vhred.metrics.text import tokenize
from vhred.scoring import log_likelihoods, NEUTRAL, RANK_SAMPLES

DECODINGS = {
    "greedy": dict(method="greedy"),
    "nucleus-t0.7": dict(method="sample", temperature=0.7, top_p=0.9),
}
LAMBDAS = (0.0, 0.25, 0.5, 0.75, 1.0)
GAMMAS = (0.0, 0.02, 0.05, 0.1)
SHOWN, DRAWN = 5, 10


def fixed_pairs(cfg, n: int, seed: int = 0):
    pairs = context_pairs(split_dialogues(cfg, "test"), cfg.max_context)
    picked = sorted(random.Random(seed).sample(range(len(pairs)), min(n, len(pairs))))
    return [pairs[i] for i in picked]


def candidates(model, cfg, sp, pairs, known, batch: int = 25) -> dict:
    """{decoding: [[{text, lp, lp0, n, faults}, ...] per context]}"""
    out = {}
    for name, kw in DECODINGS.items():
        opts = DecodeOptions(num_samples=DRAWN, rank="none", dedup=False, **kw)
        rows = []
        for start in range(0, len(pairs), batch):
            ctx = [encode_turns(sp, c, cfg.max_utt_len, cfg.max_context) for c, _ in pairs[start:start + batch]]
            found = generate(model, ctx, opts)
            flat_c = [c for c, r in zip(ctx, found) for _ in r]
            flat_r = [x[0] for r in found for x in r]
            lp, n = log_likelihoods(model, flat_c, flat_r, RANK_SAMPLES, 0)
            lp0, _ = log_likelihoods(model, [NEUTRAL] * len(flat_r), flat_r, RANK_SAMPLES, 0)
            it = iter(zip(flat_r, lp, lp0, n))
            for r in found:
                row = []
                for _ in r:
                    ids, a, b, t = next(it)
                    text = response_text(sp, ids, opts.max_len)
                    row.append({"text": text, "lp": a, "lp0": b, "n": t, "faults": faults(text, known)})
                rows.append(row)
            print(f"{name}: {len(rows)}/{len(pairs)} contexts", flush=True)
        out[name] = rows
    return out


def shown(row, lam: float, gamma: float, drop_faulty: bool) -> list[dict]:
    """What the chat would show: repeats dropped, faulty ones too (if asked), best SHOWN first."""
    seen, kept = set(), []
    for c in row:
        if c["text"] not in seen and not (drop_faulty and any(c["faults"].values())):
            seen.add(c["text"])
            kept.append(c)
    if drop_faulty and len(kept) < SHOWN:   # fewer clean ones than shown: fill with the rest
        kept += [c for c in row if c not in kept and c["text"] not in seen][:SHOWN - len(kept)]
    key = lambda c: (c["lp"] - lam * c["lp0"]) / c["n"] + gamma * c["n"]
    return sorted(kept, key=key, reverse=True)[:SHOWN]


def measure(rows, refs, lam, gamma, drop_faulty) -> dict:
    lists = [shown(row, lam, gamma, drop_faulty) for row in rows]
    top = [l[0] for l in lists if l]
    tok5 = [[tokenize(c["text"]) for c in l] for l in lists]
    tref = [tokenize(r) for r in refs]
    bleu1 = sum(sentence_bleu_n(tokenize(l[0]["text"]), [r], 2) for l, r in zip(lists, tref) if l) / len(refs)
    five = [c for l in lists for c in l]
    return {"lambda": lam, "gamma": gamma, "drop_faulty": drop_faulty,
            "top1_bleu2": bleu1, "five_bleu2_f1": multi_sample_bleu(tok5, tref, 2)["f1"],
            "top1_fault": sum(any(c["faults"].values()) for c in top) / len(top),
            "five_fault": sum(any(c["faults"].values()) for c in five) / len(five),
            "top1_nonword": sum(c["faults"].get("non_word", False) for c in top) / len(top),
            "top1_len": sum(len(tokenize(c["text"])) for c in top) / len(top),
            "top1_ll": sum(c["lp"] / c["n"] for c in top) / len(top),
            "five_inter_d2": intra_inter(tok5, 2)[1], "shown": len(five) / len(lists)}


def table(results) -> str:
    cols = ["lambda", "gamma", "drop_faulty", "top1_bleu2", "five_bleu2_f1", "top1_fault", "five_fault",
            "top1_nonword", "top1_len", "top1_ll", "five_inter_d2", "shown"]
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)
    return "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] +
                     ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in results])


def cached_candidates(cache: str, made_by: dict) -> dict | None:
    """The candidates an earlier run drew into cache for the same checkpoint file and contexts,
    or None: rows of another checkpoint or count were scored against these references before."""
    try:
        with open(cache) as f:
            saved = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        print(f"{cache} is not readable as this command's candidates: drawn again")
        return None
    if not isinstance(saved, dict) or saved.get("made_by") != made_by:
        print(f"{cache} holds the draws of another checkpoint or --contexts: drawn again")
        return None
    return saved["candidates"]


@command
def main(argv=None):
    p = Parser(prog="python -m eval.ranking_sweep", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--contexts", type=int, default=200)
    p.add_argument("--out", default="sweep")
    args = p.parse_args(argv)
    if args.contexts < 1:
        raise InputError(f"--contexts must be at least 1, got {args.contexts}")
    torch.manual_seed(0)
    os.makedirs(args.out, exist_ok=True)
    path = checkpoint.resolve(args.checkpoint)
    model, cfg, sp = loading.load_model(path)
    pairs = fixed_pairs(cfg, args.contexts)
    cache = os.path.join(args.out, "candidates.jsonl")
    made_by = {"checkpoint": os.path.realpath(path), "bytes": os.path.getsize(path),
               "mtime_ns": os.stat(path).st_mtime_ns, "contexts": len(pairs)}
    cands = cached_candidates(cache, made_by)
    if cands is None:   # none yet, or drawn for another checkpoint or number of contexts
        cands = candidates(model, cfg, sp, pairs, training_lexicon(cfg))
        with open(cache, "w") as f:
            json.dump({"made_by": made_by, "candidates": cands}, f)
    refs = [pretty(r) for _, r in pairs]
    report = {}
    for name, rows in cands.items():
        results = [measure(rows, refs, lam, g, drop) for drop in (False, True) for lam in LAMBDAS for g in GAMMAS]
        report[name] = results
        print(f"\n### {name} ({len(rows)} contexts, {DRAWN} drawn, best {SHOWN} shown)\n\n{table(results)}")
    with open(os.path.join(args.out, "sweep.json"), "w") as f:
        json.dump({"checkpoint": path, "contexts": len(pairs), "results": report}, f, indent=1)


if __name__ == "__main__":
    main()
