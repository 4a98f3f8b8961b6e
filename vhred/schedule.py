"""Schedules as pure functions of the optimiser step."""
import math

from .config import Config


def kl_weight(step: int, cfg: Config) -> float:
    """beta(step) for the KL term.

    linear:   0 -> kl_max over kl_warmup_steps, then kl_max (VHRED anneals linearly).
    cyclical: repeated cycles of kl_cycle_steps; beta rises over the first kl_warmup_steps of
              each and stays at kl_max for the rest (Fu et al. 2019, "Cyclical Annealing").
    constant: kl_max throughout.
    """
    if cfg.kl_schedule == "constant" or cfg.kl_warmup_steps == 0:
        return cfg.kl_max
    if cfg.kl_schedule == "cyclical":
        step = step % kl_cycle(cfg.kl_cycle_steps, cfg.kl_warmup_steps)
    return cfg.kl_max * min(1.0, step / cfg.kl_warmup_steps)


def kl_cycle(kl_cycle_steps: int, kl_warmup_steps: int) -> int:
    """Steps in one cyclical KL cycle: kl_cycle_steps, or by default twice the warm-up."""
    return kl_cycle_steps or 2 * kl_warmup_steps


def validation_due(step: int, cfg: Config, has_kl: bool = True) -> bool:
    """Whether to validate after `step` steps, besides each epoch's end: every eval_every steps,
    and for a model with a KL term under a cyclical schedule at each cycle's end, where beta has
    held kl_max for the cycle's last steps. A few steps into a cycle, at a small beta, the KL
    jumps and the ELBO with it: the CPU config's VHRED had 4.1 nats per utterance at one cycle's
    end and 22.5 at 21 steps into the next (docs/configs.md, early stopping). Epoch ends
    can fall there every time; cycle ends give best.pt and early stopping a figure at full weight."""
    if cfg.eval_every and step % cfg.eval_every == 0:
        return True
    cycling = has_kl and cfg.kl_schedule == "cyclical" and cfg.kl_warmup_steps > 0
    return cycling and step % kl_cycle(cfg.kl_cycle_steps, cfg.kl_warmup_steps) == 0


def learning_rate(step: int, cfg: Config) -> float:
    """Linear warm-up to lr; then constant, or with lr_decay_steps a half cosine from lr down to
    lr / 10 over that many steps and lr / 10 after (SGDR's curve without restarts, Loshchilov and
    Hutter 2017): late steps move the weights less. On the CPU config it did not beat the constant
    rate (docs/configs.md)."""
    if step < cfg.lr_warmup_steps:
        return cfg.lr * (step + 1) / cfg.lr_warmup_steps
    if cfg.lr_decay_steps == 0:
        return cfg.lr
    done = min(1.0, (step - cfg.lr_warmup_steps) / cfg.lr_decay_steps)
    floor = cfg.lr / 10
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * done))
