"""The pieces every family shares: the latent-variable maths, the Gaussian heads, and the
hierarchical encoder-decoder (utterance encoder, context RNN, decoder) the families wire a latent into.

A dialogue is w_1 .. w_N utterances. The utterance encoder turns each w_n into a vector, the
context RNN reads those vectors into states h_1 .. h_N, and utterance n is decoded from a
condition vector: h_{n-1} for HRED, [h_{n-1}; z_n] for the latent families.

With `attention` = N > 0 the decoder also reads the words of the turn it answers, w_{n-1}
(Luong et al. 2015, global attention after the RNN): the state h_{n-1} is one vector for the
whole context, and a reply that answers a question needs that question's words. The first N
word states of w_{n-1} travel in the context rows themselves, after h: a context row is
[h ; memory (N x Hd) ; mask (N)], a condition row [h ; memory ; mask ; z]. So generation,
ranking and scoring, which only index, repeat and concatenate rows, carry them unchanged;
summary(ctx) gives h back to a prior network, split(cond) the decoder's parts.

With `retrieve` the decoder attends over M = 2N words: the answered turn's first N and the first N
of a retrieved reply, the training split's reply to the turn most like it (retrieve-and-refine,
Weston et al. 2018; retrieval.py). With `copy` each step may also copy one of the attended pieces
(a pointer-generator, See et al. 2017), and a row carries the M piece ids after the mask:

    p_gen       = sigmoid(w . [s_t ; c_t] + b)                  how much step t generates
    p(w_t = v)  = p_gen * softmax(W o_t)_v + (1 - p_gen) * sum_{j: x_j = v} a_tj

b starts at 2 (p_gen about 0.88), so training starts from generating and learns where to copy.
"""
import math
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ..tokenizer import BOS, EOS, PAD, UNK
from .retrieval import RetrievalIndex

if TYPE_CHECKING:   # the config looks families up in this package: a name for readers only
    from ..config import ModelConfig

EPS = 1e-10   # added to the copy mixture's probabilities before the log (a piece neither made nor copied)


# --- the latent-variable maths -----------------------------------------------------------------

def reparameterize(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I): a sample through which gradients reach mu and sigma."""
    return mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)


def gaussian_kl(mean_q, logvar_q, mean_p, logvar_p) -> torch.Tensor:
    """KL(N(mu_q, var_q) || N(mu_p, var_p)) per dimension, for diagonal Gaussians (nats).

    0.5 * (log var_p - log var_q + (var_q + (mu_q - mu_p)^2) / var_p - 1)
    """
    return 0.5 * (logvar_p - logvar_q
                  + (torch.exp(logvar_q) + (mean_q - mean_p) ** 2) * torch.exp(-logvar_p) - 1.0)


def gaussian_log_density(z, mean, logvar) -> torch.Tensor:
    """log N(z; mu, diag(var)), summed over the last dimension."""
    return -0.5 * (((z - mean) ** 2) * torch.exp(-logvar) + logvar + math.log(2 * math.pi)).sum(-1)


def log_weight(nll, z, prior, posterior) -> torch.Tensor:
    """One importance weight of Burda et al. (2016), log p(w | z) + log p(z) - log q(z) for z ~ q:
    nll (-log p(w | z)) and z (..., Z) per row, prior and posterior (mean, logvar) pairs."""
    return -nll + gaussian_log_density(z, *prior) - gaussian_log_density(z, *posterior)


class GaussianNet(nn.Module):
    """A two-layer tanh MLP giving the mean and log-variance of a diagonal Gaussian (as in VHRED)."""

    def __init__(self, in_dim: int, hidden: int, z_dim: int):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.mean = nn.Linear(hidden, z_dim)
        self.logvar = nn.Linear(hidden, z_dim)

    def forward(self, x):
        h = self.body(x)
        return self.mean(h).float(), self.logvar(h).float()   # the KL and z in fp32 under autocast


def bow_head(in_dim: int, hidden: int, vocab: int) -> nn.Module:
    """Predicts a response's words from its condition alone (Zhao et al. 2017)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, vocab))


# --- the hierarchical encoder-decoder ---------------------------------------------------------

