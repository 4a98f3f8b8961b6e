"""Sample responses: N per context, z drawn from the prior, all N decoded in one batch.

    python -m vhred.generate --checkpoint runs/x/best.pt --input contexts.jsonl \\
        --output samples.jsonl --num-samples 10

Input lines are {"context": ["utt", ...]}; each output line adds "samples": [...] (readable
text, best first when ranked, a response cut at --max-len ending in " …") and "scores" (the
ranking score of each, or its per-token log-likelihood with --rank none).

A context's responses depend only on the seed and that context: each response draws its random
numbers from its own generator, seeded by (seed, the context's tokens, the sample's index), so
a context gives the same responses alone, in any batch, and in chat.
"""
import argparse
import glob
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F

from . import checkpoint
from .cli import command, program, text_lines
from .dataset import collate
from .device import pick_device
from .errors import CheckpointError, InputError
from .model import VHRED
from .sources import normalise
from .tokenizer import BOS, EOS, PAD

RANKS = ("none", "ll", "pmi")   # how candidates are ordered (see vhred/scoring.py)
CUT = " …"                      # appended to a response shown cut at the length limit


@dataclass
class DecodeOptions:
    """How responses are decoded: the one source of defaults for chat, generate, eval and the API.

    Greedy words per sampled z, ranked by PMI, by default: VHRED's candidates still differ,
    because each has its own z from the prior (the paper and DialogWAE decode each z
    deterministically too), they read better than words sampled at temperature 1, and PMI puts
    the candidates that fit the context first (README, "Results"). HRED has one greedy response
    per context."""
    num_samples: int = 5       # responses per context
    max_len: int = 30          # tokens per response, <eos> excluded
    min_len: int = 1           # no <eos> before this many printing tokens: never an empty reply (0 allows one)
    method: str = "greedy"     # "greedy" (per z for VHRED), "sample" or "beam"
    temperature: float = 1.0   # softmax temperature when sampling
    top_k: int = 0             # keep the k most likely tokens (0: all)
    top_p: float = 1.0         # keep the smallest set with probability >= top_p (nucleus)
    beam: int = 5              # beam width for method="beam"
    dedup: bool = True         # drop repeated responses of one context
    rank: str = "pmi"          # order responses best first: "pmi", "ll" (vhred/scoring.py) or "none"
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
        if isinstance(self.rank, bool):   # rank=True / False of earlier versions
            self.rank = RANKS[-1] if self.rank else "none"
        if self.rank not in RANKS:
            raise InputError(f"rank must be {', '.join(RANKS)}, got '{self.rank}'")
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


