"""Does DialogWAE's decoder read z, and does its prior follow? (docs/models.md, "DialogWAE")

    python -m eval.dialogwae_codes --steps 300 [--noise-logvar -4] [--prior-rate 0.1] [--critic-rate 0.5] [key=value ...]
    python -m eval.dialogwae_codes --checkpoint RUN      # the same measures of a trained DialogWAE, once

Trains DialogWAE on the CPU config (or --config) for --steps steps in a fresh run folder, and
every --every steps prints, for the first 64 validation windows:

  post spread   the posterior codes' std across responses, and across two draws of its noise
                (equal: the code says nothing about the response)
  prior spread  the prior codes' std across contexts and draws (near 0: the generator collapsed)
  NLL/token     of the responses decoded from their own z_q, from another response's z_q
                (shuffled), and from a prior z: own < shuffled means the decoder reads z;
                prior near own means the prior finds the posterior's codes
  noise e       the noise before the generators: its std against the spread of its means
                (std far above the spread: every code is noise)
  mixture       DialogWAE-GMP: the entropy of the component weights (ln K: all equal), the
                components' mean std, and the mean distance between component means (near 0
                with std near 1: the mixture has not left its starting point)

--noise-logvar, --prior-rate, --critic-rate and --posterior-pull replace the family's constants
(POSTERIOR_LOGVAR_INIT, PRIOR_LR_SCALE, CRITIC_LR_SCALE, POSTERIOR_PULL) for this run (critic_steps=N,
like any setting, is a key=value), to repeat the variants
docs/models.md reports (0 / 1 / 1: everything at one rate, the noise at std 1).
"""
import math
import time

import torch

from vhred.cli import command, Parser
from vhred import config, loading
from vhred.dataset import DialogueData, prepare
from vhred.errors import InputError
from vhred.models import dialogwae
from vhred.models.dialogwae import bounded
from vhred.train import Run


def parse_args(argv=None):
    p = Parser(prog="python -m eval.dialogwae_codes", description=__doc__.split("\n\n")[1])
    p.add_argument("--config", default="configs/dailydialog-cpu.yaml")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--every", type=int, default=25)
    p.add_argument("--noise-logvar", type=float, default=dialogwae.POSTERIOR_LOGVAR_INIT)
    p.add_argument("--prior-rate", type=float, default=dialogwae.PRIOR_LR_SCALE)
    p.add_argument("--critic-rate", type=float, default=dialogwae.CRITIC_LR_SCALE)
    p.add_argument("--posterior-pull", type=float, default=dialogwae.POSTERIOR_PULL)
    p.add_argument("--out-dir", default="runs/dialogwae-codes")
    p.add_argument("--checkpoint", default="", help="measure this trained DialogWAE (a run folder or .pt) instead of training one")
    p.add_argument("overrides", nargs="*", help="key=value settings (e.g. data_dir=...)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.every < 1:
        raise InputError("--steps and --every must be at least 1")
    return args


def nll_per_token(model, ctx, tokens, lens, z) -> float:
    return (model.reconstruction_nll(tokens, lens, model.condition(ctx, z)).sum() / lens.sum()).item()


@torch.no_grad()
def measure(model, batch) -> str:
    model.eval()
    enc, ctx, tokens, lens = model.targets(batch.tokens, batch.lens, batch.turns)
    z_q, z_q2 = model.posterior_code(ctx, enc), model.posterior_code(ctx, enc)
    z_p = model.sample_prior(ctx, None)
    other = z_q[torch.randperm(len(z_q), generator=torch.Generator().manual_seed(0))]
    model.train()
    noise = (z_q - z_q2).std(0).mean() / 2 ** 0.5   # one draw's std, from the difference of two
    return (f"post spread {z_q.std(0).mean():.3f} (noise {noise:.3f}) | prior spread {z_p.std(0).mean():.3f} | "
            f"NLL/token own z_q {nll_per_token(model, ctx, tokens, lens, z_q):.3f}, "
            f"shuffled {nll_per_token(model, ctx, tokens, lens, other):.3f}, "
            f"prior z {nll_per_token(model, ctx, tokens, lens, z_p):.3f}{noise_scale(model, ctx, enc)}{mixture(model, ctx)}")


@torch.no_grad()
def noise_scale(model, ctx, enc) -> str:
    """The noise e that enters the generators: its std (after the bound) against the spread of
    its means across responses. Std far above the spread: the codes are noise (the runaway of
    docs/models.md); GMP's prior is read by mixture() instead."""
    mean, logvar = model.posterior_net(torch.cat([ctx, enc], dim=-1))
    out = f" | noise e: posterior std {torch.exp(0.5 * bounded(logvar)).mean():.3g}, means' spread {mean.std(0).mean():.3g}"
    if model.k == 1:
        mean, logvar = model.prior_net(ctx)
        out += f"; prior std {torch.exp(0.5 * bounded(logvar)).mean():.3g}, means' spread {mean.std(0).mean():.3g}"
    return out


@torch.no_grad()
def mixture(model, ctx) -> str:
    """GMP's prior components at these contexts ("" for one component)."""
    if model.k == 1:
        return ""
    mean, logvar, log_pi = model.prior_net(ctx)                             # (T, K, Z), (T, K, Z), (T, K)
    entropy = -(log_pi.exp() * log_pi).sum(-1).mean()
    gaps = [(mean[:, i] - mean[:, j]).norm(dim=-1).mean() for i in range(model.k) for j in range(i)]
    return (f" | mixture entropy {entropy:.3f} (ln K {math.log(model.k):.3f}), component std "
            f"{torch.exp(0.5 * logvar).mean():.3f}, distance between means {sum(gaps) / len(gaps):.3f}")


def measure_checkpoint(path: str):
    """The measures of a trained DialogWAE on the first 64 validation windows of its data."""
    model, cfg, _ = loading.load_model(path)
    if cfg.arch.model != "dialogwae":
        raise InputError(f"{path} is a {cfg.arch.model} model; this diagnostic reads DialogWAE")
    batch = DialogueData(prepare(cfg, log=lambda *_: None), "validation").batch(list(range(64)))
    print(f"{path}: {measure(model, batch)}")


@command
def main(argv=None):
    args = parse_args(argv)
    if args.checkpoint:
        return measure_checkpoint(args.checkpoint)
    dialogwae.POSTERIOR_LOGVAR_INIT = args.noise_logvar
    dialogwae.PRIOR_LR_SCALE, dialogwae.CRITIC_LR_SCALE = args.prior_rate, args.critic_rate
    dialogwae.POSTERIOR_PULL = args.posterior_pull
    name = (f"codes-{args.noise_logvar:g}-{args.prior_rate:g}-{args.critic_rate:g}-{args.posterior_pull:g}"
            f"-{int(time.time())}")
    cfg = config.load(args.config, ["model=dialogwae", f"out_dir={args.out_dir}", f"name={name}",
                                    f"max_steps={args.steps}", "save_every=1000000", *args.overrides])
    run = Run(cfg, log=lambda *_: None)
    batch = run.val_data.batch(list(range(64)))
    t0, epoch = time.time(), 0
    try:
        while run.progress.step < args.steps:
            for indices in run.train_data.batches(cfg.batch_size, cfg.seed, epoch):
                run.train_step(indices)
                if run.progress.step % args.every == 0:
                    print(f"step {run.progress.step} ({time.time() - t0:.0f} s): {measure(run.model, batch)}", flush=True)
                if run.progress.step >= args.steps:
                    break
            epoch += 1
    finally:
        run.close()


if __name__ == "__main__":
    main()