class Hierarchical(nn.Module):
    """Embeddings, utterance encoder, context RNN and decoder over a vocabulary of vocab_size
    pieces; a family adds its latent pieces in its own __init__ (before init_weights) and
    defines forward, prior sampling and its likelihood bound.

    The contract every family meets (train, generate, scoring and the API rely on no more):
      latent, z_dim          whether decoding is conditioned on a latent, and its size
      attends                whether it takes attention=N (the context rows then carry the
                             answered turn's words after h: read them through summary() and split())
      OWN_SETTINGS           the ModelConfig keys it reads that not every family reads: given
                             to a family that does not read them (other than at their
                             default), they are refused at start
      DEFAULTS               its values of ModelConfig keys a config leaves out
      forward(tokens, lens, turns) -> dict: nll (T,), n_tokens, and for latent families
                             kl (T, Z), post_mean (T, Z); bow, extra terms as the family has
      objective(out, beta, free_bits, n_tokens, weights) -> the loss per token the optimiser minimises
      log_weights(tokens, lens, turns, k) -> (T, K) log importance weights of the test bound
      final_states(tokens, lens, turns) -> (C, Hc [+ memory]) the state a response is decoded from
      prior(ctx) -> mean, logvar; sample_prior(ctx, eps) -> z;  condition(ctx, z) -> cond
      response_log_weights(ctx, tokens, lens, eps) -> (P*K,) weights of log p(r | context)
      param_groups() -> the optimiser's groups (one by default; "lr_scale" per group)
      extra_steps(out) -> losses for optimiser steps of their own after the main one (none by
                             default), each made after the step before it
    """
    latent = False
    kl = False   # a KL term in closed form (the Gaussian families'): kl_per_utt means something
    attends = False
    z_dim = 0
    OWN_SETTINGS: tuple[str, ...] = ()
    DEFAULTS: dict = {}
    # The run's ranking aids, which loading.load_model attaches beside the modules (the state dict
    # stays the weights): its reply critic (vhred/critic.py; not DialogWAE's Wasserstein critic),
    # its answer table, the tokenizer the critic reads replies with, and the runs pooled with it.
    reply_critic = None
    answers = None
    sp = None
    pool: tuple = ()

    @property
    def noise_dim(self) -> int:
        """Standard normals a prior sample is made from (generation keys them per response)."""
        return self.z_dim

    def __init__(self, cfg: "ModelConfig", vocab_size: int, ctx_in_extra: int = 0):
        """The encoders; the family then adds its latent pieces, build_decoder() and
        init_weights(), in that order (the order parameters are made in is the order their
        initial values are drawn in)."""
        super().__init__()
        self.cfg = cfg
        self.vocab_size = V = vocab_size
        self.blank_ids: list[int] = []   # ids of "▁" alone (it prints nothing): the tokenizer's, set on load
        E = cfg.emb_dim
        self.embed = nn.Embedding(V, E, padding_idx=PAD)
        self.drop = nn.Dropout(cfg.dropout)
        self.utt_rnn = nn.GRU(E, cfg.utt_hidden, batch_first=True, bidirectional=True)
        floor = 2 if cfg.floor else 0
        self.ctx_rnn = nn.GRU(2 * cfg.utt_hidden + ctx_in_extra + floor, cfg.ctx_hidden, batch_first=True)
        if cfg.retrieve:   # the training split's exchanges, filled by index_training_split() or a load
            self.retrieval = RetrievalIndex(V)

    @property
    def slots(self) -> int:
        """Attended words per context row: the answered turn's N, and N of a retrieved reply."""
        return self.cfg.attention * (2 if self.cfg.retrieve else 1)

    def build_decoder(self, cond: int):
        """The decoder GRU conditioned on a cond-sized vector at every step, and the output layer."""
        cfg, V, E = self.cfg, self.vocab_size, self.cfg.emb_dim
        self.dec_init = nn.Linear(cond, cfg.dec_hidden)
        self.dec_rnn = nn.GRU(E + cond, cfg.dec_hidden, batch_first=True)
        if cfg.tie_embeddings:   # project to the embedding space, then score with the embeddings
            self.out_proj = nn.Linear(cfg.dec_hidden, E)
            self.lm_head = nn.Linear(E, V, bias=False)
            self.lm_head.weight = self.embed.weight
        else:
            self.out_proj = nn.Identity()
            self.lm_head = nn.Linear(cfg.dec_hidden, V, bias=False)
        if cfg.attention:   # the last turn's word states in the decoder's space, and Luong's W_c
            self.mem_proj = nn.Linear(2 * cfg.utt_hidden, cfg.dec_hidden)
            self.attn_out = nn.Linear(2 * cfg.dec_hidden, cfg.dec_hidden)
        if cfg.copy:   # p_gen from [s_t ; c_t]; made drawing nothing (init_weights sets it), so the
            # other weights and the training's random draws are those of the same seed without copy
            self.copy_gate = nn.utils.skip_init(nn.Linear, 2 * cfg.dec_hidden, 1)

    def init_weights(self):
        """Orthogonal recurrent weights, Xavier elsewhere, small embeddings, zero biases."""
        for name, p in self.named_parameters():
            if name.startswith("copy_gate."):
                continue   # set below, drawing nothing: the other weights' draws stay as without copy
            elif "weight_hh" in name:
                for w in p.data.chunk(3, 0):   # one square block per GRU gate
                    nn.init.orthogonal_(w)
            elif name == "embed.weight":
                nn.init.normal_(p, std=self.cfg.emb_dim ** -0.5)
            elif p.dim() >= 2:
                nn.init.xavier_uniform_(p)
            elif "bias" in name:
                nn.init.zeros_(p)
        with torch.no_grad():
            self.embed.weight[PAD].zero_()
        if self.cfg.copy:   # p_gen = sigmoid(2) at first, whatever the state
            nn.init.zeros_(self.copy_gate.weight)
            nn.init.constant_(self.copy_gate.bias, 2.0)

    def index_training_split(self, windows) -> str | None:
        """Keep what the model reads of its training split when it answers (with retrieve, the
        exchanges; nothing otherwise), before training; a line for the log, or None."""
        if self.cfg.retrieve:
            return f"retrieval: {self.retrieval.fill(windows):,} exchanges of the training split indexed"
        return None

    # --- encoders ---

    def encode_utterances(self, tokens, lens):
        """Bidirectional GRU over each utterance: (U, L) -> (U, 2*Hu), final states of both directions."""
        return self.encode_words(tokens, lens)[0]

    def encode_words(self, tokens, lens):
        """encode_utterances(), and the GRU's state at every word: packed, data (sum lens, 2*Hu)."""
        x = self.drop(self.embed(tokens))                                   # (U, L, E)
        words, h = run_rnn(self.utt_rnn, Packing(lens, x.device)(x))        # h (2, U, Hu)
        return torch.cat([h[0], h[1]], dim=-1), words                       # (U, 2*Hu)

    def memory(self, words: PackedSequence, rows: torch.Tensor, tokens, lens, replies_of=None) -> torch.Tensor:
        """The attended words of each context row, flat: the first N words of utterances `rows`
        of the packed word states (and with retrieve the first N of the reply each retrieves),
        projected to the decoder's width, their mask (and with copy their piece ids):
        (R,) -> (R, M*Hd + M [+ M]). tokens (U, L), lens (U,) host: the batch's utterances;
        replies_of (R,): in training, the reply each row's turn is followed by (never retrieved)."""
        N = self.cfg.attention
        states, mask = first_words(words, rows, N)                          # (R, N, 2*Hu), (R, N)
        ids = first_ids(tokens[to_device(rows, tokens.device)], N)          # (R, N)
        if self.cfg.retrieve:
            learned = None if replies_of is None else piece_ids(tokens, lens, replies_of)
            got = self.retrieval.replies(piece_ids(tokens, lens, rows), learned)
            more = self.read_replies(got, tokens.device)
            states, mask, ids = (torch.cat(pair, 1) for pair in zip((states, mask, ids), more))  # M = 2N
        mem = self.mem_proj(self.drop(states))                              # (R, M, Hd)
        parts = [mem.flatten(1), mask.to(mem.dtype)]
        if self.cfg.copy:   # in fp32 with the row: ids above 256 do not survive bf16
            parts = [p.float() for p in parts] + [ids.float()]
        return torch.cat(parts, dim=-1)

    def read_replies(self, replies: list[list[int]], device):
        """Retrieved replies (ids) through the utterance encoder: their first N word states, mask
        and piece ids, as for the answered turn: (R, N, 2*Hu), (R, N), (R, N)."""
        N, width = self.cfg.attention, max(len(r) for r in replies) + 2
        tokens = torch.tensor([[BOS, *r, EOS] + [PAD] * (width - len(r) - 2) for r in replies])
        lens = torch.tensor([len(r) + 2 for r in replies])
        _, words = self.encode_words(to_device(tokens, device)[:, 1:], lens - 1)
        states, mask = first_words(words, torch.arange(len(replies)), N)
        return states, mask, first_ids(to_device(tokens, device), N)

    def summary(self, ctx):
        """Context rows without the attended words: (T, Hc) with attention; the rows themselves
        without (VHCR's are [h ; z_conv])."""
        return ctx[:, :self.cfg.ctx_hidden] if self.cfg.attention else ctx

    def split(self, cond):
        """A condition row's parts: the vector every decoder step reads ([h ; z], (T, C)), and
        with attention the attended words (T, M, Hd) and their mask (T, M); else None, None."""
        if not self.cfg.attention:
            return cond, None, None
        Hc, M, Hd = self.cfg.ctx_hidden, self.slots, self.cfg.dec_hidden
        mem_end = Hc + M * Hd
        end = mem_end + M + (M if self.cfg.copy else 0)
        vec = torch.cat([cond[:, :Hc], cond[:, end:]], dim=-1)
        return vec, cond[:, Hc:mem_end].unflatten(1, (M, Hd)), cond[:, mem_end:mem_end + M] > 0.5

    def copy_ids(self, cond):
        """With copy, the piece id each attended word reads: (T, C) -> (T, M)."""
        start = self.cfg.ctx_hidden + self.slots * (self.cfg.dec_hidden + 1)
        return cond[:, start:start + self.slots].round().long()

    def with_floor(self, x, pos):
        """[x; which speaker said it]: (..., D) -> (..., D + 2) with cfg.floor, x itself without.

        The two speakers take turns, so a turn's speaker is its position's parity (pos counts
        from the context's first turn). With it the context RNN knows which earlier turns were
        the replier's own, as the floor of Zhao et al.'s (2017) and DialogWAE's context encoders
        tells theirs; without it the RNN must count turns to know."""
        if not self.cfg.floor:
            return x
        return torch.cat([x, F.one_hot(pos % 2, 2).to(x.dtype)], dim=-1)

    def encode_context(self, enc, turns, at_dlg, at_pos, h0=None):
        """Context GRU over each dialogue's utterance vectors (U, D); returns its states h at
        the (dialogue, position) pairs asked for: (T, Hc). turns, at_dlg, at_pos on the host."""
        dev = enc.device
        B, N = len(turns), int(turns.max())
        dlg, pos = positions(turns)
        enc = self.with_floor(enc, to_device(pos, dev))                     # (U, D [+ 2])
        h = enc.new_zeros(B, N, enc.shape[-1])
        h[to_device(dlg, dev), to_device(pos, dev)] = enc                   # (B, N, D)
        packing = Packing(turns, dev)
        out, _ = run_rnn(self.ctx_rnn, packing(h), h0)                      # data: (U, Hc)
        return out.data[to_device(packing.rows(at_dlg, at_pos), dev)]       # (T, Hc)

    def context_inputs(self, enc, turns):
        """What the context RNN reads for each utterance: its encoding (VHCR adds z_conv)."""
        return enc

    def final_states(self, tokens, lens, turns):
        """The context state after the last turn of each dialogue: (B, Hc [+ memory])."""
        h, words, last = self.last_turns(tokens, lens, turns)
        return self.with_memory(h, words, last, tokens, lens.cpu())

    def last_turns(self, tokens, lens, turns):
        """Each dialogue's context state after its last turn h (B, Hc), the packed word states
        of every utterance, and which utterance is each dialogue's last (B,)."""
        enc, words = self.encode_words(tokens[:, 1:], lens - 1)             # (U, 2*Hu)
        turns = turns.cpu()
        h = self.encode_context(self.context_inputs(enc, turns), turns, torch.arange(len(turns)), turns - 1)
        return h, words, torch.cumsum(turns, 0) - 1

    def with_memory(self, h, words, rows, tokens, lens, replies_of=None):
        """Context rows: h (T, Hc), and with attention the words of utterances `rows` after it
        (see memory())."""
        if not self.cfg.attention:
            return h
        return torch.cat([h, self.memory(words, rows, tokens, lens, replies_of)], dim=-1)

    def targets(self, tokens, lens, turns):
        """Encode the dialogues; for the T utterances with a turn before them return their
        encodings (T, 2*Hu), contexts h_{n-1} (T, Hc), tokens (T, L) and lengths |w| + 1 (T,).

        lens and turns are read on the host (a Batch keeps them there): the indices below and
        the packing need them, and reading them back from a GPU would stall every step."""
        lens, turns = lens.cpu(), turns.cpu()
        enc, words = self.encode_words(tokens[:, 1:], lens - 1)             # (U, 2*Hu) reads w <eos>
        dlg, pos = positions(turns)
        tgt = (pos > 0).nonzero().squeeze(1)                                # (T,) on the host
        ctx = self.encode_context(self.context_inputs(enc, turns), turns, dlg[tgt], pos[tgt] - 1)
        ctx = self.with_memory(ctx, words, tgt - 1, tokens, lens, tgt)      # the turn each target answers
        tgt_dev = to_device(tgt, tokens.device)
        return enc[tgt_dev], ctx, tokens[tgt_dev], lens[tgt] - 1

    # --- decoder ---

    def decoder_state(self, cond):
        """Initial decoder state from the condition: (T, C) -> (1, T, Hd)."""
        return torch.tanh(self.dec_init(self.split(cond)[0])).unsqueeze(0)

    def decode(self, inputs, cond, state):
        """One or more decoder steps. inputs (T, S) ids, cond (T, C) -> logits (T, S, V), state
        (with copy, the mixture's log-probabilities)."""
        vec, mem, mask = self.split(cond)
        out, state = run_rnn(self.dec_rnn, self._decoder_input(inputs, vec), state)  # (T, S, Hd)
        if mem is None:
            return self.lm_head(self.out_proj(self.drop(out))), state
        a = self.attention_weights(out, mem, mask)                          # (T, S, M)
        read = a.to(mem.dtype) @ mem                                        # (T, S, Hd)
        logits = self.lm_head(self.out_proj(self.drop(self.attended(out, read))))  # (T, S, V)
        if not self.cfg.copy:
            return logits, state
        # with copy: log-probabilities of the mixture in place of logits (log_softmax keeps them)
        ids = self.copy_ids(cond).unsqueeze(1).expand(-1, out.shape[1], -1)  # (T, S, M)
        copied = torch.zeros_like(logits, dtype=torch.float).scatter_add_(2, ids, a)  # (T, S, V)
        gen = self.p_gen(out, read)                                         # (T, S, 1)
        return torch.log(gen * torch.softmax(logits.float(), -1) + (1 - gen) * copied + EPS), state

    def p_gen(self, out, read):
        """How much a step generates rather than copies: sigmoid(w . [s_t ; c_t] + b), fp32:
        (..., Hd), (..., Hd) -> (..., 1)."""
        return torch.sigmoid(self.copy_gate(torch.cat([out, read.to(out.dtype)], dim=-1)).float())

    def read(self, out, mem, mask):
        """c_t of attention_weights(): (T, S, Hd)."""
        return self.attention_weights(out, mem, mask).to(mem.dtype) @ mem   # (T, S, Hd)

    def attention_weights(self, out, mem, mask):
        """Luong et al.'s global attention: each decoder state s_t weighs the attended words m_j
        by a_tj = softmax_j(s_t . m_j / sqrt(Hd)) (m_j = W_m enc_j, so the score is their
        "general" one), reads c_t = sum_j a_tj m_j and goes on as attended(): tanh(W_c [c_t ; s_t]).
        The weights, in fp32: out (T, S, Hd), mem (T, M, Hd), mask (T, M) -> (T, S, M)."""
        scores = out @ mem.transpose(1, 2) / math.sqrt(mem.shape[-1])      # (T, S, M)
        scores = scores.float().masked_fill(~mask.unsqueeze(1), float("-inf"))
        return torch.softmax(scores, dim=-1)

    def attended(self, out, read):
        """tanh(W_c [c_t ; s_t]) of the read c_t, for any leading shape: (..., Hd) -> (..., Hd)."""
        return torch.tanh(self.attn_out(torch.cat([read, out.to(read.dtype)], dim=-1)))

    def _decoder_input(self, inputs, cond):
        """Every decoder step sees its word and the condition: (T, S) -> (T, S, E + C)."""
        x = self.drop(self.embed(inputs))                                   # (T, S, E)
        return torch.cat([x, cond.unsqueeze(1).expand(-1, x.shape[1], -1)], dim=-1)

    def reconstruction_nll(self, tokens, lens, cond):
        """-log p(w | cond) per utterance, teacher-forced. tokens (T, L) <bos> w <eos>, lens = |w| + 1.

        Only real tokens reach the softmax: the packed sequence has no padding in it.
        """
        inputs = self.decoder_inputs(tokens)
        vec, mem, mask = self.split(cond)
        x = self._decoder_input(inputs, vec)                                # (T, L-1, E + C)
        packing = Packing(lens, x.device)
        out, _ = run_rnn(self.dec_rnn, packing(x), self.decoder_state(cond))  # data: (sum lens, Hd)
        steps = hidden = out.data                                           # (sum lens, Hd)
        if mem is not None:   # the read needs each response's steps together: padded, read, packed again
            a = self.attention_weights(pad_packed_sequence(out, batch_first=True)[0], mem, mask)  # (T, S, M)
            read = packing(a.to(mem.dtype) @ mem).data                      # (sum lens, Hd)
            hidden = self.attended(steps, read)                             # (sum lens, Hd)
        logits = self.lm_head(self.out_proj(self.drop(hidden)))             # (sum lens, V)
        targets = packing(tokens[:, 1:]).data                               # (sum lens,)
        owner = packing(torch.arange(len(lens), device=tokens.device).unsqueeze(1).expand_as(inputs)).data
        token_nll = F.cross_entropy(logits.float(), targets, reduction="none")
        if self.cfg.copy:   # -log(p_gen p_vocab + (1 - p_gen) p_copy) of each target piece
            copied = (packing(a).data * (self.copy_ids(cond)[owner] == targets.unsqueeze(1))).sum(1)
            gen = self.p_gen(steps, read).squeeze(1)
            token_nll = -torch.log(gen * torch.exp(-token_nll) + (1 - gen) * copied + EPS)
        return torch.zeros(len(lens), device=tokens.device).index_add_(0, owner, token_nll)

    def decoder_inputs(self, tokens):
        """The teacher-forced inputs <bos> w (T, L-1), with word dropout in training."""
        inputs = tokens[:, :-1]
        if self.training and self.cfg.word_dropout > 0:   # hide words so the decoder leans on z
            drop = torch.rand(inputs.shape, device=inputs.device) < self.cfg.word_dropout
            drop[:, 0] = False                                              # keep <bos>
            inputs = inputs.masked_fill(drop & (inputs != PAD), UNK)
        return inputs

    def bow_nll(self, cond, words):
        """Bag-of-words loss per target (T,): -sum log p_bow(w_t | h, z) over a response's words
        and <eos>."""
        logp = F.log_softmax(self.bow(self.split(cond)[0]).float(), dim=-1)  # (T, V)
        picked = logp.gather(1, words)                                      # (T, L-1)
        return -(picked * (words != PAD)).sum(1)

    # --- the contract's defaults (a family overrides what differs) ---

    def condition(self, ctx, z):
        """What the decoder is conditioned on: [h, z] (T, Hc + Z), or h without a latent."""
        return ctx if z is None else torch.cat([ctx, z], dim=-1)

    def objective(self, out: dict, beta: float, free_bits: float = 0.0, n_tokens=None, weights=None, reduce=None):
        """The training loss per predicted token (see objective())."""
        return objective(out, beta, free_bits, self.cfg.bow_weight, n_tokens, weights, reduce)

    def posterior_terms(self, tokens, lens, turns) -> dict:
        """forward()'s terms with any latent above the utterances' at its posterior mean rather
        than a draw, so that post_mean and kl say the same of a dialogue each time (the latent
        plot). Only VHCR has such a latent."""
        return self(tokens, lens, turns)

    def param_groups(self) -> list[dict]:
        """The optimiser's parameter groups: one, at the schedule's learning rate. A family whose
        parts learn at other rates returns several, each with an "lr_scale"."""
        return [{"params": list(self.parameters())}]

    def extra_steps(self, out: dict):
        """Losses, yielded one at a time, for optimiser steps of their own after the training step
        that made `out` (a player of a game trained more often than the rest, as a GAN's critic).
        Each reaches only the weights it trains: the others get no gradient and stay. None here."""
        return iter(())

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def objective(out: dict, beta: float, free_bits: float = 0.0, bow_weight: float = 0.0, n_tokens=None,
              weights=None, reduce=None):
    """The training loss per predicted token: (NLL + beta * KL [+ bow] [+ extra]) / tokens.

    n_tokens defaults to this batch's; data-parallel ranks pass the whole batch's count.
    weights (T,), when given, weigh each target's NLL, KL and bag-of-words loss
    (config.wh_reply_weight): a target of weight 4 counts as four copies of it.

    With free bits, each latent dimension's batch-mean KL below `free_bits` nats is not
    penalised, so the optimiser has no reason to push it to zero (Kingma et al. 2016). Under
    data parallelism `reduce` sums a tensor over the ranks in place, so which dimensions are
    below the floor is decided on the whole batch's mean, as one process decides it; each rank's
    share then sums to one process's loss and gradient.
    "kl_extra" is a KL term outside the per-utterance latents (VHCR's z_conv), "extra" a loss
    a family adds unweighted (DialogWAE's adversarial terms).
    """
    nll = out["nll"] if weights is None else out["nll"] * weights           # (T,)
    loss = nll.sum()
    if "kl" in out:
        kl = out["kl"] if weights is None else out["kl"] * weights[:, None]  # (T, Z)
        if free_bits > 0:   # on the (weighted) batch mean of each dimension
            kl = floored(kl, free_bits, kl.new_tensor(kl.shape[0]) if weights is None else weights.sum(), reduce)
        loss = loss + beta * kl.sum()
    if "kl_extra" in out:
        loss = loss + beta * out["kl_extra"]
    if "bow" in out:
        bow = out["bow"] if weights is None else out["bow"] * weights       # (T,)
        loss = loss + bow_weight * bow.sum()
    if "extra" in out:
        loss = loss + out["extra"]
    return loss / max(n_tokens or out["n_tokens"], 1)


