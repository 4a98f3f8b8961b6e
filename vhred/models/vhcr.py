"""VHCR (Park et al. 2018, "A Hierarchical Latent Structure for Variational Conversation Modeling").

A conversation latent z_conv above the utterance latents z_t:

    p(z_conv) = N(0, I);   q(z_conv | w_1..N) = N(MLP(biGRU(enc(w_1) .. enc(w_N))))
    context   h_t = GRU([enc(w_t); z_conv], h_{t-1}),  h_0 = tanh(Linear(z_conv))
    prior     p(z_t | w_<t, z_conv)   = N(MLP([h_{t-1}; z_conv]))
    posterior q(z_t | w_<=t, z_conv)  = N(MLP([h_{t-1}; z_conv; enc(w_t)]))
    decoder   p(w_t | h_{t-1}, z_conv, z_t)
    ELBO      sum_t E_q[log p(w_t | .)] - sum_t KL(q(z_t) || p(z_t)) - KL(q(z_conv) || p(z_conv))

Utterance drop: in training each utterance encoding the context RNN reads is replaced, with
probability utterance_drop (0.25, the rate of the authors' VHCR runs), by one learned vector,
so the context RNN cannot carry everything and z_conv has to.

Here the "context" every family decodes from is [h_{t-1}; z_conv], so VHRED's prior, posterior,
decoder wiring and likelihood pieces apply to it unchanged. When decoding a reply, z_conv is
the posterior mean of the conversation so far (the authors infer it from the context too),
computed again each turn from the last max_context turns: the same conversation so far gives
the same z_conv, and /keep and interpolation act on z_t.
The test bound is importance-weighted per dialogue, z_conv sampled with the z_t's; ranking a
candidate reply uses the per-reply bound over z_t with z_conv at that posterior mean (a bound
on log p(r | context, z_conv), not on log p(r | context): z_conv is not integrated out).
"""
import torch
import torch.nn as nn

from .layers import GaussianNet, Hierarchical, Packing, gaussian_kl, gaussian_log_density, log_weight, \
    positions, reparameterize, run_rnn, to_device
from .vhred import VHRED


