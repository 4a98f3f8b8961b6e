"""The full evaluation of a checkpoint on a split, with the multi-sample protocol of the
latent-variable dialogue literature (Zhao et al. 2017; DialogWAE, Gu et al. 2019):

    python -m eval.evaluate --checkpoint runs/x/best.pt --split test --num-samples 10

For every utterance of the split that has a turn before it (context: up to max_context earlier
turns), N responses are sampled (VHRED: z from the prior; HRED: from the decoder alone) and
scored against the reference: multi-sample BLEU-1..4 precision / recall / F1, intra and inter
distinct-1/2 and distinct-1/2 within single responses, mean response length. The likelihood side
reports NLL per token and perplexity from the ELBO and from an importance-weighted bound with K samples, KL per utterance and active units.
Writes results.json, results.md and the samples (samples-<split>.jsonl) into the run folder.
"""
import argparse
import json
import math
import os
import sys
import time

import torch

from vhred import checkpoint, sources
from vhred.checkpoint import CheckpointError
from vhred.config import ConfigError
from vhred.dataset import DialogueData
from vhred.generate import DecodeOptions, generate_file
from vhred.model import perplexity
from vhred.sources import DataError
from vhred.train import evaluate as elbo_metrics, pick_device

from .bleu import dialogwae_bleu, multi_sample_bleu
from .distinct import intra_inter, response_distinct
from .text import tokenize


def split_dialogues(cfg, split: str) -> list[list[str]]:
    """The dialogues of a split of the checkpoint's own data source."""
    if cfg.data == "dailydialog":
        dialogues = sources.read_dailydialog(sources.find_dailydialog(cfg.data_dir))[split]
    else:
        dialogues = [d for s, d in sources.iter_jsonl(cfg.data, cfg.seed) if s == split]
    dialogues = [d for d in dialogues if len(d) > 1]
    return dialogues[:cfg.max_dialogues] if cfg.max_dialogues else dialogues


def context_pairs(dialogues, max_context: int) -> list[tuple[list[str], str]]:
    """(context, reference) for every utterance that has at least one turn before it."""
    return [(d[max(0, n - max_context):n], d[n]) for d in dialogues for n in range(1, len(d))]


def sample_metrics(samples: list[list[str]], refs: list[str]) -> dict:
    tok_samples = [[tokenize(s) for s in row] for row in samples]
    tok_refs = [tokenize(r) for r in refs]
    out = {}
    for n in range(1, 5):
        for k, v in multi_sample_bleu(tok_samples, tok_refs, n).items():
            out[f"bleu-{n}-{k}"] = v
    for k, v in multi_sample_bleu(tok_samples, tok_refs, 3, score=dialogwae_bleu).items():
        out[f"dialogwae-bleu-{k}"] = v
    for n in (1, 2):
        out[f"intra-distinct-{n}"], out[f"inter-distinct-{n}"] = intra_inter(tok_samples, n)
        out[f"response-distinct-{n}"] = response_distinct(tok_samples, n)
    lengths = [len(s) for row in tok_samples for s in row]
    out["mean_length"] = sum(lengths) / len(lengths)
    return out


@torch.inference_mode()
def iw_nll(model, data: DialogueData, k: int, batch_size: int, max_batches: int = 0, seed: int = 0) -> float:
    """Importance-weighted NLL per token: -sum_n log(1/K sum_k w_nk) / tokens."""
    from tqdm import tqdm
    torch.manual_seed(seed)
    total, tokens = 0.0, 0
    batches = data.batches(batch_size, shuffle=False)
    batches = batches[:max_batches] if max_batches else batches
    device = next(model.parameters()).device
    for idx in tqdm(batches, desc=f"IW bound, K={k}", unit="batch"):
        b = data.batch(idx).to(device)
        w, n = model.log_weights(b.tokens, b.lens, b.turns, k)              # (T, K)
        total -= (torch.logsumexp(w, dim=1) - math.log(k)).sum().item()
        tokens += n
    return total / max(tokens, 1)