def floored(kl, free_bits: float, count, reduce=None):
    """Free bits: each dimension's KL summed over the targets (Z,), held at free_bits nats a
    target where the batch mean is below that, so it gets no gradient there. kl (T, Z) and count
    (this rank's targets, weighted) are this rank's; reduce, when given, sums over the ranks."""
    total = kl.sum(0)                                                       # (Z,)
    whole = torch.cat([total.detach(), count.detach().reshape(1).to(total.dtype)])   # (Z + 1,)
    if reduce is not None:
        reduce(whole)                                                       # all ranks' sums and count
    below = whole[:-1] / whole[-1] < free_bits                              # (Z,) on the whole batch
    return torch.where(below, free_bits * count, total)


def piece_ids(tokens: torch.Tensor, lens: torch.Tensor, rows: torch.Tensor) -> list[list[int]]:
    """The words of utterances `rows` as lists of ids, without <bos> and <eos>: tokens (U, L)
    <bos> w <eos>, lens (U,) on the host."""
    host = tokens[to_device(rows, tokens.device)].cpu()
    return [host[i, 1:int(lens[r]) - 1].tolist() for i, r in enumerate(rows.tolist())]


def first_ids(tokens: torch.Tensor, n: int) -> torch.Tensor:
    """The ids the first n word states read (the utterance encoder reads w <eos> after <bos>),
    PAD past the end: (R, L) -> (R, n)."""
    return F.pad(tokens[:, 1:1 + n], (0, max(0, n - tokens.shape[1] + 1)), value=PAD)


