"""VHRED (Serban et al., 2017) and its HRED baseline.

A dialogue is w_1 .. w_N utterances. The utterance encoder turns each w_n into a vector, the
context RNN reads those vectors into states h_1 .. h_N, and utterance n is decoded from h_{n-1}
and, for VHRED, a latent z_n:

    prior      p(z_n | w_<n)      = N(mu_p, sigma_p^2),  (mu_p, log sigma_p^2) = MLP(h_{n-1})
    posterior  q(z_n | w_<=n)     = N(mu_q, sigma_q^2),  (mu_q, log sigma_q^2) = MLP(h_{n-1}, enc(w_n))
    ELBO       sum_n E_q[log p(w_n | z_n, w_<n)] - KL(q(z_n | w_<=n) || p(z_n | w_<n))   (paper eq. 6)

Training samples z_n from the posterior with the reparameterisation trick; generation samples
it from the prior, so one context gives several different responses.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from .config import ModelConfig
from .tokenizer import PAD, UNK


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


# --- the hierarchical encoder-decoder ---------------------------------------------------------

class VHRED(nn.Module):
    """The network of a ModelConfig over a vocabulary of vocab_size pieces (the tokenizer's)."""

    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        V, E = vocab_size, cfg.emb_dim
        self.latent = cfg.model == "vhred"
        # pieces that print nothing ("▁" alone), known from the tokenizer (checkpoint.load_model):
        # decoding does not count them towards DecodeOptions.min_len
        self.blank_ids: list[int] = []
        Z = cfg.z_dim if self.latent else 0
        self.embed = nn.Embedding(V, E, padding_idx=PAD)
        self.drop = nn.Dropout(cfg.dropout)
        self.utt_rnn = nn.GRU(E, cfg.utt_hidden, batch_first=True, bidirectional=True)
        self.ctx_rnn = nn.GRU(2 * cfg.utt_hidden, cfg.ctx_hidden, batch_first=True)
        if self.latent:
            self.prior_net = GaussianNet(cfg.ctx_hidden, cfg.latent_hidden, Z)
            self.posterior_net = GaussianNet(cfg.ctx_hidden + 2 * cfg.utt_hidden, cfg.latent_hidden, Z)
            if cfg.bow_weight > 0:   # predicts the response's words from [h, z] alone (Zhao et al. 2017)
                self.bow = nn.Sequential(nn.Linear(cfg.ctx_hidden + Z, cfg.latent_hidden), nn.Tanh(),
                                         nn.Linear(cfg.latent_hidden, V))
        cond = cfg.ctx_hidden + Z   # the decoder is conditioned on [h_{n-1}, z_n]
        self.dec_init = nn.Linear(cond, cfg.dec_hidden)
        self.dec_rnn = nn.GRU(E + cond, cfg.dec_hidden, batch_first=True)
        if cfg.tie_embeddings:   # project to the embedding space, then score with the embeddings
            self.out_proj = nn.Linear(cfg.dec_hidden, E)
            self.lm_head = nn.Linear(E, V, bias=False)
            self.lm_head.weight = self.embed.weight
        else:
            self.out_proj = nn.Identity()
            self.lm_head = nn.Linear(cfg.dec_hidden, V, bias=False)
        self._init_weights()

    def _init_weights(self):
        """Orthogonal recurrent weights, Xavier elsewhere, small embeddings, zero biases."""
        for name, p in self.named_parameters():
            if "weight_hh" in name:
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

    # --- pieces ---

    def encode_utterances(self, tokens, lens):
        """Bidirectional GRU over each utterance: (U, L) -> (U, 2*Hu), final states of both directions."""
        x = self.drop(self.embed(tokens))                                   # (U, L, E)
        _, h = run_rnn(self.utt_rnn, Packing(lens, x.device)(x))            # (2, U, Hu)
        return torch.cat([h[0], h[1]], dim=-1)                              # (U, 2*Hu)

    def encode_context(self, enc, turns, at_dlg, at_pos):
        """Context GRU over each dialogue's utterance vectors (U, 2*Hu); returns its states h at
        the (dialogue, position) pairs asked for: (T, Hc). turns, at_dlg, at_pos on the host."""
        dev = enc.device
        B, N = len(turns), int(turns.max())
        dlg, pos = _positions(turns)
        h = enc.new_zeros(B, N, enc.shape[-1])
        h[_to(dlg, dev), _to(pos, dev)] = enc                               # (B, N, 2*Hu)
        packing = Packing(turns, dev)
        out, _ = run_rnn(self.ctx_rnn, packing(h))                          # data: (U, Hc)
        return out.data[_to(packing.rows(at_dlg, at_pos), dev)]             # (T, Hc)

    def final_states(self, tokens, lens, turns):
        """The context state after the last turn of each dialogue: (B, Hc)."""
        enc = self.encode_utterances(tokens[:, 1:], lens - 1)               # (U, 2*Hu)
        turns = turns.cpu()
        return self.encode_context(enc, turns, torch.arange(len(turns)), turns - 1)

    def prior(self, ctx):
        """p(z_n | w_<n): mean, logvar (T, Z) from the context state h_{n-1}."""
        return self.prior_net(ctx)

    def posterior(self, ctx, enc):
        """q(z_n | w_<=n): mean, logvar (T, Z) from h_{n-1} and the encoding of the response w_n."""
        return self.posterior_net(torch.cat([ctx, enc], dim=-1))

    def decoder_state(self, cond):
        """Initial decoder state from [h_{n-1}, z_n]: (T, C) -> (1, T, Hd)."""
        return torch.tanh(self.dec_init(cond)).unsqueeze(0)

    def decode(self, inputs, cond, state):
        """One or more decoder steps. inputs (T, S) ids, cond (T, C) -> logits (T, S, V), state."""
        out, state = run_rnn(self.dec_rnn, self._decoder_input(inputs, cond), state)  # (T, S, Hd)
        return self.lm_head(self.out_proj(self.drop(out))), state

    def _decoder_input(self, inputs, cond):
        """Every decoder step sees its word and [h_{n-1}, z_n]: (T, S) -> (T, S, E + C)."""
        x = self.drop(self.embed(inputs))                                   # (T, S, E)
        return torch.cat([x, cond.unsqueeze(1).expand(-1, x.shape[1], -1)], dim=-1)

    # --- training forward ---

    def targets(self, tokens, lens, turns):
        """Encode the dialogues; for the T utterances with a turn before them return their
        encodings (T, 2*Hu), contexts h_{n-1} (T, Hc), tokens (T, L) and lengths |w| + 1 (T,).

        lens and turns are read on the host (a Batch keeps them there): the indices below and
        the packing need them, and reading them back from a GPU would stall every step."""
        lens, turns = lens.cpu(), turns.cpu()
        enc = self.encode_utterances(tokens[:, 1:], lens - 1)               # (U, 2*Hu) reads w <eos>
        dlg, pos = _positions(turns)
        tgt = (pos > 0).nonzero().squeeze(1)                                # (T,) on the host
        ctx = self.encode_context(enc, turns, dlg[tgt], pos[tgt] - 1)       # (T, Hc) h_{n-1}
        tgt_dev = _to(tgt, tokens.device)
        return enc[tgt_dev], ctx, tokens[tgt_dev], lens[tgt] - 1

    def forward(self, tokens, lens, turns):
        """Terms of the negative ELBO for a batch of dialogues (see dataset.Batch).

        tokens (U, L), lens (U,), turns (B,). Targets are the T = U - B utterances that have
        at least one turn before them. Returns sums over the batch, kept apart for logging:
          nll (T,)        -log p(w_n | z_n, w_<n) per target utterance (nats)
          kl (T, Z)       KL(q || p) per target and latent dimension (absent for HRED)
          bow (scalar)    bag-of-words NLL of the targets' words given [h, z] (when enabled)
          post_mean (T, Z) posterior means, for counting active units
          n_tokens        predicted tokens (words plus <eos>)
        """
        enc, ctx, tgt_tokens, tgt_lens = self.targets(tokens, lens, turns)
        out = {}
        if self.latent:
            mean_p, logvar_p = self.prior(ctx)
            mean_q, logvar_q = self.posterior(ctx, enc)
            z = reparameterize(mean_q, logvar_q)                            # (T, Z)
            out["kl"] = gaussian_kl(mean_q, logvar_q, mean_p, logvar_p)     # (T, Z)
            out["post_mean"] = mean_q
            cond = torch.cat([ctx, z], dim=-1)                              # (T, Hc + Z)
        else:
            cond = ctx
        out["nll"] = self.reconstruction_nll(tgt_tokens, tgt_lens, cond)    # (T,)
        out["n_tokens"] = int(tgt_lens.sum())
        if self.latent and self.cfg.bow_weight > 0:
            out["bow"] = self.bow_nll(cond, tgt_tokens[:, 1:])
        return out

    def log_weights(self, tokens, lens, turns, k: int):
        """Importance weights for log p(w_n | w_<n) >= log 1/K sum_k p(w_n | z_k) p(z_k) / q(z_k)
        (Burda et al. 2016): (T, K) log weights with z_k ~ q, and the predicted token count.
        Tighter than the ELBO as K grows; equal to it in expectation at K = 1."""
        enc, ctx, tgt_tokens, tgt_lens = self.targets(tokens, lens, turns)
        if not self.latent:   # no latent: the weight is the exact likelihood
            nll = self.reconstruction_nll(tgt_tokens, tgt_lens, ctx)
            return -nll.unsqueeze(1).expand(-1, k), int(tgt_lens.sum())
        mean_p, logvar_p = self.prior(ctx)
        mean_q, logvar_q = self.posterior(ctx, enc)
        weights = []
        for _ in range(k):
            z = reparameterize(mean_q, logvar_q)                            # (T, Z)
            nll = self.reconstruction_nll(tgt_tokens, tgt_lens, torch.cat([ctx, z], dim=-1))
            log_p = gaussian_log_density(z, mean_p, logvar_p)               # (T,)
            log_q = gaussian_log_density(z, mean_q, logvar_q)
            weights.append(-nll + log_p - log_q)
        return torch.stack(weights, dim=1), int(tgt_lens.sum())            # (T, K)

    def reconstruction_nll(self, tokens, lens, cond):
        """-log p(w | cond) per utterance, teacher-forced. tokens (T, L) <bos> w <eos>, lens = |w| + 1.

        Only real tokens reach the softmax: the packed sequence has no padding in it.
        """
        inputs = tokens[:, :-1]
        if self.training and self.cfg.word_dropout > 0:   # hide words so the decoder leans on z
            drop = torch.rand(inputs.shape, device=inputs.device) < self.cfg.word_dropout
            drop[:, 0] = False                                              # keep <bos>
            inputs = inputs.masked_fill(drop & (inputs != PAD), UNK)
        x = self._decoder_input(inputs, cond)                               # (T, L-1, E + C)
        packing = Packing(lens, x.device)
        out, _ = run_rnn(self.dec_rnn, packing(x), self.decoder_state(cond))  # data: (sum lens, Hd)
        logits = self.lm_head(self.out_proj(self.drop(out.data)))           # (sum lens, V)
        targets = packing(tokens[:, 1:]).data                               # (sum lens,)
        owner = packing(torch.arange(len(lens), device=tokens.device).unsqueeze(1).expand_as(inputs)).data
        token_nll = F.cross_entropy(logits.float(), targets, reduction="none")
        return torch.zeros(len(lens), device=tokens.device).index_add_(0, owner, token_nll)

    def bow_nll(self, cond, words):
        """Bag-of-words loss: -sum log p_bow(w_t | h, z) over a response's words and <eos>."""
        logp = F.log_softmax(self.bow(cond).float(), dim=-1)                # (T, V)
        picked = logp.gather(1, words)                         # (T, L-1)
        return -(picked * (words != PAD)).sum()

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def objective(out: dict, beta: float, free_bits: float = 0.0, bow_weight: float = 0.0, n_tokens=None):
    """The training loss per predicted token: (NLL + beta * KL [+ bow]) / tokens.

    n_tokens defaults to this batch's; data-parallel ranks pass the whole batch's count.

    With free bits, each latent dimension's batch-mean KL below `free_bits` nats is not
    penalised, so the optimiser has no reason to push it to zero (Kingma et al. 2016).
    """
    loss = out["nll"].sum()
    if "kl" in out:
        kl = out["kl"]                                                      # (T, Z)
        if free_bits > 0:
            kl = kl.mean(0).clamp(min=free_bits) * kl.shape[0]              # (Z,) summed over T
        loss = loss + beta * kl.sum()
    if "bow" in out:
        loss = loss + bow_weight * out["bow"]
    return loss / max(n_tokens or out["n_tokens"], 1)


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
        order = _to(self.order, device)
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


def _to(t: torch.Tensor, device) -> torch.Tensor:
    """A host index tensor to the device without waiting for the device (pinned first on a
    GPU: a copy from pageable memory would block the host until it is done)."""
    if torch.device(device).type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def _positions(turns):
    """For U flattened utterances: the dialogue of each (U,) and its position in that dialogue (U,)."""
    dlg = torch.repeat_interleave(torch.arange(len(turns), device=turns.device), turns)
    start = torch.cumsum(turns, 0) - turns
    pos = torch.arange(len(dlg), device=turns.device) - start[dlg]
    return dlg, pos
