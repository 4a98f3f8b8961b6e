"""Sample responses: N per context, z drawn from the prior, all N decoded in one batch.

    python -m vhred.generate --checkpoint runs/x/best.pt --input contexts.jsonl \\
        --output samples.jsonl --num-samples 10

Input lines are {"context": ["utt", ...]}; each output line adds "samples": [...] (and
"scores": per-token log-likelihoods when --rank is given).
"""
import argparse
import glob
import json
import math
import os
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F

from . import checkpoint
from .cli import command, program
from .device import pick_device
from .errors import CheckpointError, InputError
from .dataset import collate
from .model import VHRED
from .sources import normalise
from .tokenizer import BOS, EOS, PAD


@dataclass
class DecodeOptions:
    """How responses are decoded: the one source of defaults for chat, generate, eval and the API.

    Greedy words per sampled z by default: VHRED's candidates still differ, because each has its
    own z from the prior (the paper and DialogWAE decode each z deterministically too), and they
    read better than words sampled at temperature 1. HRED has one greedy response per context."""
    num_samples: int = 5       # responses per context
    max_len: int = 30          # tokens per response, <eos> excluded
    min_len: int = 0           # no <eos> before this many tokens
    method: str = "greedy"     # "greedy" (per z for VHRED), "sample" or "beam"
    temperature: float = 1.0   # softmax temperature when sampling
    top_k: int = 0             # keep the k most likely tokens (0: all)
    top_p: float = 1.0         # keep the smallest set with probability >= top_p (nucleus)
    beam: int = 5              # beam width for method="beam"
    dedup: bool = True         # drop repeated responses of one context
    rank: bool = False         # order responses by per-token log-likelihood, best first
    seed: int = 0              # same seed, same samples

    def check(self):
        """Refuse impossible values (never replace them silently)."""
        if self.method not in ("sample", "greedy", "beam"):
            raise InputError(f"method must be sample, greedy or beam, got '{self.method}'")
        for name in ("num_samples", "max_len", "beam"):
            if not 1 <= getattr(self, name) <= MAX_COUNT:
                raise InputError(f"{name} must be between 1 and {MAX_COUNT}, got {getattr(self, name)}")
        if not 0 <= self.top_k <= MAX_COUNT or not 0 <= self.seed < 2 ** 63:
            raise InputError("top_k must be between 0 and 1000000, seed between 0 and 2^63 - 1")
        if not 0 <= self.min_len <= self.max_len:
            raise InputError("min_len must be between 0 and max_len")
        if not 0 < self.temperature < math.inf:
            raise InputError(f"temperature must be a positive finite number, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        return self


MAX_COUNT = 1_000_000   # no count of samples, tokens or beams beyond this is meant


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k / nucleus to -inf. logits (B, V)."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = F.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens before it already reach top_p; the top token always stays
        drop = torch.cumsum(probs, dim=-1) - probs >= top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits


def categorical(probs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One draw per row of probs (B, V), by inverting the row's CDF with one uniform number.

    torch.multinomial draws B*V exponentials per step, which took two thirds of decoding time on
    a CPU; this draws B uniforms. Tokens of probability 0 (filtered out) are never drawn."""
    cdf = probs.cumsum(-1)                                                  # (B, V)
    total = cdf[:, -1:].contiguous()                                        # (B, 1)
    u = torch.rand(total.shape, generator=gen, device=probs.device, dtype=cdf.dtype) * total
    idx = torch.searchsorted(cdf, u, right=True)                            # first cdf > u
    # u may round up to the total: then take the last token that has probability
    return torch.minimum(idx, torch.searchsorted(cdf, total)).squeeze(1)    # (B,)


def context_states(model: VHRED, contexts: list[list[list[int]]]) -> torch.Tensor:
    """The context RNN's state after the last turn of each context: (C, Hc)."""
    b = collate(contexts).to(next(model.parameters()).device)
    return model.final_states(b.tokens, b.lens, b.turns)                   # (C, Hc)


def conditions(model: VHRED, ctx: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """[h, z] for n samples per context, z ~ p(z | context): (C, Hc) -> (C*n, Hc + Z)."""
    ctx = ctx.repeat_interleave(n, dim=0)                                   # (C*n, Hc)
    if not model.latent:
        return ctx
    mean, logvar = model.prior(ctx)                                         # (C*n, Z) each
    eps = torch.randn(mean.shape, generator=gen, device=mean.device)
    return torch.cat([ctx, mean + torch.exp(0.5 * logvar) * eps], dim=-1)


def sample_tokens(model, cond, opts: DecodeOptions, gen) -> tuple[list[list[int]], torch.Tensor]:
    """Ancestral (or greedy) decoding of one response per row of cond; returns ids and
    their total log-likelihood under the model (temperature 1, no filtering)."""
    B, device = cond.shape[0], cond.device
    state = model.decoder_state(cond)
    token = torch.full((B, 1), BOS, dtype=torch.long, device=device)
    out = torch.full((B, opts.max_len), PAD, dtype=torch.long, device=device)
    logp = torch.zeros(B, device=device)
    alive = torch.ones(B, dtype=torch.bool, device=device)
    for t in range(opts.max_len + 1):   # max_len words, then <eos> is forced
        logits, state = model.decode(token, cond, state)                    # (B, 1, V)
        logits = logits[:, -1].float()
        logits[:, PAD] = logits[:, BOS] = float("-inf")
        if t < opts.min_len:
            logits[:, EOS] = float("-inf")
        if t == opts.max_len:
            nxt = torch.full((B,), EOS, dtype=torch.long, device=device)
        elif opts.method == "greedy":
            nxt = logits.argmax(-1)
        else:
            scaled = logits / opts.temperature if opts.temperature != 1 else logits
            probs = F.softmax(filter_logits(scaled, opts.top_k, opts.top_p), -1)
            nxt = categorical(probs, gen)
        step_logp = F.log_softmax(logits, -1).gather(1, nxt[:, None]).squeeze(1)
        logp += step_logp * alive
        if t < opts.max_len:
            out[:, t] = torch.where(alive & (nxt != EOS), nxt, PAD)
        alive &= nxt != EOS
        if not alive.any():
            break
        token = nxt[:, None]
    return [[i for i in row if i != PAD] for row in out.tolist()], logp


def beam_search(model, cond, opts: DecodeOptions, n_best: int) -> tuple[list[list[list[int]]], list[list[float]]]:
    """Beam search for each row of cond (B, C): n_best responses per row, by length-normalised
    log-likelihood. Rows are searched together, beams flattened into the batch."""
    B, K, device = cond.shape[0], opts.beam, cond.device
    cond_k = cond.repeat_interleave(K, 0)                                   # (B*K, C)
    state = model.decoder_state(cond_k)
    seqs = torch.full((B * K, 0), PAD, dtype=torch.long, device=device)
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0                                                      # one live beam at start
    token = torch.full((B * K, 1), BOS, dtype=torch.long, device=device)
    done = [[] for _ in range(B)]                                           # (score, ids) per row
    for t in range(opts.max_len + 1):
        logits, state = model.decode(token, cond_k, state)
        logp = F.log_softmax(logits[:, -1].float(), -1)                     # (B*K, V)
        logp[:, PAD] = logp[:, BOS] = float("-inf")
        if t < opts.min_len:
            logp[:, EOS] = float("-inf")
        if t == opts.max_len:                                               # only <eos> is left
            logp[:, :EOS] = logp[:, EOS + 1:] = float("-inf")
        V = logp.shape[-1]
        total = (scores.view(B * K, 1) + logp).view(B, K * V)
        top, idx = total.topk(2 * K, dim=-1)                                # (B, 2K)
        beam_idx, tok = idx // V, idx % V
        new_scores = torch.full((B, K), float("-inf"), device=device)
        pick = torch.zeros(B, K, dtype=torch.long, device=device)
        new_tok = torch.full((B, K), EOS, dtype=torch.long, device=device)
        for b in range(B):   # at most 2K candidates per row: finished ones leave, K live ones stay
            live = 0
            for j in range(2 * K):
                s, k, w = top[b, j].item(), beam_idx[b, j].item(), tok[b, j].item()
                if s == float("-inf"):
                    break
                if w == EOS:
                    if len(done[b]) < n_best or t == opts.max_len:
                        ids = seqs[b * K + k].tolist()
                        done[b].append((s / (len(ids) + 1), ids))
                elif live < K:
                    new_scores[b, live], pick[b, live], new_tok[b, live] = s, b * K + k, w
                    live += 1
        if all(len(d) >= n_best for d in done) or t == opts.max_len:
            break
        seqs = torch.cat([seqs[pick.view(-1)], new_tok.view(-1, 1)], dim=1)
        state = state[:, pick.view(-1)]
        scores, token = new_scores, new_tok.view(-1, 1)
    best = [sorted(d, key=lambda x: -x[0])[:n_best] for d in done]
    return [[ids for _, ids in d] for d in best], [[s for s, _ in d] for d in best]


@torch.inference_mode()
def generate(model: VHRED, contexts: list[list[list[int]]], opts: DecodeOptions) -> list[list[tuple[list[int], float]]]:
    """For each context (a list of utterances as token ids), opts.num_samples responses as
    (token ids, log-likelihood per token), all contexts and samples decoded as one batch."""
    opts.check()
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(opts.seed)
    model.eval()
    n, C = opts.num_samples, len(contexts)
    ctx = context_states(model, contexts)                                   # (C, Hc)
    if opts.method == "beam":
        if model.latent:   # one beam search per z sample, the best beam of each
            ids, scores = beam_search(model, conditions(model, ctx, n, gen), opts, 1)
            ids = [ids[i * n:(i + 1) * n] for i in range(C)]
            scores = [scores[i * n:(i + 1) * n] for i in range(C)]
            results = [[(x[0], s[0]) for x, s in zip(row, srow)] for row, srow in zip(ids, scores)]
        else:              # HRED has one distribution per context: its n best beams
            ids, scores = beam_search(model, conditions(model, ctx, 1, gen), opts, n)
            results = [list(zip(row, srow)) for row, srow in zip(ids, scores)]
    else:
        ids, logp = sample_tokens(model, conditions(model, ctx, n, gen), opts, gen)
        per_token = [lp / (len(x) + 1) for x, lp in zip(ids, logp.tolist())]
        results = [list(zip(ids[i * n:(i + 1) * n], per_token[i * n:(i + 1) * n])) for i in range(C)]
    return [_tidy(r, opts) for r in results]


def _tidy(responses, opts: DecodeOptions):
    if opts.dedup:
        seen, kept = set(), []
        for ids, s in responses:
            if tuple(ids) not in seen:
                seen.add(tuple(ids))
                kept.append((ids, s))
        responses = kept
    if opts.rank:
        responses = sorted(responses, key=lambda r: -r[1])
    return responses


# --- text in, text out -----------------------------------------------------------------------

def encode_turns(sp, turns: list[str], max_utt_len: int, max_context: int) -> list[list[int]]:
    """Utterance strings -> token ids, each cut to the model's length, the last max_context kept."""
    turns = [normalise(t) for t in turns][-max_context:]
    return [sp.encode(t)[:max_utt_len] for t in turns]


def newest_checkpoint(pattern: str = "runs/*/best.pt") -> str:
    found = sorted(glob.glob(pattern), key=os.path.getmtime)
    if not found:
        raise CheckpointError("no runs/*/best.pt found; train one with `make train DATA=dailydialog` "
                              "or pass --checkpoint")
    return found[-1]


def add_decode_args(p: argparse.ArgumentParser, num_samples: int | None = None):
    """The decoding flags of chat, generate and eval, their defaults read from DecodeOptions."""
    d = DecodeOptions(num_samples=num_samples or DecodeOptions.num_samples)
    p.add_argument("--checkpoint", help="a run folder or .pt file (default: the newest runs/*/best.pt)")
    p.add_argument("--num-samples", type=int, default=d.num_samples, help="responses per context (default %(default)s)")
    p.add_argument("--method", choices=["greedy", "sample", "beam"],
                   help=f"greedy words (per sampled z for VHRED), sampled words, or beam search "
                        f"(default {d.method}; sample when --temperature, --top-k or --top-p is given)")
    p.add_argument("--max-len", type=int, default=d.max_len, help="tokens per response (default %(default)s)")
    p.add_argument("--min-len", type=int, default=d.min_len, help="no end of turn before this many tokens (default %(default)s)")
    p.add_argument("--temperature", type=float, default=d.temperature, help="softmax temperature for --method sample (default %(default)s)")
    p.add_argument("--top-k", type=int, default=d.top_k, help="sample from the k most likely tokens, 0 for all (default %(default)s)")
    p.add_argument("--top-p", type=float, default=d.top_p, help="sample from the nucleus of this probability (default %(default)s)")
    p.add_argument("--beam", type=int, default=d.beam, help="beam width for --method beam (default %(default)s)")
    p.add_argument("--no-dedup", dest="dedup", action="store_false", help="keep repeated responses of a context")
    p.add_argument("--rank", action="store_true", help="order responses best first by per-token log-likelihood")
    p.add_argument("--seed", type=int, default=d.seed, help="same seed, same responses (default %(default)s)")
    p.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu or cuda (default %(default)s)")


def options_from_args(args) -> DecodeOptions:
    """DecodeOptions from the flags of add_decode_args, checked."""
    shaped = args.temperature != 1 or args.top_p != 1 or args.top_k != 0
    args.method = args.method or ("sample" if shaped else DecodeOptions.method)
    opts = DecodeOptions(**{f.name: getattr(args, f.name) for f in fields(DecodeOptions)}).check()
    if opts.method != "sample" and (opts.temperature != 1 or opts.top_p < 1 or opts.top_k):
        raise InputError("--temperature, --top-k and --top-p shape sampled words: add --method sample")
    return opts


def read_contexts(path: str) -> list[list[str]]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise InputError(f"{path} not found") from None
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text") from None
    contexts = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            ctx = json.loads(line)["context"]
            assert isinstance(ctx, list) and ctx and all(isinstance(u, str) for u in ctx)
        except (ValueError, KeyError, TypeError, AssertionError, RecursionError):
            raise InputError(f'{path}: line {lineno}: expected {{"context": ["utterance", ...]}}') from None
        contexts.append(ctx)
    if not contexts:
        raise InputError(f"{path} holds no contexts")
    return contexts


def generate_file(model, cfg, sp, contexts: list[list[str]], opts: DecodeOptions, batch_contexts: int = 64):
    """Yield (context, responses as text, scores), batch by batch, with a progress bar."""
    from tqdm import tqdm
    for start in tqdm(range(0, len(contexts), batch_contexts), desc="generate", unit="batch"):
        chunk = contexts[start:start + batch_contexts]
        ids = [encode_turns(sp, c, cfg.max_utt_len, cfg.max_context) for c in chunk]
        opts_b = replace(opts, seed=opts.seed + start)
        for ctx, responses in zip(chunk, generate(model, ids, opts_b)):
            yield ctx, [sp.decode(r) for r, _ in responses], [s for _, s in responses]


@command
def main(argv=None):
    p = argparse.ArgumentParser(prog=program("python -m vhred.generate"),
                                description="Decode responses for each context of a JSONL file.")
    add_decode_args(p)
    p.add_argument("--input", required=True, help='JSONL, one {"context": [...]} per line')
    p.add_argument("--output", required=True, help="JSONL written with a \"samples\" list per line")
    args = p.parse_args(argv)
    opts = options_from_args(args)
    model, cfg, sp = checkpoint.load_model(args.checkpoint or newest_checkpoint(), pick_device(args.device))
    contexts = read_contexts(args.input)
    tmp = args.output + ".tmp"
    with open(tmp, "w", encoding="utf-8") as out:
        for ctx, samples, scores in generate_file(model, cfg, sp, contexts, opts):
            row = {"context": ctx, "samples": samples}
            if opts.rank:
                row["scores"] = scores
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, args.output)


if __name__ == "__main__":
    main()
