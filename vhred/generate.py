"""Sample responses: N per context, z drawn from the prior, all N decoded in one batch.

    python -m vhred.generate --checkpoint runs/x/best.pt --input contexts.jsonl \\
        --output samples.jsonl --num-samples 10

Input lines are {"context": ["utt", ...]}; each output line adds "samples": [...] (readable
text, best first when ranked, a response cut at --max-len ending in " …"), "scores" (the
ranking score of each, or its per-token log-likelihood with --rank none) and "line" (the input
line it answers: a malformed input line is skipped and named on stderr, the others are answered).

A context's responses depend only on the seed and that context: each response draws its random
numbers from its own generator, seeded by (seed, the context's tokens, the sample's index), so
a context gives the same responses alone, in any batch, and in chat.
"""
import argparse
import glob
import hashlib
import json
import math
import numbers
import os
import re
import sys
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F

from . import checkpoint, limits
from .cli import command, Parser, program
from .files import check_output, json_line, output_file, text_lines
from .dataset import collate
from .device import pick_device
from .errors import CheckpointError, InputError
from .metrics.text import CJK
from .models.layers import Hierarchical as Model
from .sources import normalise, spaced, valid_text   # text in: written as the corpus writes it
from .tokenizer import BOS, EOS, PAD, UNK

RANKS = ("auto", "none", "ll", "pmi", "mmi", "critic")   # how candidates are ordered (vhred/scoring.py, vhred/critic.py)
MAX_DRAWS = 16   # draws per reply shown: 16N rows of the vocabulary's width at most (docs/limits.md)
BEAM_STOPS = ("first", "best")
REFILLS = (4, 8)   # draws per reply shown that candidates() goes on to when fewer than N good ones came
CUT = " …"                      # appended to a response shown cut at the length limit


@dataclass
class DecodeOptions:
    """How responses are decoded: the one source of defaults for chat, generate, eval and the API.

    By default: beam search (width 5) per sampled z, 16 drawn per reply shown, faulty ones last,
    ranked by the run's reply critic when it has one (vhred/critic.py, trained on blind readers'
    labels), else by the MMI family with lambda 0.25 and a length cost (gamma -0.2 per token).
    VHRED's candidates still differ, because each has its own z from the prior (the paper and
    DialogWAE decode each z deterministically too). Each choice was rated blind on held-out
    contexts (docs/rating.md):
    - beam per z over greedy words per z: of every distinct reply in the chat's 40 draws, 15-20%
      good against 5-8%; the shown five 29-30% good against 20% (sixth and seventh rounds);
    - 8 draws per reply shown (the best 5 of 40): 20% good against 12% for the best 5 of 10;
      16 (the best 5 of 80) with the critic: 52% good in the five against 48% from 40 draws
      (fourteenth and sixteenth rounds, 80 contexts); with gamma -0.2, rated blind: 40-48% of
      the five and 50-57% first against 30-40% and 40-50% (seventeenth, eighteenth rounds);
    - gamma -0.2: the critic's five 47-52% good against 45-47% at gamma -0.1, MMI's 38-39%
      against 33-35% (same rounds), at the price of shorter replies (2.1 words against 2.5);
      gamma 0 rated 12-15% against 20-22% at -0.1 earlier;
    - lambda 0.25: pure likelihood (0) and pure PMI (1, the earlier default) rank worse;
    - the critic + 2 x MMI over MMI alone: 52% good of the five and 62% first against 39% and
      49% (sixteenth round); blind, 32-45% and 40-60% against 34-36% and 38-40% (tenth to
      twelfth rounds, critic + 3 x MMI, gamma -0.1, 40 draws);
    - + 1 x the answer score after a wh-question: on 240 contexts ending in one, a good first
      reply +4.2 [+0.4, +8.1] points, the five +1.2 [-0.2, +2.6]; 3 x was no better (sixty-
      second to sixty-fourth rounds).
    - beam_stop "first" over fairseq's "best": 54.6% against 45.5% good of the five, 64.2%
      against 55.2% first (eightieth round; "best" gives longer, likelier replies).
    Greedy words (`method="greedy"`) decode 4x as fast; ranking them costs the same. HRED has
    one distribution per context: its candidates are the n best beams."""
    num_samples: int = 5       # responses per context
    max_len: int = 30          # tokens per response, <eos> excluded
    min_len: int = 1           # no <eos> before this many printing tokens: never an empty reply (0 allows one)
    method: str = "beam"       # "beam" search or "greedy" words (per z for VHRED), or "sample"d words
    temperature: float = 1.0   # softmax temperature when sampling
    top_k: int = 0             # keep the k most likely tokens (0: all)
    top_p: float = 1.0         # keep the smallest set with probability >= top_p (nucleus)
    beam: int = 5              # beam width for method="beam"
    beam_stop: str = "first"   # a beam search row ends at its "first" ended reply, or at the "best" (fairseq's rule)
    dedup: bool = True         # drop repeated responses of one context
    clean: bool = True         # drop responses with non-words, glued or repeated text, or none (below)
    rank: str = "auto"         # order best first: "critic" when the model has one, else "mmi" (auto);
                               # "critic", "mmi", "pmi", "ll" (vhred/scoring.py) or "none"
    mmi_lambda: float = 0.25   # rank "mmi": log p(r|c) - lambda log p(r), per token ...
    length_bonus: float = -0.2 # ... + gamma per token of length (Li et al. 2016); < 0 favours short replies
    answer_weight: float = 1.0 # rank "critic" and "mmi": + this x the reply's answer score after a wh-question
                               # (vhred/answers.py), when the run's folder holds answers.json
    draws: int = 16            # decoded per reply shown, 1 to 16: the best num_samples of draws x num_samples
    seed: int = 0              # same seed, same samples

    def check(self, widened: int = 1):
        """Refuse impossible values (never replace them silently). widened: the factor by which
        the chat widens num_samples (candidates() draws up to 16N to keep N), allowed past the cap."""
        if self.method not in ("sample", "greedy", "beam"):
            raise InputError(f"method must be sample, greedy or beam, got '{self.method}'")
        limits.count("num_samples", self.num_samples, 1, limits.MAX_SAMPLES * widened)
        limits.count("max_len", self.max_len, 1, limits.MAX_LEN)
        limits.count("beam", self.beam, 1, limits.MAX_BEAM)
        if self.beam_stop not in BEAM_STOPS:
            raise InputError(f"beam_stop must be first or best, got '{str(self.beam_stop)[:40]}'")
        if self.method == "beam" and self.num_samples * self.beam > limits.MAX_BEAM_ROWS * widened:
            raise InputError(f"num_samples x beam may be at most {limits.MAX_BEAM_ROWS:,} (rows of one beam "
                             f"search), got {self.num_samples} x {self.beam}")
        limits.count("top_k", self.top_k, 0, limits.MAX_TOP_K)
        limits.count("draws", self.draws, 1, MAX_DRAWS)   # with num_samples' cap: at most 16N rows, as widened allows
        limits.count("seed", self.seed, 0, 2 ** 63 - 1)
        limits.count("min_len", self.min_len, 0, self.max_len)
        if isinstance(self.temperature, bool) or not 0 < self.temperature <= 1e6:   # exact for any int; NaN fails
            raise InputError(f"temperature must be a positive finite number up to 1e6, got {str(self.temperature)[:40]}")
        if not (0 <= self.mmi_lambda <= 2 and -1 <= self.length_bonus <= 1):   # NaN fails too
            raise InputError("mmi_lambda must be in [0, 2] and length_bonus in [-1, 1]")
        if isinstance(self.answer_weight, bool) or not 0 <= self.answer_weight <= 10:
            raise InputError(f"answer_weight must be in [0, 10], got {str(self.answer_weight)[:40]}")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        if isinstance(self.rank, bool):   # rank=True / False of earlier versions
            self.rank = "pmi" if self.rank else "none"
        if self.rank not in RANKS:
            raise InputError(f"rank must be {', '.join(RANKS)}, got '{self.rank}'")
        return self


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
        drop[:, 0] = False   # also when top_p is below float32's smallest number and reads as 0
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits


