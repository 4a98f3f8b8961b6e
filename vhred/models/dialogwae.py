"""DialogWAE (Gu et al. 2019, "DialogWAE: Multimodal Response Generation with Conditional
Wasserstein Auto-Encoder"), and its Gaussian-mixture prior DialogWAE-GMP (gmp_components > 1).

The latent z of a response x with context c = h_{n-1} is made by generators from Gaussian noise:

    posterior  e ~ N(mu_q, sigma_q^2) = GaussianNet([c; enc(x)]),  z_q = G_q(e)
    prior      e ~ N(mu_p, sigma_p^2) = GaussianNet(c),            z_p = G_p(e)
    GMP prior  K components (mu_k, sigma_k) and weights pi = softmax(MLP(c)); e from component k
               (every log sigma^2 held softly below NOISE_LOGVAR_MAX = 0: see bounded())
    decoder    p(x | c, z), started from [c; z] and reading it at every step (their decoder only
               starts from it: docs/models.md)
    critic     D([z; c]), a Wasserstein critic with gradient penalty (Gulrajani et al. 2017):
               L_D = E D(z_q) - E D(z_p) + lambda (||grad D(z_hat)|| - 1)^2 (each sample's own
               gradient; their code's is divided by the batch size),
               z_hat = a z_p + (1 - a) z_q, a ~ U(0, 1), lambda = 10 (their lambda_gp)
    generators L_G = E D(z_p) - E D(z_q)    (the two distributions are pulled together)
    autoencoder L_AE = -log p(x | c, z_q)

Their code updates the autoencoder, then the generators, then the critic, each with its own
optimiser. Here the three updates share the trainer's one step: each loss reaches only its own
weights (the critic's weights are held fixed in L_G, the critic reads detached codes in L_D,
and the generators read a detached context as in their train_G), so the step is a simultaneous
update of the three players, each at its own learning rate (param_groups), and the step ends
with critic_steps - 1 updates of the critic alone on the same batch (extra_steps; 5 in all by
default, their n_iters_d). That keeps training, resuming and torchrun the same as for every family.
The critic has no BatchNorm (theirs has): a gradient penalty is defined per sample, which batch
statistics break (Gulrajani et al. advise against BatchNorm in the critic); the generators keep
theirs (decoding runs in eval mode, so each reply still depends only on its own noise).

No likelihood bound with a posterior exists (q(z | c, x) is implicit), so the test bound and
ranking use the prior as the proposal: log p(x | c) >= E log 1/K sum_k p(x | c, z_k), z_k ~ p(z | c)
(Jensen's inequality; looser than a posterior bound). Validation reports its K = 1 value.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from ..errors import InputError
from .layers import GaussianNet, Hierarchical, reparameterize

GP_WEIGHT = 10.0          # lambda_gp of their config
POSTERIOR_SAMPLES = 8     # draws of e that estimate E_q[z] for active units
# Measured on the CPU config (300 steps, the codes' spread and the NLL from z_q, shuffled z_q and
# prior z on 409 validation responses, docs/models.md): with the posterior's noise started at
# std 1 the decoder learned to ignore z within 100 steps and the posterior never carried the
# response again (the collapse of the first compare table); started at std 0.14 it is read from
# the start. With every player at one rate the prior's generator collapsed to a point and back
# (code spread 0.14, 0.33, 0.006 at steps 250-300); the prior at a tenth of the rate and the
# critic at half (the two time-scale rule of Heusel et al. 2017, in place of their 5 critic steps
# per generator step) kept it steady (0.55) with prior codes as informative as posterior ones.
POSTERIOR_LOGVAR_INIT = -4.0
PRIOR_LR_SCALE = 0.1
CRITIC_LR_SCALE = 0.5
# The noise's log-variance is held below this (softly). Nothing else holds it: the generators'
# BatchNorm divides out whatever scale e has, and the critic is as happy with two codes of pure
# noise as with two informative ones. At the reference config's sizes (z 200, GRUs 300) the
# posterior's noise std drifted to 2e7 against a spread of 2.9 in its means, so z_q said nothing
# about the response and the decoder learned to ignore it (docs/models.md, "At DialogWAE's own
# sizes"). With std <= 1 the means' spread decides the code.
NOISE_LOGVAR_MAX = 0.0
# The weight of the critic's pull on the posterior, against its reconstruction gradient (both
# reach the posterior in one AdamW step, so only their ratio matters; their code pulls it with
# RMSprop at 5e-5 after an SGD step at 1.0 for the reconstruction). At the CPU config full weight
# works (the decoder reads z). At the reference config's sizes neither weight tried does
# (docs/models.md, "At DialogWAE's own sizes"): at 1.0 the codes carried nothing the decoder used
# by step 200 (NLL/token from a response's own z_q 5.93, from another's 5.94) and a context's ten
# replies were one by epoch 4; at 0.2 the decoder reads z (3.67 against 7.43 at epoch 4) but the
# prior's generator shrinks to a point (code spread 0.39, 0.10, 0.09 at epochs 2-4).
POSTERIOR_PULL = 1.0


def bounded(logvar: torch.Tensor) -> torch.Tensor:
    """logvar kept below NOISE_LOGVAR_MAX: near the identity well below it, and a gradient everywhere."""
    return NOISE_LOGVAR_MAX - F.softplus(NOISE_LOGVAR_MAX - logvar)


class BatchNorm(nn.BatchNorm1d):
    """BatchNorm1d that also trains on a batch of one row (batch_size=1, or an epoch's last batch
    holding one target), which has no batch variance: that row is normalised by the running
    statistics, as in evaluation, and they are left as they were. The same parameters and state."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.size(0) == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                training=False, eps=self.eps)
        return super().forward(x)


