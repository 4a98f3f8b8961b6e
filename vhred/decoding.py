"""Decoding replies from the model: N per context, each from its own z (drawn from the prior, or
given), by sampling, greedy words or beam search, all N in one batch; and DecodeOptions, the
defaults of decoding and of the ranking candidates.py applies.

A context's replies depend only on the seed and that context: each reply draws its random
numbers from its own generator, seeded by (seed, the context's tokens, the reply's index), so a
context gives the same replies alone, in any batch, and in chat. Which of them are shown, and
in which order, is candidates.py; their text, render.py.
"""
import hashlib
import math
import numbers
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from . import limits
from .dataset import collate
from .errors import CheckpointError, InputError
from .models.layers import Hierarchical as Model
from .tokenizer import BOS, EOS, PAD, UNK


RANKS = ("auto", "none", "ll", "pmi", "mmi", "critic")   # how candidates are ordered (vhred/candidates.py)
ORDERS = ("readers", "score")   # the shown replies: by what readers kept before (vhred/kept.py), or by the ranking score
MAX_DRAWS = 16   # draws per reply shown: 16N rows of the vocabulary's width at most (docs/limits.md)
BEAM_STOPS = ("first", "best")


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
    order: str = "readers"     # the replies shown, ranked: in order of how often readers kept each after this kind
                               # of turn, when the run's folder holds kept.json (vhred/kept.py); "score": the ranking's
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
            raise InputError(f"beam_stop must be first or best, got {limits.shown(self.beam_stop)}")
        if self.method == "beam" and self.num_samples * self.beam > limits.MAX_BEAM_ROWS * widened:
            raise InputError(f"num_samples x beam may be at most {limits.MAX_BEAM_ROWS:,} (rows of one beam "
                             f"search), got {self.num_samples} x {self.beam}")
        limits.count("top_k", self.top_k, 0, limits.MAX_TOP_K)
        limits.count("draws", self.draws, 1, MAX_DRAWS)   # with num_samples' cap: at most 16N rows, as widened allows
        limits.count("seed", self.seed, 0, 2 ** 63 - 1)
        limits.count("min_len", self.min_len, 0, self.max_len)
        if isinstance(self.temperature, bool) or not 0 < self.temperature <= 1e6:   # exact for any int; NaN fails
            raise InputError(f"temperature must be a positive finite number up to 1e6, got {limits.shown(self.temperature)}")
        if not (0 <= self.mmi_lambda <= 2 and -1 <= self.length_bonus <= 1):   # NaN fails too
            raise InputError("mmi_lambda must be in [0, 2] and length_bonus in [-1, 1]")
        if isinstance(self.answer_weight, bool) or not 0 <= self.answer_weight <= 10:
            raise InputError(f"answer_weight must be in [0, 10], got {limits.shown(self.answer_weight)}")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {limits.shown(self.top_p)}")
        if isinstance(self.rank, bool):   # rank=True / False of earlier versions
            self.rank = "pmi" if self.rank else "none"
        if self.rank not in RANKS:
            raise InputError(f"rank must be {', '.join(RANKS)}, got '{self.rank}'")
        if self.order not in ORDERS:
            raise InputError(f"order must be {' or '.join(ORDERS)}, got {limits.shown(self.order)}")
        return self


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
    z = cond[:, cond.shape[1] - model.z_dim:].float().cpu() if model.latent else None   # (C*n, Z): condition() puts z last
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


def _step_rules(scores, words, last, opts: DecodeOptions, space, t: int) -> None:
    """In place on step t's (R, V) scores, for sampling and beam search alike: <pad>, <bos> and
    <unk> (a word-level vocabulary's rest) are never written; a reply holds opts.min_len printing
    tokens (_no_empty_reply); at max_len only <eos> is left."""
    scores[:, PAD] = scores[:, BOS] = scores[:, UNK] = float("-inf")
    if t < opts.max_len:
        _no_empty_reply(scores, words, last, opts.min_len, space, opts.max_len - t)
    else:
        scores[:, :EOS] = scores[:, EOS + 1:] = float("-inf")