def categorical(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One draw per row of probs (B, V), by inverting the row's CDF with the row's uniform
    number u (B,) in [0, 1).

    torch.multinomial draws B*V exponentials per step, which took two thirds of decoding time on
    a CPU; this needs B uniforms. Tokens of probability 0 (filtered out) are never drawn."""
    cdf = probs.cumsum(-1)                                                  # (B, V)
    total = cdf[:, -1:].contiguous()                                        # (B, 1)
    u = u.to(cdf.dtype).unsqueeze(1) * total                                # (B, 1)
    idx = torch.searchsorted(cdf, u, right=True)                            # first cdf > u
    # u may round up to the total: then take the last token that has probability
    return torch.minimum(idx, torch.searchsorted(cdf, total)).squeeze(1)    # (B,)


def row_seed(seed: int, *parts) -> int:
    """A 63-bit seed from the decoding seed and what identifies a row (its context's tokens, the
    sample's index): stable across processes and machines, unlike Python's hash()."""
    digest = hashlib.blake2b(repr((seed, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def keyed_noise(seeds: list[int], z_dim: int, steps: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's own random numbers: normals (B, z_dim) for z and uniforms (B, steps) for its
    words, from a generator seeded with that row's seed, so no row's draws depend on another's.
    One small CPU generator per row costs microseconds; decoding itself stays batched."""
    eps, u = [], []
    for s in seeds:
        g = torch.Generator().manual_seed(s)
        eps.append(torch.randn(z_dim, generator=g))
        u.append(torch.rand(steps, generator=g))
    return torch.stack(eps).to(device), torch.stack(u).to(device)           # (B, Z), (B, steps)


def context_states(model: VHRED, contexts: list[list[list[int]]]) -> torch.Tensor:
    """The context RNN's state after the last turn of each context: (C, Hc)."""
    b = collate(contexts).to(next(model.parameters()).device)
    return model.final_states(b.tokens, b.lens, b.turns)                   # (C, Hc)


def conditions(model: VHRED, ctx: torch.Tensor, n: int, eps: torch.Tensor, z=None) -> torch.Tensor:
    """[h, z] for n samples per context, z ~ p(z | context) with the rows' normals eps (C*n, Z),
    or each context's given z (C, Z; a row of NaN for none): (C, Hc) -> (C*n, Hc + Z)."""
    ctx = ctx.repeat_interleave(n, dim=0)                                   # (C*n, Hc)
    if not model.latent:
        return ctx
    mean, logvar = model.prior(ctx)                                         # (C*n, Z) each
    sampled = mean + torch.exp(0.5 * logvar) * eps
    if z is not None:   # a context's given z; a row of NaN: draw it from the prior
        given = z.to(ctx).repeat_interleave(n, dim=0)
        sampled = torch.where(torch.isnan(given), sampled, given)
    return torch.cat([ctx, sampled], dim=-1)


class Response(tuple):
    """One decoded response: the (ids, score) pair every caller unpacks, and `.z`, the latent
    it was decoded from ((Z,) on the CPU; None for HRED), to keep, reuse or look at."""

    def __new__(cls, ids: list[int], score: float, z: torch.Tensor | None = None):
        self = super().__new__(cls, (ids, score))
        self.z = z
        return self


def _responses(ids, scores, cond, model, n: int) -> list[list[Response]]:
    """Rows of (ids, score) grouped n per context, each with the z of its row of cond."""
    z = cond[:, cond.shape[1] - model.cfg.z_dim:].float().cpu() if model.latent else None
    rows = [Response(i, s, None if z is None else z[k]) for k, (i, s) in enumerate(zip(ids, scores))]
    return [rows[c:c + n] for c in range(0, len(rows), n)]


def blank_tokens(model, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(V,) bool masks: the tokens that print nothing (<eos>, the specials and "▁" alone), and
    the "▁" pieces alone (model.blank_ids, from the tokenizer). Blank tokens do not count
    towards opts.min_len, so min_len = 1 means a reply a user can read, never an empty one."""
    space = torch.zeros(model.embed.num_embeddings, dtype=torch.bool, device=device)
    space[model.blank_ids] = True
    blank = space.clone()
    blank[[PAD, BOS, EOS]] = True
    return blank, space


def _no_empty_reply(scores, words, last, min_len: int, space) -> None:
    """In place on (R, V) scores: a row with fewer than min_len printing tokens may not end,
    nor put a second "▁" after a "▁" (which would only put off its first word to the end)."""
    short = words < min_len                                                 # (R,)
    scores[short, EOS] = float("-inf")
    scores.masked_fill_((short & space[last])[:, None] & space[None, :], float("-inf"))


def sample_tokens(model, cond, opts: DecodeOptions, u: torch.Tensor) -> tuple[list[list[int]], torch.Tensor]:
    """Ancestral (or greedy) decoding of one response per row of cond, sampling step t with the
    row's uniform u[:, t]; returns ids and their total log-likelihood under the model
    (temperature 1, no filtering)."""
    B, device = cond.shape[0], cond.device
    state = model.decoder_state(cond)
    token = torch.full((B, 1), BOS, dtype=torch.long, device=device)
    out = torch.full((B, opts.max_len), PAD, dtype=torch.long, device=device)
    logp = torch.zeros(B, device=device)
    alive = torch.ones(B, dtype=torch.bool, device=device)
    blank, space = blank_tokens(model, device)                              # (V,) each
    words = torch.zeros(B, dtype=torch.long, device=device)                 # printing tokens so far
    for t in range(opts.max_len + 1):   # max_len words, then <eos> is forced
        logits, state = model.decode(token, cond, state)                    # (B, 1, V)
        logits = logits[:, -1].float()
        logits[:, PAD] = logits[:, BOS] = float("-inf")
        if t < opts.max_len:
            _no_empty_reply(logits, words, token[:, 0], opts.min_len, space)
        if t == opts.max_len:
            nxt = torch.full((B,), EOS, dtype=torch.long, device=device)
        elif opts.method == "greedy":
            nxt = logits.argmax(-1)
        else:
            scaled = logits / opts.temperature if opts.temperature != 1 else logits
            probs = F.softmax(filter_logits(scaled, opts.top_k, opts.top_p), -1)
            nxt = categorical(probs, u[:, t])
        step_logp = F.log_softmax(logits, -1).gather(1, nxt[:, None]).squeeze(1)
        logp += step_logp * alive
        if t < opts.max_len:
            out[:, t] = torch.where(alive & (nxt != EOS), nxt, PAD)
        words += ~blank[nxt]
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
    blank, space = blank_tokens(model, device)                              # (V,) each
    for t in range(opts.max_len + 1):
        logits, state = model.decode(token, cond_k, state)
        logp = F.log_softmax(logits[:, -1].float(), -1)                     # (B*K, V)
        logp[:, PAD] = logp[:, BOS] = float("-inf")
        if t < opts.max_len:
            words = (~blank[seqs]).sum(1)                                   # (B*K,) printing tokens so far
            _no_empty_reply(logp, words, token[:, 0], opts.min_len, space)
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
def generate(model: VHRED, contexts: list[list[list[int]]], opts: DecodeOptions, z=None) -> list[list[Response]]:
    """For each context (a list of utterances as token ids), opts.num_samples responses as
    Response (token ids, score; .z), all contexts and samples decoded as one batch. The score is
    the ranking score (opts.rank, best first) or, with rank "none", the per-token log-likelihood
    of the decoding. z (C, Z), for VHRED: decode every response of context c from z[c] instead
    of sampling it from the prior (then only sampled words make them differ); a row of NaN
    leaves that context's z to the prior."""
    opts.check()
    device = next(model.parameters()).device
    model.eval()
    n = opts.num_samples
    seeds = [row_seed(opts.seed, ctx, i) for ctx in contexts for i in range(n)]
    steps = opts.max_len + 1 if opts.method == "sample" else 0
    eps, u = keyed_noise(seeds, model.cfg.z_dim if model.latent else 0, steps, device)
    ctx = context_states(model, contexts)                                   # (C, Hc)
    if opts.method == "beam" and not model.latent:   # one distribution per context: its n best beams
        ids, scores = beam_search(model, ctx, opts, n)
        results = [[Response(i, s) for i, s in zip(row, srow)] for row, srow in zip(ids, scores)]
    elif opts.method == "beam":                      # one beam search per z sample, its best beam
        cond = conditions(model, ctx, n, eps, z)
        ids, scores = beam_search(model, cond, opts, 1)
        results = _responses([x[0] for x in ids], [s[0] for s in scores], cond, model, n)
    else:
        cond = conditions(model, ctx, n, eps, z)
        ids, logp = sample_tokens(model, cond, opts, u)
        per_token = [lp / (len(x) + 1) for x, lp in zip(ids, logp.tolist())]
        results = _responses(ids, per_token, cond, model, n)
    results = [_dedup(r) if opts.dedup else r for r in results]
    return _rank(model, contexts, results, opts) if opts.rank != "none" else results


def candidates(model: VHRED, contexts: list[list[list[int]]], opts: DecodeOptions,
               same=None, z=None) -> list[list[Response]]:
    """What the chat shows for each context: when repeats are dropped or candidates ranked,
    2N are drawn and the first N kept (so N distinct ones usually remain, and ranked, they are
    the best N of 2N); otherwise the N decoded. same(ids) -> text, when given, also drops
    responses whose text repeats an earlier one's (other pieces can spell the same words)."""
    n = opts.num_samples
    wide = replace(opts, num_samples=2 * n) if opts.dedup or opts.rank != "none" else opts
    results = generate(model, contexts, wide, z)
    if opts.dedup and same:
        results = [_dedup(row, key=same) for row in results]
    return [r[:n] for r in results]


def _dedup(responses, key=tuple):
    """Drop repeated responses of one context (the same key(ids)), keeping the first of each."""
    seen, kept = set(), []
    for r in responses:
        if key(r[0]) not in seen:
            seen.add(key(r[0]))
            kept.append(r)
    return kept


def _rank(model, contexts, results, opts: DecodeOptions):
    """Score every candidate of every context in one batch, then order each context's best first."""
    from .scoring import RANK_SAMPLES, score_ids  # scoring builds on this module's helpers
    pairs = [(c, ids) for c, r in zip(contexts, results) for ids, _ in r]
    scores = iter(score_ids(model, [c for c, _ in pairs], [r for _, r in pairs], opts.rank, RANK_SAMPLES, opts.seed))
    return [sorted([Response(x[0], next(scores), x.z) for x in r], key=lambda x: -x[1]) for r in results]


# --- text in, text out -----------------------------------------------------------------------
# DailyDialog writes punctuation spaced off ("Hi , how are you ?", "$ 60"), contractions with a
# straight apostrophe joined ("I'm": 4,009 times in the training split, "I ' m" 12 times) and
# with a curly one spaced ("I ’ m": 1,605 times). What a user types is split the same way by
# nltk's TweetTokenizer, and what the model writes is joined back by nltk's Treebank detokenizer.

CONTRACTIONS = {"m", "s", "t", "re", "ve", "ll", "d"}


def valid_text(text: str) -> str:
    """Lone surrogates (undecodable bytes on stdin, "\\ud800" in JSON) as U+FFFD: SentencePiece
    takes valid Unicode only, and a user's odd bytes must not end the chat."""
    return re.sub("[\ud800-\udfff]", "\ufffd", text)


def spaced(text: str) -> str:
    """A user's text written as the corpus writes it: "I'm fine, it costs $60." ->
    "I'm fine , it costs $ 60 ." (typographic apostrophes made straight first)."""
    from nltk.tokenize import TweetTokenizer
    return " ".join(TweetTokenizer().tokenize(valid_text(text).replace("’", "'")))


def _join_apostrophes(words: list[str]) -> list[str]:
    """The corpus's split contractions as the Treebank detokenizer expects them:
    I ' m -> I 'm, don ' t -> do n't."""
    out = []
    for w in words:
        if out and out[-1] == "'" and w.lower() in CONTRACTIONS and len(out) > 1:
            out.pop()
            if w.lower() == "t" and out[-1].lower().endswith("n"):
                out[-1], w = out[-1][:-1], "n" + "'" + w     # don ' t -> do n't
            else:
                w = "'" + w
        out.append(w)
    return out


def pretty(text: str) -> str:
    """The model's corpus-style text made readable: "I ’ m fine , it costs $ 60 ." ->
    "I'm fine, it costs $60." (nltk's Treebank detokenizer)."""
    from nltk.tokenize.treebank import TreebankWordDetokenizer
    return TreebankWordDetokenizer().detokenize(_join_apostrophes(text.replace("’", "'").split()))


def response_text(sp, ids: list[int], max_len: int, mark_cut: bool = True) -> str:
    """A response as a user reads it; one that reached the length limit ends in " …"."""
    text = pretty(sp.decode(ids))
    return text + CUT if mark_cut and len(ids) >= max_len else text


def encode_turns(sp, turns: list[str], max_utt_len: int, max_context: int) -> list[list[int]]:
    """Utterance strings -> token ids, each cut to the model's length, the last max_context kept."""
    turns = [normalise(valid_text(t)) for t in turns][-max_context:]
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
    p.add_argument("--min-len", type=int, default=d.min_len, help="no end of turn before this many printing tokens (default %(default)s: never an empty reply; 0 allows one)")
    p.add_argument("--temperature", type=float, default=d.temperature, help="softmax temperature for --method sample (default %(default)s)")
    p.add_argument("--top-k", type=int, default=d.top_k, help="sample from the k most likely tokens, 0 for all (default %(default)s)")
    p.add_argument("--top-p", type=float, default=d.top_p, help="sample from the nucleus of this probability (default %(default)s)")
    p.add_argument("--beam", type=int, default=d.beam, help="beam width for --method beam (default %(default)s)")
    p.add_argument("--no-dedup", dest="dedup", action="store_false", help="keep repeated responses of a context")
    p.add_argument("--rank", choices=RANKS, default=d.rank,
                   help="order responses best first by pointwise mutual information with the context (pmi), "
                        "by per-token log-likelihood (ll), or not (default %(default)s; see vhred/scoring.py)")
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


def read_contexts(path: str) -> tuple[list[list[str]], list]:
    """The contexts of a JSONL file ({"context": [...]} per line) and each line's "z" (a list of
    floats to decode from, for VHRED) or None."""
    contexts, zs = [], []
    for lineno, line in enumerate(text_lines(path), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            ctx, z = obj["context"], obj.get("z")
            if not (isinstance(ctx, list) and ctx and all(isinstance(u, str) for u in ctx)) or not (
                    z is None or (isinstance(z, list) and z and all(isinstance(x, (int, float)) for x in z))):
                raise ValueError("not a context")   # an explicit check: asserts vanish under python -O
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            raise InputError(f'{path}: line {lineno}: expected {{"context": ["utterance", ...]}} '
                             '(and optionally "z": [numbers])') from None
        contexts.append(ctx)
        zs.append(z)
    if not contexts:
        raise InputError(f"{path} holds no contexts")
    return contexts, zs


def z_matrix(model, zs: list) -> torch.Tensor | None:
    """Given z's (lists of floats, or None) as a (C, Z) tensor, NaN rows where none is given;
    None when no z is given. Refused for HRED and for lists of the wrong length."""
    if all(z is None for z in zs):
        return None
    if not model.latent:
        raise InputError("a z was given, but this checkpoint is an HRED model: it has no latent variable")
    Z = model.cfg.z_dim
    for z in zs:
        if z is not None and not (isinstance(z, (list, tuple)) and len(z) == Z and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in z)):
            raise InputError(f"a z must be a list of {Z} finite numbers (this model's z_dim)")
    return torch.tensor([z if z is not None else [math.nan] * Z for z in zs], dtype=torch.float32)


def generate_file(model, cfg, sp, contexts: list[list[str]], opts: DecodeOptions, zs=None, batch_contexts: int = 64):
    """Yield (context, its responses as Response), batch by batch, with a progress bar.
    Context turns are read as they are written: corpus text, or spaced() user text."""
    from tqdm import tqdm
    zs = zs or [None] * len(contexts)
    for start in tqdm(range(0, len(contexts), batch_contexts), desc="generate", unit="batch"):
        chunk = contexts[start:start + batch_contexts]
        ids = [encode_turns(sp, c, cfg.max_utt_len, cfg.max_context) for c in chunk]
        z = z_matrix(model, zs[start:start + batch_contexts])
        yield from zip(chunk, candidates(model, ids, opts, same=sp.decode, z=z))


@command
def main(argv=None):
    p = argparse.ArgumentParser(prog=program("python -m vhred.generate"),
                                description="Decode responses for each context of a JSONL file.")
    add_decode_args(p)
    p.add_argument("--input", required=True,
                   help='JSONL, one {"context": [...]} per line; "z": [numbers] decodes that line from this z')
    p.add_argument("--output", required=True, help="JSONL written with \"samples\" and \"scores\" lists per line")
    p.add_argument("--return-z", action="store_true",
                   help='add "z": the latent of each sample (VHRED), which "z" in an input line decodes again')
    args = p.parse_args(argv)
    opts = options_from_args(args)
    model, cfg, sp = checkpoint.load_model(args.checkpoint or newest_checkpoint(), pick_device(args.device))
    contexts, zs = read_contexts(args.input)
    z_matrix(model, zs)   # refuse a bad z before any decoding
    tmp = args.output + ".tmp"
    with open(tmp, "w", encoding="utf-8") as out:
        for ctx, (_, responses) in zip(contexts, generate_file(model, cfg, sp, [[spaced(t) for t in c] for c in contexts], opts, zs)):
            out.write(json.dumps(output_row(ctx, responses, sp, opts, args.return_z),
                                 ensure_ascii=False) + "\n")
    os.replace(tmp, args.output)


def output_row(context: list[str], responses, sp, opts: DecodeOptions, with_z: bool) -> dict:
    row = {"context": context, "samples": [response_text(sp, r[0], opts.max_len) for r in responses],
           "scores": [round(r[1], 4) for r in responses]}
    if with_z and responses and responses[0].z is not None:
        row["z"] = [r.z.tolist() for r in responses]
    return row


if __name__ == "__main__":
    main()
