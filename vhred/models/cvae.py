"""CVAE (Zhao et al. 2017, "Learning Discourse-level Diversity for Neural Dialog Models using
Conditional Variational Autoencoders"), with their bag-of-words loss (CVAE+BOW).

The hierarchical context encoder gives c = h_{n-1}; one z per response x = w_n:

    prior        p(z | c)    = N(mu_p, sigma_p^2), (mu_p, log sigma_p^2) = Linear(tanh(Linear(c)))
    recognition  q(z | c, x) = N(mu_q, sigma_q^2), (mu_q, log sigma_q^2) = Linear([c; enc(x)])
    decoder      p(x | c, z), started from [c; z] and reading it at every step (theirs only starts from it)
    BOW          p_bow(x | c, z) = prod_t softmax(MLP([c; z]))_{x_t}, weight bow_weight (1 by default)
    loss         -E_q[log p(x | c, z)] + beta KL(q || p) - E_q[log p_bow(x | c, z)]

Every utterance of a window with a turn before it is a response with its own context, as each
(context, response) pair is one example in their code. What sets CVAE apart from VHRED here is
the networks (a one-layer recognition network, a one-hidden-layer prior of width
max(2Z, 100) as in their code) and the bag-of-words loss, which is on by default.
"""
import torch.nn as nn

from .layers import Hierarchical
from .vhred import VHRED


class LinearGaussian(nn.Module):
    """mean and log-variance of a diagonal Gaussian, each a linear map of x after an optional tanh layer."""

    def __init__(self, in_dim: int, z_dim: int, hidden: int = 0):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh()) if hidden else nn.Identity()
        self.mean = nn.Linear(hidden or in_dim, z_dim)
        self.logvar = nn.Linear(hidden or in_dim, z_dim)

    def forward(self, x):
        h = self.body(x)
        return self.mean(h).float(), self.logvar(h).float()


class CVAE(VHRED):
    DEFAULTS = {"bow_weight": 1.0}   # their CVAE+BOW: the loss is on unless bow_weight=0 is given

    def __init__(self, cfg, vocab_size: int):
        Hierarchical.__init__(self, cfg, vocab_size)
        self.z_dim = Z = cfg.z_dim
        self.add_latent_heads(LinearGaussian(cfg.ctx_hidden, Z, hidden=max(2 * Z, 100)),
                              LinearGaussian(cfg.ctx_hidden + 2 * cfg.utt_hidden, Z), cond=cfg.ctx_hidden + Z)
        self.build_decoder(cfg.ctx_hidden + Z)   # the decoder starts from [c, z]
        self.init_weights()