def first_words(words: PackedSequence, rows: torch.Tensor, n: int):
    """The first n word states of utterances `rows` of packed word states, zero after an
    utterance's end, and the mask of the words that exist: (R,) -> (R, n, D), (R, n)."""
    states, lens = pad_packed_sequence(words, batch_first=True)             # (U, L, D), (U,) host
    states = F.pad(states[rows, :n], (0, 0, 0, max(0, n - states.shape[1])))  # (R, n, D)
    mask = torch.arange(n) < lens[rows.cpu()].unsqueeze(1)                  # (R, n)
    return states, mask.to(states.device)


def run_rnn(rnn: nn.GRU, x, state=None):
    """rnn(x, state), in the autocast dtype when autocast is on, on every device.

    Autocast's own RNN policy differs by device: CUDA's casts cuDNN RNNs to fp16 whatever dtype
    was asked for (with no loss scaler, small GRU gradients underflow), and the CPU's leaves them
    in fp32. So autocast is turned off inside, and the weights, input and state are cast to the
    asked dtype explicitly; gradients flow back to the fp32 weights through the casts."""
    data = x.data if isinstance(x, PackedSequence) else x
    kind = data.device.type
    if not torch.is_autocast_enabled(kind):
        return rnn(x, state)
    dtype = torch.get_autocast_dtype(kind)
    weights = {name: w.to(dtype) for name, w in rnn.named_parameters()}
    x = x._replace(data=data.to(dtype)) if isinstance(x, PackedSequence) else x.to(dtype)
    with torch.autocast(kind, enabled=False):
        return functional_call(rnn, weights, (x, None if state is None else state.to(dtype)))


