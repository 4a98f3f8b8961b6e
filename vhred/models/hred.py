"""HRED (Serban et al. 2016): the hierarchical encoder-decoder without a latent variable;
utterance n is decoded from the context state h_{n-1} alone.

Its likelihood is exact: log p(w_n | w_<n) is the decoder's, so its "bound" is the likelihood.
"""
from .layers import Hierarchical


class HRED(Hierarchical):
    attends = True

    def __init__(self, cfg, vocab_size: int):
        super().__init__(cfg, vocab_size)
        self.build_decoder(cfg.ctx_hidden)
        self.init_weights()

    def forward(self, tokens, lens, turns):
        """nll (T,) -log p(w_n | w_<n) per target utterance, n_tokens (see VHRED.forward)."""
        enc, ctx, tgt_tokens, tgt_lens = self.targets(tokens, lens, turns)
        return {"nll": self.reconstruction_nll(tgt_tokens, tgt_lens, ctx), "n_tokens": int(tgt_lens.sum())}

    def log_weights(self, tokens, lens, turns, k: int):
        """No latent: every weight is the exact log-likelihood (T, K)."""
        enc, ctx, tgt_tokens, tgt_lens = self.targets(tokens, lens, turns)
        nll = self.reconstruction_nll(tgt_tokens, tgt_lens, ctx)
        return -nll.unsqueeze(1).expand(-1, k), int(tgt_lens.sum())

    def sample_prior(self, ctx, eps):
        return None

    def response_log_weights(self, ctx, tokens, lens, eps):
        """log p(r | context), exact: (P, 1) whatever the number of noise rows."""
        return -self.reconstruction_nll(tokens, lens, ctx).unsqueeze(1)