def generator(z_dim: int) -> nn.Module:
    """Noise to code: three linear layers, BatchNorm and ReLU between (their generators). Without
    the BatchNorm the ReLUs died in tiny runs and every response got the same code."""
    return nn.Sequential(nn.Linear(z_dim, z_dim), BatchNorm(z_dim), nn.ReLU(),
                         nn.Linear(z_dim, z_dim), BatchNorm(z_dim), nn.ReLU(), nn.Linear(z_dim, z_dim))


def gradient_penalty(critic, z_prior, z_post, ctx, alpha):
    """(||d D([z_hat; c]) / d z_hat||_2 - 1)^2 averaged over rows, z_hat = alpha z_prior + (1 - alpha) z_post.
    z_prior, z_post (T, Z), ctx (T, C), alpha (T, 1); the result keeps the graph (the critic learns from it)."""
    z_hat = (alpha * z_prior + (1 - alpha) * z_post).detach().requires_grad_(True)
    score = critic(torch.cat([z_hat, ctx], dim=-1))
    grad, = torch.autograd.grad(score.sum(), z_hat, create_graph=True)
    return ((grad.norm(2, dim=1) - 1) ** 2).mean()


class MixturePrior(nn.Module):
    """K Gaussian components over the noise e, and their weights, from the context."""

    def __init__(self, in_dim: int, hidden: int, z_dim: int, k: int):
        super().__init__()
        self.k, self.z_dim = k, z_dim
        self.components = GaussianNet(in_dim, hidden, z_dim * k)
        self.weights = nn.Linear(in_dim, k)

    def forward(self, ctx):
        """means, logvars (T, K, Z) and log pi (T, K)."""
        mean, logvar = self.components(ctx)
        shape = (len(ctx), self.k, self.z_dim)
        return mean.view(shape), bounded(logvar).view(shape), F.log_softmax(self.weights(ctx).float(), dim=-1)