class Packing:
    """pack_padded_sequence(x, lens, batch_first=True, enforce_sorted=False) for the tensors of
    one batch, sorted once on the host. torch's own version copies the sort order to the GPU with
    a blocking copy and pad_packed_sequence reads it back: two stalls per call, here none."""

    def __init__(self, lens: torch.Tensor, device):
        self.lens, self.order = torch.sort(lens.cpu(), descending=True)     # as torch sorts them
        order = to_device(self.order, device)
        unorder = torch.empty_like(order).scatter_(0, order, torch.arange(len(order), device=device))
        self.order_dev, self.unorder_dev = order, unorder

    def __call__(self, x: torch.Tensor) -> PackedSequence:
        p = pack_padded_sequence(x.index_select(0, self.order_dev), self.lens, batch_first=True)
        return PackedSequence(p.data, p.batch_sizes, self.order_dev, self.unorder_dev)

    def rows(self, seq: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Rows of the packed data holding sequence seq at time t (host tensors): the data holds
        time step after time step, each with the sequences still running, longest first."""
        steps = int(self.lens[0])
        batch_sizes = (self.lens.unsqueeze(0) > torch.arange(steps).unsqueeze(1)).sum(1)  # (steps,)
        offsets = torch.cumsum(batch_sizes, 0) - batch_sizes
        rank = torch.empty_like(self.order).scatter_(0, self.order, torch.arange(len(self.order)))
        return offsets[t] + rank[seq]


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """A host index tensor to the device without waiting for the device (pinned first on a
    GPU: a copy from pageable memory would block the host until it is done)."""
    if torch.device(device).type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def positions(turns):
    """For U flattened utterances: the dialogue of each (U,) and its position in that dialogue (U,)."""
    dlg = torch.repeat_interleave(torch.arange(len(turns), device=turns.device), turns)
    start = torch.cumsum(turns, 0) - turns
    pos = torch.arange(len(dlg), device=turns.device) - start[dlg]
    return dlg, pos