def sample_tokens(model, cond, opts: DecodeOptions, u: torch.Tensor) -> tuple[list[list[int]], torch.Tensor]:
    """Ancestral (or greedy) decoding of one response per row of cond, sampling step t with the
    row's uniform u[:, t]; returns ids and their total log-likelihood under the model
    (temperature 1, no filtering)."""
    B, device = cond.shape[0], cond.device
    state = model.decoder_state(cond)                                       # (layers, B, Hd)
    token = torch.full((B, 1), BOS, dtype=torch.long, device=device)        # (A, 1) the live rows' last token
    out = torch.full((B, opts.max_len), PAD, dtype=torch.long, device=device)
    logp = torch.zeros(B, device=device)                                    # (B,)
    live = torch.arange(B, device=device)                                   # the rows not ended yet (A,)
    blank, space = blank_tokens(model, device)                              # (V,) each
    words = torch.zeros(B, dtype=torch.long, device=device)                 # printing tokens so far (A,)
    for t in range(opts.max_len + 1):   # max_len words, then <eos> is forced
        logits, state = model.decode(token, cond, state)                    # (A, 1, V)
        logits = logits[:, -1].float()                                      # (A, V)
        model_logp = F.log_softmax(logits, -1)                              # (A, V) the score: before any rule
        _step_rules(logits, words, token[:, 0], opts, space, t)
        if t == opts.max_len:
            nxt = torch.full((len(live),), EOS, dtype=torch.long, device=device)
        elif opts.method == "greedy":
            nxt = logits.argmax(-1)
        else:
            scaled = logits if opts.temperature == 1 else tempered(logits, opts.temperature)
            probs = F.softmax(filter_logits(scaled, opts.top_k, opts.top_p), -1)
            nxt = categorical(probs, u[live, t])
        logp[live] += model_logp.gather(1, nxt[:, None]).squeeze(1)         # (A,) the chosen tokens' log p
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
      (docs/rating-rounds.md, eightieth round: 54.6% against 45.5% of the five shown).
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
    state = model.decoder_state(cond_k)                                     # (layers, A*K, Hd)
    scores = torch.full((B, K), float("-inf"), device=device)
    scores[:, 0] = 0.0                                                      # one live beam at start
    token = torch.full((B * K, 1), BOS, dtype=torch.long, device=device)    # (A*K, 1) each beam's last token
    done = [[] for _ in range(B)]                                           # (score, ids) per row
    seqs = [[] for _ in range(B * K)]                                       # each beam's words, on the host
    blank, space = blank_tokens(model, device)                              # (V,) each
    words = torch.zeros(B * K, dtype=torch.long, device=device)             # printing tokens so far per beam
    for t in range(opts.max_len + 1):
        logits, state = model.decode(token, cond_k, state)
        logp = F.log_softmax(logits[:, -1].float(), -1)                     # (A*K, V)
        _step_rules(logp, words, token[:, 0], opts, space, t)
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
    extend and their tokens (a row with fewer than K live ones is padded with dead beams)."""
    scores, pick, tokens = [], [], []
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
                tokens.append(w)
                live += 1
        scores += [float("-inf")] * (K - live)
        pick += [b * K] * (K - live)
        tokens += [EOS] * (K - live)
    return scores, pick, tokens


def _host_to(values: list, device, dtype=torch.long) -> torch.Tensor:
    """A host list to the device without waiting for it (pinned first on a GPU)."""
    t = torch.tensor(values, dtype=dtype)
    return (t.pin_memory() if device.type == "cuda" else t).to(device, non_blocking=True)


@torch.inference_mode()
def decode(model: Model, contexts: list[list[list[int]]], opts: DecodeOptions, z=None) -> list[list[Response]]:
    """For each context (a list of utterances as token ids), opts.num_samples responses as
    Response (token ids, score; .z), all contexts and samples decoded as one batch, in the order
    drawn. The score is the decoding's own: the per-token log-likelihood of the words chosen (the
    beam's score for beam search); candidates.generate ranks them. z (C, Z), for VHRED: decode
    every response of context c from z[c] instead of sampling it from the prior (then only
    sampled words make them differ); a row of NaN leaves that context's z to the prior."""
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
        return [[Response(i, s) for i, s in zip(row, srow)] for row, srow in zip(ids, scores)]
    cond = conditions(model, ctx, n, eps, z)                                # (C*n, Hc + Z)
    if opts.method == "beam":                        # one beam search per z sample, its best beam
        ids, scores = beam_search(model, cond, opts, 1)
        return _responses([x[0] for x in ids], [s[0] for s in scores], cond, model, n)
    ids, logp = sample_tokens(model, cond, opts, u)
    per_token = [lp / (len(x) + 1) for x, lp in zip(ids, logp.tolist())]
    return _responses(ids, per_token, cond, model, n)