class DialogWAE(Hierarchical):
    # Five critic updates per training step, as their code (n_iters_d). With one, at the
    # reference config's sizes the decoder stopped reading z (NLL/token from a response's own code
    # 4.94, from another's 5.10, step 400; with five 4.02 against 5.49 at step 800), and at the GPU
    # config a context's ten replies were one (inter-dist-2 0.09; with five 0.50): docs/models.md.
    DEFAULTS = {"critic_steps": 5}
    OWN_SETTINGS = ("gmp_components", "critic_steps")
    latent = True

    def __init__(self, cfg, vocab_size: int):
        super().__init__(cfg, vocab_size)
        self.z_dim = Z = cfg.z_dim
        Hc, Hu, H = cfg.ctx_hidden, cfg.utt_hidden, cfg.latent_hidden
        self.k = cfg.gmp_components
        self.prior_net = MixturePrior(Hc, H, Z, self.k) if self.k > 1 else GaussianNet(Hc, H, Z)
        self.posterior_net = GaussianNet(Hc + 2 * Hu, H, Z)
        self.prior_generator, self.posterior_generator = generator(Z), generator(Z)
        self.critic = nn.Sequential(nn.Linear(Z + Hc, 2 * H), nn.LeakyReLU(0.2), nn.Linear(2 * H, 2 * H),
                                    nn.LeakyReLU(0.2), nn.Linear(2 * H, 1))
        self.build_decoder(Hc + Z)
        self.init_weights()
        with torch.no_grad():   # see POSTERIOR_LOGVAR_INIT
            self.posterior_net.logvar.bias.fill_(POSTERIOR_LOGVAR_INIT)

    @property
    def noise_dim(self) -> int:
        return self.z_dim + (1 if self.k > 1 else 0)   # GMP: one more normal picks the component

    # --- codes ---

    def prior_noise(self, ctx, eps=None):
        """e ~ p(e | c): from the rows' normals eps (T, noise_dim), or fresh ones. GMP picks a
        component by the inverse CDF of pi at Phi(eps_last), so a reply is the same alone or in a
        batch. Training picks one by a hard Gumbel-softmax (temperature 0.1), as their MixVariation
        does: each row is one component's sample, and pi learns through the straight-through
        gradient of the soft weights; a soft mix would train the prior on blends between
        components that decoding never draws. Out of training fresh normals take the inverse-CDF
        choice too, so the bounds score the prior that decodes."""
        if self.k == 1:
            mean, logvar = self.prior_net(ctx)
            logvar = bounded(logvar)
            return reparameterize(mean, logvar) if eps is None else mean + torch.exp(0.5 * logvar) * eps
        mean, logvar, log_pi = self.prior_net(ctx)                          # (T, K, Z), (T, K, Z), (T, K)
        if eps is None and not self.training:   # bounds and validation draw as decoding does: one component
            eps = torch.randn(len(ctx), self.noise_dim, device=ctx.device, dtype=mean.dtype)
        if eps is None:
            pick = F.gumbel_softmax(log_pi, tau=0.1, hard=True).unsqueeze(-1)             # (T, K, 1) one-hot
            return (pick * reparameterize(mean, logvar)).sum(1)
        u = 0.5 * (1 + torch.erf(eps[:, -1:] / math.sqrt(2)))                            # (T, 1) uniform
        k = torch.searchsorted(log_pi.exp().cumsum(-1).contiguous(), u.contiguous()).clamp(max=self.k - 1)
        rows = torch.arange(len(ctx), device=ctx.device)
        k = k.squeeze(1)
        return mean[rows, k] + torch.exp(0.5 * logvar[rows, k]) * eps[:, :-1]

    def sample_prior(self, ctx, eps):
        """z = G_p(e), e ~ p(e | c) from the rows' normals eps (T, noise_dim)."""
        return self.prior_generator(self.prior_noise(ctx, eps)).float()

    def posterior_code(self, ctx, enc):
        """z_q = G_q(e), e ~ q(e | c, x): (T, Z)."""
        mean, logvar = self.posterior_net(torch.cat([ctx, enc], dim=-1))
        return self.posterior_generator(reparameterize(mean, bounded(logvar))).float()

    def posterior_mean(self, ctx, enc, samples: int = POSTERIOR_SAMPLES):
        """E_q[z | c, x] estimated over `samples` draws of e: the analogue of a Gaussian posterior's
        mean, for counting active units (G_q of e's mean is not: G_q is not linear)."""
        rep = lambda x: x.repeat(samples, 1)
        return self.posterior_code(rep(ctx), rep(enc)).view(samples, len(ctx), -1).mean(0)

    def prior(self, ctx):
        raise InputError("DialogWAE's prior is implicit (noise through a generator): it has no mean and "
                         "spread to show; sample replies instead")

    # --- the contract ---

    def param_groups(self):
        """Three players at two time-scales (see PRIOR_LR_SCALE): the autoencoder with the posterior
        at the schedule's rate, the prior's net and generator at a tenth, the critic at half."""
        critic = list(self.critic.parameters())
        prior = list(self.prior_net.parameters()) + list(self.prior_generator.parameters())
        theirs = {id(p) for p in critic + prior}
        return [{"params": [p for p in self.parameters() if id(p) not in theirs]},
                {"params": prior, "lr_scale": PRIOR_LR_SCALE},
                {"params": critic, "lr_scale": CRITIC_LR_SCALE}]

    def forward(self, tokens, lens, turns):
        """Training: nll of the responses decoded from z_q, and "extra", the generators' and the
        critic's losses (scaled per token like the nll). Evaluation: nll decoded from one z of the
        prior (one sample of the bound). post_mean: E_q[z] (posterior_mean), for counting active units."""
        enc, ctx, tgt_tokens, tgt_lens = self.targets(tokens, lens, turns)
        n_tokens = int(tgt_lens.sum())
        if not self.training:
            z = self.sample_prior(ctx, None)
            return {"nll": self.reconstruction_nll(tgt_tokens, tgt_lens, self.condition(ctx, z)),
                    "n_tokens": n_tokens, "post_mean": self.posterior_mean(ctx, enc)}
        z_q = self.posterior_code(ctx, enc)                                 # (T, Z) through everything
        out = {"nll": self.reconstruction_nll(tgt_tokens, tgt_lens, self.condition(ctx, z_q)),
               "n_tokens": n_tokens, "post_mean": z_q.detach()}
        c, x = ctx.detach(), enc.detach()
        z_post, z_prior = self.posterior_code(c, x), self.sample_prior(c, None)   # the generators' codes
        frozen = {name: p.detach() for name, p in self.critic.named_parameters()}
        critic_fixed = lambda v: functional_call(self.critic, frozen, (v,))
        loss_g = (critic_fixed(torch.cat([z_prior, c], -1)).mean()
                  - POSTERIOR_PULL * critic_fixed(torch.cat([z_post, c], -1)).mean())
        w, loss_d = self.critic_loss(z_post.detach(), z_prior.detach(), c)
        out["extra"] = (loss_g + loss_d) * n_tokens
        out["wasserstein"] = -w.detach()                                    # the critic's distance estimate
        out["critic_inputs"] = (c, x)                                       # for extra_steps
        return out

    def critic_loss(self, z_post, z_prior, ctx):
        """The critic's estimate E D(z_q) - E D(z_p) (minus the distance) and its loss with the
        gradient penalty; the codes come detached (only the critic learns from this)."""
        w = self.critic(torch.cat([z_post, ctx], -1)).mean() - self.critic(torch.cat([z_prior, ctx], -1)).mean()
        gp = gradient_penalty(self.critic, z_prior, z_post, ctx, torch.rand(len(ctx), 1, device=ctx.device))
        return w, w + GP_WEIGHT * gp

    def extra_steps(self, out):
        """critic_steps - 1 more critic updates on the training step's batch (the config's
        critic_steps counts the one inside the step too; their n_iters_d), each on new noise, so
        the critic nears its optimum before the generators move again."""
        c, x = out["critic_inputs"]
        for _ in range(self.cfg.critic_steps - 1):
            with torch.no_grad():
                z_post, z_prior = self.posterior_code(c, x), self.sample_prior(c, None)
            yield self.critic_loss(z_post, z_prior, c)[1]

    def log_weights(self, tokens, lens, turns, k: int):
        """(T, K) log p(w_n | c, z_k), z_k ~ p(z | c): the prior-proposal bound."""
        enc, ctx, tgt_tokens, tgt_lens = self.targets(tokens, lens, turns)
        weights = [-self.reconstruction_nll(tgt_tokens, tgt_lens, self.condition(ctx, self.sample_prior(ctx, None)))
                   for _ in range(k)]
        return torch.stack(weights, dim=1), int(tgt_lens.sum())

    def response_log_weights(self, ctx, tokens, lens, eps):
        """(P, K) log p(r | c, z_k) for z_k ~ p(z | c) from the rows' normals eps (P*K, noise_dim)."""
        P, k = len(ctx), len(eps) // len(ctx)
        rep = lambda x: x.repeat_interleave(k, dim=0)
        z = self.sample_prior(rep(ctx), eps)
        return -self.reconstruction_nll(rep(tokens), rep(lens), self.condition(rep(ctx), z)).view(P, k)