def likelihood_metrics(model, cfg, sp, dialogues, k: int, max_batches: int) -> dict:
    data = DialogueData.from_dialogues(dialogues, sp, cfg.max_utt_len, cfg.max_context)
    device = next(model.parameters()).device
    m = elbo_metrics(model, data, cfg.batch_size, device, max_batches, cfg.seed)
    iw = iw_nll(model, data, k, cfg.batch_size, max_batches, cfg.seed)
    return {"elbo_nll_per_token": m["elbo_per_token"], "elbo_ppl": m["ppl"],
            f"iw{k}_nll_per_token": iw, f"iw{k}_ppl": perplexity(iw),
            "kl_per_utt": m["kl_per_utt"], "active_units": m["active_units"],
            "reconstruction_nll_per_token": m["nll_per_token"]}


def markdown(results: dict, title: str) -> str:
    lines = [f"# {title}", "", "| metric | value |", "|---|---|"]
    for key, value in results["metrics"].items():
        lines.append(f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |")
    lines += ["", f"Settings: {json.dumps(results['settings'])}"]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description="Multi-sample BLEU, distinct-n and likelihood of a checkpoint.")
    p.add_argument("--checkpoint", required=True, help="a run folder or .pt file")
    p.add_argument("--split", default="test", choices=["validation", "test"])
    p.add_argument("--num-samples", type=int, default=10)
    p.add_argument("--max-contexts", type=int, default=0, help="score only the first N contexts (quick checks)")
    p.add_argument("--iw-samples", type=int, default=50, help="K of the importance-weighted bound")
    p.add_argument("--max-len", type=int, default=30)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu or cuda")
    args = p.parse_args(argv)
    try:
        path = checkpoint.resolve(args.checkpoint)
        model, cfg, sp = checkpoint.load_model(path, str(pick_device(args.device)))
        dialogues = split_dialogues(cfg, args.split)
    except (CheckpointError, DataError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    pairs = context_pairs(dialogues, cfg.max_context)
    pairs = pairs[:args.max_contexts] if args.max_contexts else pairs
    opts = DecodeOptions(num_samples=args.num_samples, max_len=args.max_len, method="sample",
                         temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    t0 = time.time()
    samples = [s for _, s, _ in generate_file(model, cfg, sp, [c for c, _ in pairs], opts)]
    metrics = {"contexts": len(pairs), **sample_metrics(samples, [r for _, r in pairs])}
    # the likelihood over the same utterances: with --max-contexts, the dialogues they come from
    if args.max_contexts:
        used, count = [], 0
        for d in dialogues:
            if count >= len(pairs):
                break
            used.append(d)
            count += len(d) - 1
        dialogues = used
    metrics.update(likelihood_metrics(model, cfg, sp, dialogues, args.iw_samples, 0))
    run_dir = os.path.dirname(path)
    results = {"checkpoint": path, "model": cfg.model, "split": args.split, "metrics": metrics,
               "settings": {**vars(args), "bleu": "sentence BLEU-n, uniform weights, nltk smoothing method 1; "
                                    "dialogwae-bleu: trigram weights, method 7 (as DialogWAE's code)",
                            "tokenize": "eval.text.tokenize (lower case, words and punctuation)"},
               "seconds": time.time() - t0}
    with open(os.path.join(run_dir, f"samples-{args.split}.jsonl"), "w", encoding="utf-8") as f:
        for (ctx, ref), s in zip(pairs, samples):
            f.write(json.dumps({"context": ctx, "reference": ref, "samples": s}, ensure_ascii=False) + "\n")
    with open(os.path.join(run_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(run_dir, "results.md"), "w") as f:
        f.write(markdown(results, f"{cfg.model} on the {args.split} split ({os.path.basename(path)})"))
    print(markdown(results, f"{cfg.model} on {args.split}"))


if __name__ == "__main__":
    main()
