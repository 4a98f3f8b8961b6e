"""VHRED (Serban et al., 2017): a latent z_n per utterance.

    prior      p(z_n | w_<n)      = N(mu_p, sigma_p^2),  (mu_p, log sigma_p^2) = MLP(h_{n-1})
    posterior  q(z_n | w_<=n)     = N(mu_q, sigma_q^2),  (mu_q, log sigma_q^2) = MLP(h_{n-1}, enc(w_n))
    ELBO       sum_n E_q[log p(w_n | z_n, w_<n)] - KL(q(z_n | w_<=n) || p(z_n | w_<n))   (paper eq. 6)

Training samples z_n from the posterior with the reparameterisation trick; generation samples
it from the prior, so one context gives several different responses.
"""
import torch

from .layers import GaussianNet, Hierarchical, bow_head, gaussian_kl, log_weight, reparameterize


class VHRED(Hierarchical):
    latent = True
    kl = True
    attends = True
    OWN_SETTINGS = ("bow_weight",)   # the bag-of-words head on z, which CVAE and VHCR keep

    def __init__(self, cfg, vocab_size: int):
        super().__init__(cfg, vocab_size)
        self.z_dim = Z = cfg.z_dim
        self.add_latent_heads(GaussianNet(cfg.ctx_hidden, cfg.latent_hidden, Z),
                              GaussianNet(cfg.ctx_hidden + 2 * cfg.utt_hidden, cfg.latent_hidden, Z), cond=cfg.ctx_hidden + Z)
        self.build_decoder(cfg.ctx_hidden + Z)   # the decoder is conditioned on [h_{n-1}, z_n]
        self.init_weights()

    def add_latent_heads(self, prior_net, posterior_net, cond: int):
        """The prior and posterior networks, and the bag-of-words head (reading the decoder's
        cond-sized condition) when its loss is on."""
        self.prior_net, self.posterior_net = prior_net, posterior_net
        if self.cfg.bow_weight > 0:   # words of the response from [h, z] alone
            self.bow = bow_head(cond, self.cfg.latent_hidden, self.vocab_size)

    def prior(self, ctx):
        """p(z_n | w_<n): mean, logvar (T, Z) from the context state h_{n-1}."""
        return self.prior_net(self.summary(ctx))

    def posterior(self, ctx, enc):
        """q(z_n | w_<=n): mean, logvar (T, Z) from h_{n-1} and the encoding of the response w_n."""
        return self.posterior_net(torch.cat([self.summary(ctx), enc], dim=-1))

    def sample_prior(self, ctx, eps):
        """z ~ p(z | context) from standard normals eps (T, Z)."""
        mean, logvar = self.prior(ctx)
        return mean + torch.exp(0.5 * logvar) * eps

    def forward(self, tokens, lens, turns):
        """Terms of the negative ELBO for a batch of dialogues (see dataset.Batch).

        tokens (U, L), lens (U,), turns (B,). Targets are the T = U - B utterances that have
        at least one turn before them. Returns sums over the batch, kept apart for logging:
          nll (T,)        -log p(w_n | z_n, w_<n) per target utterance (nats)
          kl (T, Z)       KL(q || p) per target and latent dimension
          bow (scalar)    bag-of-words NLL of the targets' words given [h, z] (when enabled)
          post_mean (T, Z) posterior means, for counting active units
          n_tokens        predicted tokens (words plus <eos>)
        """
        enc, ctx, tgt_tokens, tgt_lens = self.targets(tokens, lens, turns)
        return self.latent_terms(enc, ctx, tgt_tokens, tgt_lens)

    def latent_terms(self, enc, ctx, tgt_tokens, tgt_lens):
        """The loss terms of targets given their encodings and contexts (T rows)."""
        mean_p, logvar_p = self.prior(ctx)
        mean_q, logvar_q = self.posterior(ctx, enc)
        z = reparameterize(mean_q, logvar_q)                                # (T, Z)
        cond = self.condition(ctx, z)                                       # (T, Hc + Z)
        out = {"kl": gaussian_kl(mean_q, logvar_q, mean_p, logvar_p), "post_mean": mean_q,
               "nll": self.reconstruction_nll(tgt_tokens, tgt_lens, cond), "n_tokens": int(tgt_lens.sum())}
        if hasattr(self, "bow"):
            out["bow"] = self.bow_nll(cond, tgt_tokens[:, 1:])
        return out

    def log_weights(self, tokens, lens, turns, k: int):
        """Importance weights for log p(w_n | w_<n) >= log 1/K sum_k p(w_n | z_k) p(z_k) / q(z_k)
        (Burda et al. 2016): (T, K) log weights with z_k ~ q, and the predicted token count.
        Tighter than the ELBO as K grows; equal to it in expectation at K = 1."""
        enc, ctx, tgt_tokens, tgt_lens = self.targets(tokens, lens, turns)
        mean_p, logvar_p = self.prior(ctx)
        mean_q, logvar_q = self.posterior(ctx, enc)
        weights = []
        for _ in range(k):
            z = reparameterize(mean_q, logvar_q)                            # (T, Z)
            nll = self.reconstruction_nll(tgt_tokens, tgt_lens, self.condition(ctx, z))
            weights.append(log_weight(nll, z, (mean_p, logvar_p), (mean_q, logvar_q)))
        return torch.stack(weights, dim=1), int(tgt_lens.sum())            # (T, K)

    def response_log_weights(self, ctx, tokens, lens, eps):
        """Log weights of the same bound for P (context, response) pairs with K rows of normals
        each: ctx (P, Hc), tokens (P, L), eps (P*K, Z) -> (P, K), z_k ~ q(z | context, r)."""
        enc = self.encode_utterances(tokens[:, 1:], lens)                   # (P, 2*Hu)
        mean_p, logvar_p = self.prior(ctx)                                  # (P, Z) each
        mean_q, logvar_q = self.posterior(ctx, enc)
        P, k = len(ctx), len(eps) // len(ctx)
        rep = lambda x: x.repeat_interleave(k, dim=0)                       # (P, ...) -> (P*K, ...)
        z = rep(mean_q) + torch.exp(0.5 * rep(logvar_q)) * eps              # (P*K, Z) z ~ q
        nll = self.reconstruction_nll(rep(tokens), rep(lens), self.condition(rep(ctx), z))
        w = log_weight(nll, z, (rep(mean_p), rep(logvar_p)), (rep(mean_q), rep(logvar_q)))   # (P*K,)
        return w.view(P, k)