def tempered(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / temperature, shifted to a max of 0 first and divided by no less than float32's
    smallest normal number: a tiny temperature gives 0 for the best token and very negative or
    -inf for the rest (greedy), never inf - inf or 0 / 0 = NaN. (B, V)"""
    t = max(temperature, torch.finfo(logits.dtype).tiny)
    return (logits - logits.max(-1, keepdim=True).values) / t


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


def context_states(model: Model, contexts: list[list[list[int]]]) -> torch.Tensor:
    """The context RNN's state after the last turn of each context: (C, Hc)."""
    b = collate(contexts).to(next(model.parameters()).device)
    return model.final_states(b.tokens, b.lens, b.turns)                   # (C, Hc)


def conditions(model: Model, ctx: torch.Tensor, n: int, eps: torch.Tensor, z=None) -> torch.Tensor:
    """[h, z] for n samples per context, z ~ p(z | context) with the rows' normals eps (C*n, Z),
    or each context's given z (C, Z; a row of NaN for none): (C, Hc) -> (C*n, Hc + Z)."""
    ctx = ctx.repeat_interleave(n, dim=0)                                   # (C*n, Hc)
    sampled = model.sample_prior(ctx, eps)                                  # (C*n, Z), None without a latent
    if z is not None and sampled is not None:   # a context's given z; a row of NaN: draw it from the prior
        given = z.to(ctx).repeat_interleave(n, dim=0)
        sampled = torch.where(torch.isnan(given), sampled, given)
    return model.condition(ctx, sampled)


class Response(tuple):
    """One decoded response: the (ids, score) pair every caller unpacks, and `.z`, the latent
    it was decoded from ((Z,) on the CPU; None for HRED), to keep, reuse or look at."""

    def __new__(cls, ids: list[int], score: float, z: torch.Tensor | None = None):
        self = super().__new__(cls, (ids, score))
        self.z = z
        return self


def _responses(ids, scores, cond, model, n: int) -> list[list[Response]]:
    """Rows of (ids, score) grouped n per context, each with the z of its row of cond."""
    z = cond[:, cond.shape[1] - model.z_dim:].float().cpu() if model.latent else None
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


def _no_empty_reply(scores, words, last, min_len: int, space, steps_left: int) -> None:
    """In place on (R, V) scores: a row with fewer than min_len printing tokens may not end,
    nor put a second "▁" after a "▁" (which would only put off its first word to the end), nor
    put a "▁" at all when its steps_left (words before <eos> is forced) are only enough for the
    printing tokens it still needs."""
    short = words < min_len                                                 # (R,)
    scores[short, EOS] = float("-inf")
    no_space = short & (space[last] | (min_len - words >= steps_left))      # (R,)
    scores.masked_fill_(no_space[:, None] & space[None, :], float("-inf"))


def sample_tokens(model, cond, opts: DecodeOptions, u: torch.Tensor) -> tuple[list[list[int]], torch.Tensor]:
    """Ancestral (or greedy) decoding of one response per row of cond, sampling step t with the
    row's uniform u[:, t]; returns ids and their total log-likelihood under the model
    (temperature 1, no filtering)."""
    B, device = cond.shape[0], cond.device
    state = model.decoder_state(cond)
    token = torch.full((B, 1), BOS, dtype=torch.long, device=device)
    out = torch.full((B, opts.max_len), PAD, dtype=torch.long, device=device)
    logp = torch.zeros(B, device=device)
    live = torch.arange(B, device=device)                                   # the rows not ended yet (A,)
    blank, space = blank_tokens(model, device)                              # (V,) each
    words = torch.zeros(B, dtype=torch.long, device=device)                 # printing tokens so far (A,)
    for t in range(opts.max_len + 1):   # max_len words, then <eos> is forced
        logits, state = model.decode(token, cond, state)                    # (A, 1, V)
        logits = logits[:, -1].float()
        model_logp = F.log_softmax(logits, -1)                              # (A, V) the score: before any rule
        logits[:, PAD] = logits[:, BOS] = logits[:, UNK] = float("-inf")   # <unk>: a word-level vocabulary's rest
        if t < opts.max_len:
            _no_empty_reply(logits, words, token[:, 0], opts.min_len, space, opts.max_len - t)
        if t == opts.max_len:
            nxt = torch.full((len(live),), EOS, dtype=torch.long, device=device)
        elif opts.method == "greedy":
            nxt = logits.argmax(-1)
        else:
            scaled = logits if opts.temperature == 1 else tempered(logits, opts.temperature)
            probs = F.softmax(filter_logits(scaled, opts.top_k, opts.top_p), -1)
            nxt = categorical(probs, u[live, t])
        logp[live] += model_logp.gather(1, nxt[:, None]).squeeze(1)
        if t < opts.max_len:
            out[live, t] = torch.where(nxt != EOS, nxt, PAD)
        going = nxt != EOS
        if not going.any():
            break
        if not going.all():   # ended rows leave the batch: the steps after cost them nothing
            live, cond, state, words, nxt = live[going], cond[going], state[:, going], words[going], nxt[going]
        words += ~blank[nxt]
        token = nxt[:, None]
    return [[i for i in row if i != PAD] for row in out.tolist()], logp


def beam_search(model, cond, opts: DecodeOptions, n_best: int) -> tuple[list[list[list[int]]], list[list[float]]]:
    """Beam search for each row of cond (B, C): n_best responses per row, by length-normalised
    log-likelihood, ending as opts.beam_stop says.
    - "first" (the default): a row ends once n_best responses have ended, an <eos> among any of
      its 2K best candidates ending one. A short reply that ends early is kept though a live beam
      would score better per token, so width 1 is not greedy; readers keep these replies more
      (docs/rating.md, eightieth round: 54.6% against 45.5% of the five shown).
    - "best": fairseq's rule. An <eos> ends a response only among the row's K best candidates,
      and a row is searched until max(K, n_best) have ended or its n_best best ended ones beat
      every live beam (_settled); the answer is the n_best of those by normalised score.
    Rows are searched together, beams flattened into the batch; a row leaves the batch once it
    has its ended responses, so its result does not depend on the rows searched beside it, and
    the steps after it cost nothing (most replies end in a few words)."""
    B, K, device = cond.shape[0], opts.beam, cond.device
    first = opts.beam_stop == "first"
    need = n_best if first else max(K, n_best)                              # ended responses a row waits for
    rows = list(range(B))                                                   # the rows still searched (A of them)
    cond_k = cond.repeat_interleave(K, 0)                                   # (A*K, C)
    state = model.decoder_state(cond_k)
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0                                                      # one live beam at start
    token = torch.full((B * K, 1), BOS, dtype=torch.long, device=device)
    done = [[] for _ in range(B)]                                           # (score, ids) per row
    seqs = [[] for _ in range(B * K)]                                       # each beam's words, on the host
    blank, space = blank_tokens(model, device)                              # (V,) each
    words = torch.zeros(B * K, dtype=torch.long, device=device)             # printing tokens so far per beam
    for t in range(opts.max_len + 1):
        logits, state = model.decode(token, cond_k, state)
        logp = F.log_softmax(logits[:, -1].float(), -1)                     # (A*K, V)
        logp[:, PAD] = logp[:, BOS] = logp[:, UNK] = float("-inf")
        if t < opts.max_len:
            _no_empty_reply(logp, words, token[:, 0], opts.min_len, space, opts.max_len - t)
        if t == opts.max_len:                                               # only <eos> is left
            logp[:, :EOS] = logp[:, EOS + 1:] = float("-inf")
        A, V = len(rows), logp.shape[-1]
        top, idx = (scores.view(A * K, 1) + logp).view(A, K * V).topk(2 * K, dim=-1)  # (A, 2K)
        top, idx = top.tolist(), idx.tolist()                               # the step's one device read
        new_scores, pick, new_tok = _next_beams(top, idx, V, K, t, seqs, [done[r] for r in rows], need, opts.max_len,
                                                2 * K if first else K)
        keep = [a for a, r in enumerate(rows)
                if len(done[r]) < need and (first or not _settled(done[r], new_scores[a * K:(a + 1) * K],
                                                                   [len(seqs[i]) + 2 for i in pick[a * K:(a + 1) * K]], n_best))]
        if not keep or t == opts.max_len:
            break
        beams = [a * K + k for a in keep for k in range(K)]                 # their next beams, (A'*K,)
        rows, seqs = [rows[a] for a in keep], [seqs[pick[i]] + [new_tok[i]] for i in beams]
        pick, new_tok = _host_to([pick[i] for i in beams], device), _host_to([new_tok[i] for i in beams], device)
        cond_k, state, words = cond_k[pick], state[:, pick], words[pick] + (~blank[new_tok]).long()
        scores = _host_to([new_scores[i] for i in beams], device, torch.float).view(len(rows), K)
        token = new_tok.view(-1, 1)
    if not all(done) or any(math.isnan(s) for d in done for s, _ in d):   # NaN words: nothing, or NaN-scored replies
        raise CheckpointError("the model's word probabilities are not finite (NaN): its checkpoint is from a run "
                              "that diverged; train it again with a lower lr=")
    best = [sorted(d, key=lambda x: -x[0])[:n_best] for d in done]
    return [[ids for _, ids in d] for d in best], [[s for s, _ in d] for d in best]


def _settled(done, live_scores, live_tokens, n_best: int) -> bool:
    """beam_stop "best": has a row n_best ended replies that no live beam would beat by ending at
    the next step (its log p so far over the words and <eos> it would then have: ending adds
    log p(<eos>) <= 0)? Hugging Face's test without early stopping; it ends most rows long
    before the K-th reply ends."""
    if len(done) < n_best:
        return False
    kept = sorted((s for s, _ in done), reverse=True)[n_best - 1]
    return all(s / n <= kept for s, n in zip(live_scores, live_tokens))


def _next_beams(top, idx, V, K, t, seqs, done, need, max_len, eos_within):
    """From each row's 2K best (score, beam * V + word) candidates, best first: an <eos> among the
    first eos_within ends its response (into `done`, up to `need` of them; every one at max_len),
    the K best live ones become the next beams. Returns flat lists (B*K) of their scores, the beams they
    extend and their words (a row with fewer than K live ones is padded with dead beams)."""
    scores, pick, words = [], [], []
    for b, (row_top, row_idx) in enumerate(zip(top, idx)):
        live = 0
        for place, (s, i) in enumerate(zip(row_top, row_idx)):
            k, w = divmod(i, V)
            if s == float("-inf"):
                break
            if w == EOS:
                if (place < eos_within and len(done[b]) < need) or t == max_len:
                    ids = seqs[b * K + k]
                    done[b].append((s / (len(ids) + 1), ids))
            elif live < K:
                scores.append(s)
                pick.append(b * K + k)
                words.append(w)
                live += 1
        scores += [float("-inf")] * (K - live)
        pick += [b * K] * (K - live)
        words += [EOS] * (K - live)
    return scores, pick, words


def _host_to(values: list, device, dtype=torch.long) -> torch.Tensor:
    """A host list to the device without waiting for it (pinned first on a GPU)."""
    t = torch.tensor(values, dtype=dtype)
    return (t.pin_memory() if device.type == "cuda" else t).to(device, non_blocking=True)


@torch.inference_mode()
def generate(model: Model, contexts: list[list[list[int]]], opts: DecodeOptions, z=None) -> list[list[Response]]:
    """For each context (a list of utterances as token ids), opts.num_samples responses as
    Response (token ids, score; .z), all contexts and samples decoded as one batch. The score is
    the ranking score (opts.rank, best first) or, with rank "none", the per-token log-likelihood
    of the decoding. z (C, Z), for VHRED: decode every response of context c from z[c] instead
    of sampling it from the prior (then only sampled words make them differ); a row of NaN
    leaves that context's z to the prior."""
    opts.check(widened=MAX_DRAWS)   # candidates() draws up to MAX_DRAWS times what a user asked for
    device = next(model.parameters()).device
    model.eval()
    n = opts.num_samples
    seeds = [row_seed(opts.seed, ctx, i) for ctx in contexts for i in range(n)]
    steps = opts.max_len + 1 if opts.method == "sample" else 0
    eps, u = keyed_noise(seeds, model.noise_dim, steps, device)
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


def candidates(model: Model, contexts: list[list[list[int]]], opts: DecodeOptions,
               same=None, z=None, keep=None) -> list[list[Response]]:
    """What the chat shows for each context: when repeats are dropped or candidates ranked,
    D x N are drawn (D = opts.draws) and the first N kept (so N distinct ones usually remain,
    and ranked, they are the best N of D x N); otherwise the N decoded. same(ids) -> text, when
    given, also drops responses whose text repeats an earlier one's (other pieces can spell the
    same words). keep(ids) -> bool (shown_filter) puts faulty responses behind all good ones. A
    context with fewer than N good distinct ones is drawn again with 4N, then 8N (the same first
    draws and more) where D is smaller; only then are faulty ones shown, last, or fewer than N
    (shown_note says which). HRED's greedy and beam draws are all alike: 2N at most."""
    n = opts.check().num_samples
    if not (opts.dedup or opts.rank != "none" or keep):
        return drawn(model, contexts, opts, z)
    results, todo = [[] for _ in contexts], list(range(len(contexts)))
    for factor in draw_factors(model, opts, refills=bool(keep or (opts.dedup and same))):
        wide = replace(opts, num_samples=factor * n)
        found = drawn(model, [contexts[i] for i in todo], wide, None if z is None else z[todo])
        for i, row in zip(todo, found):
            row = _dedup(row, key=same) if opts.dedup and same else row
            if keep:   # good ones first, each part in its ranked order
                row = [r for r in row if keep(r[0])] + [r for r in row if not keep(r[0])]
            results[i] = row[:n]
        todo = [i for i in todo if len(results[i]) < n or (keep and not keep(results[i][-1][0]))]
        if not todo:
            break
    return results


def drawn(model: Model, contexts: list[list[list[int]]], opts: DecodeOptions, z=None) -> list[list[Response]]:
    """generate(), or, when the model's draws are pooled with other runs' (load_model's pool_with),
    opts.num_samples drawn in equal shares by it and each of them, the model's first, pooled and
    ranked by the sum of every run's own ranking score (its critic + 2 x MMI when it has a critic).
    Two models trained alike miss different turns and judge differently: rated blind, VHRED and
    CVAE so, each with its critic, +3.4 [+1.6, +5.2] points of the five shown and +1.7 [-2, +5.5]
    first against VHRED alone (docs/rating.md). A given z is the model's own: a context with one
    (a row of z not NaN) draws alone, the others as they would in a batch of their own; every
    run still judges its draws, since a reply's score reads only its text."""
    pool = getattr(model, "pool", ())
    if not pool:
        return generate(model, contexts, opts, z)
    given = [] if z is None else (~torch.isnan(z).any(dim=1)).tolist()
    if given and all(given):
        return _own_z(model, pool, contexts, opts, z)
    if any(given):   # a served batch may mix requests with a z and without
        alone = [i for i, g in enumerate(given) if g]
        rows = dict(zip(alone, _own_z(model, pool, [contexts[i] for i in alone], opts, z[alone])))
        rest = [i for i, g in enumerate(given) if not g]
        rows.update(zip(rest, drawn(model, [contexts[i] for i in rest], opts)))
        return [rows[i] for i in range(len(contexts))]
    share = replace(opts, num_samples=-(-opts.num_samples // (1 + len(pool))), rank="none", dedup=False)
    rows = [generate(model, contexts, share)] + [   # another run's z means nothing to this model: None
        [[Response(r[0], r[1]) for r in row] for row in generate(m, contexts, share)] for m in pool]
    results = [[r for per_model in row for r in per_model] for row in zip(*rows)]   # (C, models x share)
    results = [_dedup(r) if opts.dedup else r for r in results]
    return _rank(model, contexts, results, opts, judges=pool) if opts.rank != "none" else results


def _own_z(model, pool, contexts, opts: DecodeOptions, z) -> list[list[Response]]:
    """The model's draws from the z given, ranked by the whole pool as its pooled draws are."""
    rows = generate(model, contexts, replace(opts, rank="none"), z)
    return _rank(model, contexts, rows, opts, judges=pool) if opts.rank != "none" else rows


def draw_factors(model, opts: DecodeOptions, refills: bool = True) -> tuple[int, ...]:
    """Draws per reply shown in each round candidates() may decode, every round drawn anew (its
    first draws the same): D, then 4 and 8 where D is smaller and refills are wanted (faulty or
    repeated replies dropped). HRED's greedy and beam draws are all alike: one round of 2 at most."""
    if not (model.latent or opts.method == "sample"):
        return (min(opts.draws, 2),)
    return (opts.draws, *(f for f in REFILLS if f > opts.draws and refills))


def draws_made(model, opts: DecodeOptions) -> int:
    """Draws per reply shown that candidates() has made when it shows a faulty reply: it goes on
    to 8 where draws differ; HRED's greedy and beam draws are all alike, 2 at most."""
    if model.latent or opts.method == "sample":
        return max(opts.draws, REFILLS[-1])
    return min(opts.draws, 2)


def shown_note(shown: list, n: int, keep=None, draws: int = REFILLS[-1]) -> str:
    """A line saying why fewer than n are shown or some of them are faulty; "" when neither."""
    return count_note(len(shown), n, sum(not keep(r[0]) for r in shown) if keep else 0, draws)


def count_note(shown: int, n: int, faulty: int, draws: int = REFILLS[-1]) -> str:
    """shown_note from the counts: `shown` replies of n asked for, the last `faulty` of them
    faulty, after `draws` draws per reply (draws_made)."""
    why = [f"{shown} of {n} shown: the other draws repeated these"] if shown < n else []
    if faulty:
        why.append(f"the last {faulty} shown have faulty text (non-words, glued or repeated): "
                   f"no more good ones in {draws * n} draws")
    return "; ".join(why)


def shown_filter(sp, cfg, opts: DecodeOptions):
    """keep(ids) for candidates(): True for a response worth showing, one without a surface fault
    (vhred/metrics/surface.py: a non-word of the training text, glued or repeated text, nothing);
    None when opts.clean is off. Without the training text here, words are not checked."""
    if not opts.clean:
        return None
    from .lexicon import training_lexicon
    from .metrics.surface import clean
    known = training_lexicon(cfg)
    return lambda ids: clean(response_text(sp, ids, opts.max_len, mark_cut=False), known)


def reply_key(text: str) -> str:
    """The words a reader sees, case and punctuation aside, so that "Single, please." and
    "Single please." count as one reply (one without words: its text)."""
    return " ".join(re.findall(r"[\w']+", text.lower())) or text


def same_reply(sp):
    """same(ids) for candidates(): the reply_key of the text a reader sees."""
    return lambda ids: reply_key(pretty(sp.decode(ids)))


def _dedup(responses, key=tuple):
    """Drop repeated responses of one context (the same key(ids)), keeping the first of each."""
    seen, kept = set(), []
    for r in responses:
        if key(r[0]) not in seen:
            seen.add(key(r[0]))
            kept.append(r)
    return kept


def _rank(model, contexts, results, opts: DecodeOptions, judges=()):
    """Score every candidate of every context in one batch, then order each context's best first.
    judges: more models (a pool's runs) whose own ranking scores are added to the model's."""
    pairs = [(c, ids) for c, r in zip(contexts, results) for ids, _ in r]
    scores = iter(ranking_scores(model, [c for c, _ in pairs], [r for _, r in pairs], opts, judges))
    return [sorted([Response(x[0], next(scores), x.z) for x in r], key=lambda x: -x[1]) for r in results]


def ranking_scores(model, contexts, replies, opts: DecodeOptions, judges=()) -> list[float]:
    """The score candidates are ranked by, of each (context, reply) pair: the model's own (_scores)
    plus that of each judge (a pool's other runs)."""
    return [sum(s) for s in zip(*(_scores(m, contexts, replies, opts) for m in (model, *judges)))]


def _scores(model, contexts, replies, opts: DecodeOptions) -> list[float]:
    """The model's own ranking score (opts.rank as it resolves for this model) of each pair."""
    from .scoring import RANK_SAMPLES, score_ids  # scoring builds on this module's helpers
    kind = _own_ranking(model, opts)
    if kind == "critic":
        scores = critic_scores(model, contexts, replies, opts)
    else:
        scores = score_ids(model, contexts, replies, kind, RANK_SAMPLES, opts.seed, opts.mmi_lambda, opts.length_bonus)
    return plus_answers(model, contexts, replies, kind, opts, scores)


def plus_answers(model, contexts, replies, kind: str, opts: DecodeOptions, scores: list[float]) -> list[float]:
    """Rankings "critic" and "mmi" with opts.answer_weight x the answer score after a wh-question
    added, when the run has an answer table (vhred/answers.py); other scores as they are."""
    table = getattr(model, "answers", None)
    if kind not in ("critic", "mmi") or table is None or not opts.answer_weight:
        return scores
    return [s + opts.answer_weight * a for s, a in zip(scores, table.scores(contexts, replies))]


def ranking(model: Model, opts: DecodeOptions) -> str:
    """The score candidates are ordered by: opts.rank, "auto" being the model's reply critic when
    its folder holds one (checkpoint.load_model attaches it), else "mmi". Asking for "critic" of
    a model without one, or with a pooled run without one, is refused, before any decoding."""
    if opts.rank == "critic" and any(getattr(m, "critic", None) is None for m in getattr(model, "pool", ())):
        raise InputError("a run of --pool-with has no reply critic (its own scores join the ranking): train one "
                         "with `vhred critic --checkpoint RUN --ratings DIR ...`, or rank by mmi")
    return _own_ranking(model, opts)


def _own_ranking(model: Model, opts: DecodeOptions) -> str:
    """ranking() for the model's own scores, its pool aside."""
    has_critic = getattr(model, "critic", None) is not None
    if opts.rank == "auto":
        return "critic" if has_critic else "mmi"
    if opts.rank == "critic" and not has_critic:
        raise InputError("this model has no reply critic (critic.safetensors in its folder): train one with "
                         "`vhred critic --checkpoint RUN --ratings DIR ...`, or rank by mmi")
    return opts.rank


def critic_scores(model: Model, contexts, replies, opts: DecodeOptions) -> list[float]:
    """Rank "critic": the reply critic's logit (vhred/critic.py) of each reply as a reader sees it
    + critic.MMI_WEIGHT x the MMI score (opts' lambda and gamma) of each (context, reply) pair."""
    from . import critic
    from .scoring import RANK_SAMPLES, score_ids
    _own_ranking(model, DecodeOptions(rank="critic"))
    judged = critic.scores(model.critic, contexts, shown_ids(model, replies))   # as it learned them: as read
    mmi = score_ids(model, contexts, replies, "mmi", RANK_SAMPLES, opts.seed, opts.mmi_lambda, opts.length_bonus)
    return [c + critic.MMI_WEIGHT * m for c, m in zip(judged, mmi)]


MEMO_REPLIES = 50_000   # rendered replies kept per model for the critic: a few MB


def shown_ids(model: Model, replies: list[list[int]]) -> list[list[int]]:
    """Each reply's ids as the reply critic reads them: critic.reply_ids of the text shown. Kept
    per model, since the same short replies come back turn after turn (rendering costs about as
    much as the critic's reading)."""
    from .critic import reply_ids
    memo = model.__dict__.setdefault("shown_memo", {})
    if len(memo) > MEMO_REPLIES:
        memo.clear()
    out = []
    for r in replies:
        key = tuple(r)
        if key not in memo:
            memo[key] = reply_ids(model.sp, pretty(model.sp.decode(r)))
        out.append(memo[key])
    return out


# --- text out --------------------------------------------------------------------------------
# DailyDialog writes punctuation spaced off ("Hi , how are you ?", "$ 60"), contractions with a
# straight apostrophe joined ("I'm") and with a curly one spaced ("I ’ m": 1,605 times in the
# training split). A user's text is spaced so by sources.spaced; what the model writes is joined
# back by nltk's Treebank detokenizer, with the corpus's initialisms and quote marks first.

CONTRACTIONS = {"m", "s", "t", "re", "ve", "ll", "d"}


def _join_apostrophes(words: list[str]) -> list[str]:
    """The corpus's split contractions joined into words: I ' m -> I'm, I 'Ve -> I've, don ’ t ->
    don't (whole words: a quote mark joined to them later cannot hide them from the detokenizer)."""
    out = []
    for w in words:
        low = w.lower()   # I ’ Ve (766 times in the training split) -> I've
        if len(out) > 1 and out[-1] == "'" and low in CONTRACTIONS and out[-2][-1:].isalnum():
            out.pop()
            out[-1] += "'" + low
        elif out and w[:1] == "'" and low[1:] in CONTRACTIONS and out[-1][-1:].isalnum():
            out[-1] += low
        else:
            out.append(w)
    return out


INITIALISM = re.compile(r"(?<!\S)[A-Za-z] \.(?: [A-Za-z] \.)+(?: \.)?(?!\S)")   # U . S . ; a . m . .
MONEY = re.compile(r"([£€¥]) (?=\d)")   # the detokenizer joins $ 60 only
CENTS = re.compile(r"(\d,\d{3})\. (\d+)\b")   # 2,699 . 00, as the corpus and TweetTokenizer split it
TRAILING_DOTS = re.compile(r"(?<=\w) \.\.\.(?=\s|$)")   # "Wait ..." -> "Wait...", as mid-sentence
# quote marks joined to their words travel through the detokenizer as characters it leaves alone
QUOTE_STAND_IN = {'"': "\ue000", "'": "\ue001"}
QUOTES_BACK = str.maketrans({v: k for k, v in QUOTE_STAND_IN.items()})
FACE = "\ue002"   # an emoticon's place while the detokenizer works
# Chinese and Japanese are written without spaces, their marks full width; the model writes the
# marks NFKC made ASCII ("，" as ","), each spaced off as the corpus writes marks
CLOSING = "。、，！？；：」』）】》〉،؛؟"   # CJK marks and Arabic ones, written against the word before
OPENING = "「『（【《〈"
FULL_WIDTH = str.maketrans(",!?;:", "，！？；：")
MARK_AFTER_CJK = re.compile(rf"(?<=[{CJK}]) *([,!?;:])(?: (?=[{CJK}{OPENING}]))?")   # 包子 , 我们 -> 包子，我们
SPACE_BEFORE_CLOSING = re.compile(rf" +(?=[{CLOSING}])")
# between characters, after an opening mark, around the quotes, brackets and "..." NFKC made ASCII
SPACE_IN_CJK = re.compile(rf"(?<=[{CJK}{CLOSING}{OPENING}]) +(?=[{CJK}{OPENING}\"(])|(?<=[{OPENING}]) +"
                          rf"|(?<=[)\"]) +(?=[{CJK}])|(?<=\.\.\.) +(?=[{CJK}])")
EMOTICON = re.compile(r"[<>]?[:;=][-o*']?[()\[\]dDpP/\\{}@|]|<3")   # :) ;-( :P <3, eyes first (not "::", ");")


def _join_quotes(words: list[str]) -> list[str]:
    """Quote marks the corpus spaces off, joined to what they quote: " hello " -> "hello",
    ' New College ' -> 'New College', ' 90s -> '90s, o ' clock -> o'clock; nested ones too. A
    lone ' after a plural stays the possessive it is ("parents' house")."""
    out = []
    for w in words:
        if len(out) > 1 and out[-1] == "'" and out[-2].lower() == "o" and w.lower() == "clock":
            out[-2:] = [out[-2] + "'" + w]
        elif out and out[-1] == "'" and re.fullmatch(r"\d+s", w):   # a decade
            out[-1] = "'" + w
        else:
            out.append(w)
    pairs, opened = [], {}   # (opening, closing) positions; the open one of each mark
    for i, w in enumerate(out):
        if w not in QUOTE_STAND_IN:
            continue
        if w in opened and i > opened[w] + 1:
            pairs.append((opened.pop(w), i))
        elif w not in opened and out[i + 1:i + 2] and (out[i + 1][:1].isalnum() or out[i + 1] in QUOTE_STAND_IN) \
                and (w == '"' or not _possessive(out, i)):
            opened[w] = i
    gone = {i for pair in pairs for i in pair}
    before, after = [""] * len(out), [""] * len(out)   # stand-ins joined to each word, in order
    for o, c in sorted(pairs):
        before[next(j for j in range(o + 1, c) if j not in gone)] += QUOTE_STAND_IN[out[o]]
    for o, c in sorted(pairs, key=lambda p: p[1]):
        after[next(j for j in range(c - 1, o, -1) if j not in gone)] += QUOTE_STAND_IN[out[c]]
    return [b + w + a for i, (b, w, a) in enumerate(zip(before, out, after)) if i not in gone]


NOT_PLURALS = {"is", "was", "has", "does", "says", "as", "us", "this", "thus", "yes", "his", "its"}


def _possessive(words: list[str], i: int) -> bool:
    """words[i] is a ' after a plural ("parents ' house", "Teachers ' Day"), not a quote's opening
    ("says ' No '": a lower-case word, then a capital; "It is ' yes '": no plural)."""
    before, after = words[i - 1] if i else "", words[i + 1]
    return (before[-1:] in ("s", "S") and before.lower() not in NOT_PLURALS
            and not (before.islower() and after[:1].isupper()))


def pretty(text: str) -> str:
    """The model's corpus-style text made readable: "I ’ m fine , it costs $ 60 ." ->
    "I'm fine, it costs $60." (nltk's Treebank detokenizer); initialisms and quotes joined
    ("U . S ." -> "U.S.", \' New College \' -> 'New College'); a sentence mark the model glued to
    the next word gets its space ("25.How" -> "25. How", vhred/metrics/surface.py)."""
    from nltk.tokenize.treebank import TreebankWordDetokenizer
    from .metrics.surface import unglue
    text = re.sub("[\ue000-\ue002]", "", text)   # the stand-ins below are ours alone
    text = text.replace("’", "'").replace("“", '"').replace("”", '"')
    text = INITIALISM.sub(lambda m: m.group(0).replace(" ", "").replace("..", "."), text)
    words = _join_quotes(_join_apostrophes(unglue(text).split()))
    faces = [w for w in words if EMOTICON.fullmatch(w)]                      # :) stays a word: the
    words = [FACE if w in faces else w for w in words]                       # detokenizer glues its marks
    text = unglue(TreebankWordDetokenizer().detokenize(words))   # and what the joining glued ("ll,ll")
    text = TRAILING_DOTS.sub("...", CENTS.sub(r"\1.\2", MONEY.sub(r"\1", text))).translate(QUOTES_BACK)
    text = close_up(text)   # before the faces are back: ":)" after a Chinese word is no mark
    for face in faces:
        text = text.replace(FACE, face, 1)
    return text[:1].upper() + text[1:]   # a turn starts with a capital (the corpus writes some in lower case)


def close_up(text: str) -> str:
    """Chinese and Japanese as they are written: no space between characters or around their
    marks, a mark after a character full width again ("我不喜欢包子 , 我们去吧 。" ->
    "我不喜欢包子，我们去吧。"); an Arabic mark against its word ("بخير ، شكرا" -> "بخير، شكرا")."""
    text = MARK_AFTER_CJK.sub(lambda m: m[1].translate(FULL_WIDTH), text)
    return SPACE_IN_CJK.sub("", SPACE_BEFORE_CLOSING.sub("", text))


def response_text(sp, ids: list[int], max_len: int, mark_cut: bool = True) -> str:
    """A response as a user reads it; one that reached the length limit ends in " …"."""
    text = pretty(sp.decode(ids))
    return text + CUT if mark_cut and len(ids) >= max_len else text


def uncut(reply: str) -> str:
    """A reply as the model wrote it: without the mark response_text shows where max_len cut it."""
    return reply[:-len(CUT)] if reply.endswith(CUT) else reply


def history_read(history: list[str]) -> list[str]:
    """A conversation's turns written as the corpus writes them (spaced), the model's own (every
    second one before the last, which is the turn answered) without a cut mark: a reply the chat
    page or an API caller passes back is read as the text shown, less the mark that is not its own."""
    last = len(history) - 1
    return [spaced(uncut(t) if (last - i) % 2 else t) for i, t in enumerate(history)]


def encode_turns(sp, turns: list[str], max_utt_len: int, max_context: int) -> list[list[int]]:
    """Utterance strings -> token ids, each cut to the model's length, the last max_context kept."""
    turns = [normalise(valid_text(t)) for t in turns][-max_context:]
    return [sp.encode(t)[:max_utt_len] for t in turns]


def newest_checkpoint(pattern: str = "runs/*/best.pt") -> str:
    found = sorted(glob.glob(pattern), key=os.path.getmtime)
    if not found:
        raise CheckpointError(f"no runs/*/best.pt found; train one ({checkpoint.TRAIN_FIRST}) or pass --checkpoint")
    return found[-1]


def chosen_checkpoint(given: str | None) -> str:
    """--checkpoint as given, or the newest run when it was not given. An empty value (an unset
    shell variable) is refused, not read as "not given": that would pick another model."""
    if given is None:
        return newest_checkpoint()
    if not given.strip():
        raise CheckpointError("--checkpoint is empty; give a run folder, a .pt file or an exported model folder "
                              "(or leave the flag out for the newest runs/*/best.pt)")
    return given


def add_decode_args(p: argparse.ArgumentParser, num_samples: int | None = None):
    """The decoding flags of chat, generate and eval, their defaults read from DecodeOptions."""
    d = DecodeOptions(num_samples=num_samples or DecodeOptions.num_samples)
    p.add_argument("--checkpoint", help="a run folder, .pt file or exported model folder (default: the newest runs/*/best.pt)")
    p.add_argument("--num-samples", type=int, default=d.num_samples, help="responses per context (default %(default)s)")
    p.add_argument("--method", choices=["greedy", "sample", "beam"],
                   help=f"greedy words (per sampled z for VHRED), sampled words, or beam search "
                        f"(default {d.method}; sample when --temperature, --top-k or --top-p shapes the words)")
    p.add_argument("--max-len", type=int, default=d.max_len, help="tokens per response (default %(default)s)")
    p.add_argument("--min-len", type=int, default=d.min_len, help="no end of turn before this many printing tokens (default %(default)s: never an empty reply; 0 allows one)")
    p.add_argument("--temperature", type=float, default=d.temperature, help="softmax temperature for --method sample (default %(default)s)")
    p.add_argument("--top-k", type=int, default=d.top_k, help="sample from the k most likely tokens, 0 for all (default %(default)s)")
    p.add_argument("--top-p", type=float, default=d.top_p, help="sample from the nucleus of this probability (default %(default)s)")
    p.add_argument("--beam", type=int, default=d.beam, help="beam width for --method beam (default %(default)s)")
    p.add_argument("--beam-stop", choices=BEAM_STOPS, default=d.beam_stop,
                   help="a beam search ends at its first ended reply, which readers keep more, or at the best "
                        "(fairseq's rule: likelier, longer replies; default %(default)s; docs/decoding.md)")
    p.add_argument("--no-dedup", dest="dedup", action="store_false", help="keep repeated responses of a context")
    p.add_argument("--no-clean", dest="clean", action="store_false",
                   help="rank responses with non-words, glued or repeated text like the others (by default "
                        "more draws replace them, and any still shown come after every clean one)")
    p.add_argument("--rank", choices=RANKS, default=d.rank,
                   help="order responses best first by the run's reply critic (critic: `vhred critic`), by "
                        "pointwise mutual information with the context (pmi), by per-token log-likelihood (ll), by "
                        "the MMI family (mmi: --mmi-lambda, --length-bonus), or not; auto: critic when the run has "
                        "one, else mmi (default %(default)s; see vhred/scoring.py, vhred/critic.py)")
    p.add_argument("--mmi-lambda", type=float, default=d.mmi_lambda,
                   help="--rank mmi (and critic's MMI term): weight of log p(r) taken off log p(r|c), per token (default %(default)s)")
    p.add_argument("--length-bonus", type=float, default=d.length_bonus,
                   help="--rank mmi (and critic's MMI term): score added per token of a reply; below 0 favours short ones (default %(default)s)")
    p.add_argument("--answer-weight", type=float, default=d.answer_weight,
                   help="--rank critic and mmi: weight of the answer score after a wh-question, when the run has "
                        "answers.json (`python -m vhred.answers`; default %(default)s)")
    p.add_argument("--draws", type=int, default=d.draws,
                   help="responses decoded per one shown, 1 to 16: the best N of draws x N are shown (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="same seed, same responses (default %(default)s)")
    p.add_argument("--pool-with", action="append", default=[], metavar="RUN",
                   help="another run (of the same tokenizer; repeat for more) that draws an equal share of the "
                        "candidates, all ranked by the sum of every run's ranking score (default: none; docs/decoding.md#pooled-draws)")
    p.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu or cuda (default %(default)s)")


NEUTRAL_SHAPING = {"temperature": 1.0, "top_k": 0, "top_p": 1.0}   # words not shaped: what greedy and beam read


def shapes_words(options) -> bool:
    """Whether options (flags or DecodeOptions fields) shape sampled words."""
    return any(getattr(options, key) != value for key, value in NEUTRAL_SHAPING.items())


def options_from_args(args, keywords: bool = False, default_method: str = DecodeOptions.method) -> DecodeOptions:
    """DecodeOptions from the flags of add_decode_args, checked; keywords: errors name the API's
    keyword options (and the server's fields) instead of the flags. A method not given is
    "sample" when the words are shaped, else default_method (a server's own --method)."""
    if args.method is None:   # not given; "" is given, and refused by check() like any other wrong name
        args.method = "sample" if shapes_words(args) else default_method
    opts = DecodeOptions(**{f.name: getattr(args, f.name) for f in fields(DecodeOptions)}).check()
    if opts.method != "sample" and (opts.temperature != 1 or opts.top_p < 1 or opts.top_k):
        raise InputError('temperature, top_k and top_p shape sampled words: add method="sample"' if keywords else
                         "--temperature, --top-k and --top-p shape sampled words: add --method sample")
    return opts


def read_contexts(path: str) -> tuple[list[list[str]], list, list[int]]:
    """The contexts of a JSONL file ({"context": [...]} per line), each line's "z" (a list of
    floats to decode from, for VHRED) or None, and each one's line number. A malformed line is
    skipped and named on stderr, as training does with its data; a file with no good line is an error."""
    contexts, zs, linenos, bad = [], [], [], []
    for lineno, line in enumerate(text_lines(path), 1):
        if not line.strip():
            continue
        why = context_line_error(line)
        if why:
            bad.append((lineno, why))
            continue
        obj = json.loads(line)
        contexts.append(obj["context"])
        zs.append(obj.get("z"))
        linenos.append(lineno)
    if not contexts:
        first = f": line {bad[0][0]}: {bad[0][1]}" if bad else ""
        raise InputError(f"{path} holds no contexts{first}")
    for lineno, why in bad[:10]:
        print(f"{path}: line {lineno}: skipped: {why}", file=sys.stderr)
    if len(bad) > 10:
        print(f"{path}: ... and {len(bad) - 10} more skipped lines", file=sys.stderr)
    return contexts, zs, linenos


def context_line_error(line: str) -> str | None:
    """Why a line of a contexts file cannot be used, or None when it can."""
    expected = 'expected {"context": ["utterance", ...]} (and optionally "z": [numbers])'
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return f"{expected}: not valid JSON"
    if not isinstance(obj, dict) or "context" not in obj:
        return expected
    ctx, z = obj["context"], obj.get("z")
    if not (isinstance(ctx, list) and ctx and all(isinstance(u, str) for u in ctx)):
        return f'{expected}: "context" must be a non-empty list of strings'
    if not (z is None or (isinstance(z, list) and z and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in z))):
        return f'{expected}: "z" must be a list of numbers'
    return None


def _decodes(model, z) -> bool:
    """Whether this one z (or None) is one the model can decode from."""
    try:
        z_matrix(model, [z])
        return True
    except InputError:
        return False


def z_matrix(model, zs: list) -> torch.Tensor | None:
    """Given z's (lists of floats, or None) as a (C, Z) tensor, NaN rows where none is given;
    None when no z is given. Refused for HRED and for lists of the wrong length."""
    if all(z is None for z in zs):
        return None
    if not model.latent:
        raise InputError("a z was given, but this checkpoint is an HRED model: it has no latent variable")
    rows = [[math.nan] * model.z_dim if z is None else _z_row(z, model.z_dim) for z in zs]
    return torch.tensor(rows, dtype=torch.float32)


def _z_row(z, Z: int) -> list[float]:
    """One given z as Z floats, from a list or tuple of numbers (a Candidate's .z), a numpy array
    or a tensor."""
    if hasattr(z, "tolist") and not isinstance(z, (list, tuple)):   # a numpy array, a tensor
        z = z.tolist()
    if isinstance(z, (list, tuple)):
        z = [x.tolist() if hasattr(x, "tolist") else x for x in z]   # numpy's or torch's scalars
    if not (isinstance(z, list) and len(z) == Z and all(map(_z_element, z))):
        raise InputError(f"a z must be {Z} finite numbers between -{limits.MAX_Z:g} and {limits.MAX_Z:g} "
                         "(this model's z_dim), as a list (a Candidate's .z), a numpy array or a tensor")
    return [float(x) for x in z]


def _z_element(x) -> bool:
    """A number a z may hold: within +-MAX_Z (a 400-digit integer or 1e300 would be inf in float32)."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real):   # numpy's and Python's numbers alike
        return False
    return -limits.MAX_Z <= x <= limits.MAX_Z   # exact for ints of any size; False for NaN


def generate_file(model, cfg, sp, contexts: list[list[str]], opts: DecodeOptions, zs=None, batch_contexts: int = 64):
    """Yield (context, its responses as Response), batch by batch, with a progress bar that counts
    contexts. Context turns are read as they are written: corpus text, or spaced() user text."""
    from tqdm import tqdm
    zs = zs or [None] * len(contexts)
    keep = shown_filter(sp, cfg, opts)
    with tqdm(total=len(contexts), desc="generate", unit="context") as bar:
        for start in range(0, len(contexts), batch_contexts):
            chunk = contexts[start:start + batch_contexts]
            ids = [encode_turns(sp, c, cfg.max_utt_len, cfg.max_context) for c in chunk]
            z = z_matrix(model, zs[start:start + batch_contexts])
            found = candidates(model, ids, opts, same=same_reply(sp), z=z, keep=keep)   # as the chat
            bar.update(len(chunk))   # before the yield: a caller may stop at the last context
            yield from zip(chunk, found)


@command
def main(argv=None):
    p = Parser(prog=program("python -m vhred.generate"),
               description="Decode responses for each context of a JSONL file.")
    add_decode_args(p)
    p.add_argument("--input", required=True,
                   help='JSONL, one {"context": [...]} per line; "z": [numbers] decodes that line from this z')
    p.add_argument("--output", required=True, help="JSONL written with \"samples\" and \"scores\" lists per line")
    p.add_argument("--return-z", action="store_true",
                   help='add "z": the latent of each sample (VHRED), which "z" in an input line decodes again')
    args = p.parse_args(argv)
    opts = options_from_args(args)
    check_output(args.output)
    contexts, zs, linenos = read_contexts(args.input)   # a bad input file is refused before the model loads
    if args.return_z and args.pool_with:
        raise InputError("--return-z gives the latents of --checkpoint's draws only: leave out --pool-with")
    model, cfg, sp = checkpoint.load_model(chosen_checkpoint(args.checkpoint), pick_device(args.device),
                                           args.pool_with)
    try:
        z_matrix(model, zs)   # refuse a bad z or ranking before any decoding
    except InputError as e:   # name the first line whose z it is
        bad = next((n for n, z in zip(linenos, zs) if not _decodes(model, z)), None)
        raise InputError(f"{args.input}: line {bad}: {e}" if bad else str(e)) from None
    ranking(model, opts)
    if args.return_z and not model.latent:
        raise InputError("--return-z: this checkpoint is an HRED model, it has no latent variable z")
    answers = generate_file(model, cfg, sp, [[spaced(t) for t in c] for c in contexts], opts, zs)
    with output_file(args.output) as out:   # a regular file, replaced only when complete
        for (_, responses), ctx, lineno in zip(answers, contexts, linenos):   # the generator first: it ends its bar
            out.write(json_line(output_row(ctx, responses, sp, opts, args.return_z, lineno)) + "\n")


def output_row(context: list[str], responses, sp, opts: DecodeOptions, with_z: bool, lineno: int | None = None) -> dict:
    row = {"context": context, "samples": [response_text(sp, r[0], opts.max_len) for r in responses],
           "scores": [round(r[1], 4) for r in responses]}
    if with_z and responses and responses[0].z is not None:
        row["z"] = [r.z.tolist() for r in responses]
    if lineno is not None:
        row["line"] = lineno   # the input line it answers (malformed lines are skipped)
    return row


if __name__ == "__main__":
    main()