class VHCR(VHRED):
    attends = False   # its context rows are [h ; z_conv]: no room kept for attended words
    OWN_SETTINGS = VHRED.OWN_SETTINGS + ("utterance_drop",)

    def __init__(self, cfg, vocab_size: int):
        Z, Hc, Hu = cfg.z_dim, cfg.ctx_hidden, cfg.utt_hidden
        Hierarchical.__init__(self, cfg, vocab_size, ctx_in_extra=Z)   # the context RNN reads [enc; z_conv]
        self.z_dim = Z
        self.conv_rnn = nn.GRU(2 * Hu, Hc, batch_first=True, bidirectional=True)
        self.conv_posterior_net = GaussianNet(2 * Hc, cfg.latent_hidden, Z)
        self.ctx_init = nn.Linear(Z, Hc)
        self.unk_utterance = nn.Parameter(torch.zeros(2 * Hu))
        self.add_latent_heads(GaussianNet(Hc + Z, cfg.latent_hidden, Z),
                              GaussianNet(Hc + Z + 2 * Hu, cfg.latent_hidden, Z), cond=Hc + 2 * Z)
        self.build_decoder(Hc + 2 * Z)   # [h_{t-1}; z_conv; z_t]
        self.init_weights()
        nn.init.normal_(self.unk_utterance, std=0.1)

    # --- the conversation latent ---

    def conv_posterior(self, enc, turns):
        """q(z_conv | the dialogue): mean, logvar (B, Z) from a bidirectional GRU over its
        utterance encodings enc (U, 2*Hu); turns on the host."""
        B, N = len(turns), int(turns.max())
        dlg, pos = positions(turns)
        h = enc.new_zeros(B, N, enc.shape[-1])
        h[to_device(dlg, enc.device), to_device(pos, enc.device)] = enc    # (B, N, 2*Hu)
        _, last = run_rnn(self.conv_rnn, Packing(turns, enc.device)(h))   # (2, B, Hc)
        return self.conv_posterior_net(torch.cat([last[0], last[1]], dim=-1))

    def drop_utterances(self, enc):
        """Each row of enc (U, 2*Hu) replaced by the learned unknown-utterance vector with
        probability utterance_drop, in training only."""
        if not self.training or self.cfg.utterance_drop <= 0:
            return enc
        drop = torch.rand(len(enc), 1, device=enc.device) < self.cfg.utterance_drop
        return torch.where(drop, self.unk_utterance.to(enc.dtype), enc)

    def contexts(self, enc, turns, z_conv, at_dlg, at_pos):
        """[h; z_conv] at the (dialogue, position) pairs asked for: (T, Hc + Z)."""
        dlg, _ = positions(turns)
        z_rows = z_conv.to(enc.dtype)[to_device(dlg, enc.device)]                      # (U, Z)
        inputs = torch.cat([self.drop_utterances(enc), z_rows], dim=-1)                # (U, 2*Hu + Z)
        h0 = torch.tanh(self.ctx_init(z_conv)).to(enc.dtype).unsqueeze(0)              # (1, B, Hc)
        h = self.encode_context(inputs, turns, at_dlg, at_pos, h0)                     # (T, Hc)
        return torch.cat([h, z_conv.to(h.dtype)[to_device(at_dlg, h.device)]], dim=-1)

    def encode_all(self, tokens, lens, turns, sample: bool):
        """Utterance encodings, z_conv (sampled from q, or its mean) with its posterior, and the
        targets' [h_{t-1}; z_conv], tokens and lengths."""
        lens, turns = lens.cpu(), turns.cpu()
        enc = self.encode_utterances(tokens[:, 1:], lens - 1)                           # (U, 2*Hu)
        mean_c, logvar_c = self.conv_posterior(enc, turns)                              # (B, Z)
        z_conv = reparameterize(mean_c, logvar_c) if sample else mean_c
        dlg, pos = positions(turns)
        tgt = (pos > 0).nonzero().squeeze(1)
        ctx = self.contexts(enc, turns, z_conv, dlg[tgt], pos[tgt] - 1)                 # (T, Hc + Z)
        tgt_dev = to_device(tgt, tokens.device)
        return enc[tgt_dev], ctx, tokens[tgt_dev], lens[tgt] - 1, (z_conv, mean_c, logvar_c), dlg[tgt]

    # --- the contract ---

    def targets(self, tokens, lens, turns):
        enc, ctx, tgt_tokens, tgt_lens, _, _ = self.encode_all(tokens, lens, turns, sample=True)
        return enc, ctx, tgt_tokens, tgt_lens

    def final_states(self, tokens, lens, turns):
        """[h; z_conv] after the last turn of each context, z_conv at its posterior mean: (C, Hc + Z)."""
        lens, turns = lens.cpu(), turns.cpu()
        enc = self.encode_utterances(tokens[:, 1:], lens - 1)
        mean_c, _ = self.conv_posterior(enc, turns)
        return self.contexts(enc, turns, mean_c, torch.arange(len(turns)), turns - 1)

    def forward(self, tokens, lens, turns):
        """VHRED's terms for the z_t, plus kl_extra: KL(q(z_conv) || N(0, I)) summed over the batch."""
        enc, ctx, tgt_tokens, tgt_lens, (_, mean_c, logvar_c), _ = self.encode_all(tokens, lens, turns, sample=True)
        out = self.latent_terms(enc, ctx, tgt_tokens, tgt_lens)
        zeros = torch.zeros_like(mean_c)
        out["kl_extra"] = gaussian_kl(mean_c, logvar_c, zeros, zeros).sum()
        return out

    def posterior_terms(self, tokens, lens, turns):
        """forward()'s utterance terms with z_conv at its posterior mean (no kl_extra)."""
        enc, ctx, tgt_tokens, tgt_lens, _, _ = self.encode_all(tokens, lens, turns, sample=False)
        return self.latent_terms(enc, ctx, tgt_tokens, tgt_lens)

    def log_weights(self, tokens, lens, turns, k: int):
        """Importance weights per dialogue (B, K): log p(z_conv)/q(z_conv) + sum_t [log p(w_t | .)
        + log p(z_t | .)/q(z_t | .)] with z_conv and the z_t drawn from q: a bound on
        log p(w_2..N | w_1) like VHRED's sum of per-utterance bounds."""
        weights, n_tokens = [], 0
        for _ in range(k):
            enc, ctx, tgt_tokens, tgt_lens, (z_conv, mean_c, logvar_c), tgt_dlg = \
                self.encode_all(tokens, lens, turns, sample=True)
            mean_p, logvar_p = self.prior(ctx)
            mean_q, logvar_q = self.posterior(ctx, enc)
            z = reparameterize(mean_q, logvar_q)
            nll = self.reconstruction_nll(tgt_tokens, tgt_lens, self.condition(ctx, z))
            per_target = log_weight(nll, z, (mean_p, logvar_p), (mean_q, logvar_q))
            zeros = torch.zeros_like(mean_c)
            w = gaussian_log_density(z_conv, zeros, zeros) - gaussian_log_density(z_conv, mean_c, logvar_c)
            weights.append(w.index_add(0, to_device(tgt_dlg, w.device), per_target))   # (B,)
            n_tokens = int(tgt_lens.sum())
        return torch.stack(weights, dim=1), n_tokens                                   # (B, K)
