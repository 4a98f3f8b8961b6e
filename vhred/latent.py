"""What the latent variable does: decode from a given z, walk between two z's, and look at where
real responses put their posterior means.

    python -m vhred.latent interpolate --checkpoint runs/x --context "Where is the bank ?" --steps 7
    python -m vhred.latent plot --checkpoint runs/x [--color act|length|question] [--out latent.png]

`interpolate` takes two candidates of the prior for one context (or the prior mean +- k sigma
along a random direction, --around-mean K) and decodes evenly spaced points between them as the
chat decodes each z (beam search, width 5), linearly or spherically (slerp of the ends' offsets
from the prior mean in units of its spread, which keeps the points as far out as the prior's
samples are). `plot` projects the posterior means of validation responses to 2-D (PCA) coloured by a
property of the response, beside the KL of each latent dimension (the active ones stand out).
"""
import math
import os

import torch

from . import checkpoint, limits, loading
from .cli import command, Parser, program
from .dataset import collate, windows
from .device import pick_device
from .errors import InputError
from .files import check_output, write_bytes
from .decoding import beam_search, context_states, DecodeOptions, sample_tokens
from .loading import chosen_checkpoint
from .render import encode_turns, response_text
from .sources import spaced
from .plot import picture

ACTS = {1: "inform", 2: "question", 3: "directive", 4: "commissive"}   # DailyDialog's act labels


# --- decoding from a chosen z ----------------------------------------------------------------

@torch.inference_mode()
def prior(model, contexts: list[list[list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """p(z | context) for each context: mean, logvar (C, Z)."""
    _require_latent(model)
    return model.prior(context_states(model, contexts))


@torch.inference_mode()
def prior_spread(model, context: list[list[int]]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The prior's mean and sigma (Z,) for one context, on the host, or (None, None) for a family
    whose prior is implicit (DialogWAE: noise through a generator)."""
    if not model.kl:
        return None, None
    mean, logvar = (t[0].float().cpu() for t in prior(model, [context]))
    return mean, torch.exp(0.5 * logvar)


@torch.inference_mode()
def decode(model, context: list[list[int]], z: torch.Tensor, max_len: int = 30,
           method: str = DecodeOptions.method) -> list[tuple[list[int], float]]:
    """One reply for each row of z (K, Z) under one context, decoded as the chat decodes each z
    (beam search by default, or greedy words): K (ids, log-likelihood per token). The same z and
    context always give the same response."""
    _require_latent(model)
    ctx = context_states(model, [context])                                  # (1, Hc)
    z = z.to(ctx.device, ctx.dtype)
    cond = model.condition(ctx.expand(len(z), -1), z)                       # (K, Hc + Z)
    opts = DecodeOptions(num_samples=len(z), max_len=max_len, method=method)
    if method == "beam":
        ids, scores = beam_search(model, cond, opts, 1)
        return [(x[0], s[0]) for x, s in zip(ids, scores)]
    ids, logp = sample_tokens(model, cond, opts, None)
    return [(x, lp / (len(x) + 1)) for x, lp in zip(ids, logp.tolist())]


def interpolate(z0: torch.Tensor, z1: torch.Tensor, steps: int, spherical: bool = False,
                mean: torch.Tensor | None = None, sigma: torch.Tensor | None = None) -> torch.Tensor:
    """`steps` evenly spaced points from z0 to z1 (both included): (steps, Z).

    Spherical interpolation (slerp) moves along the great circle and scales the norm linearly,
    so the points stay as far from the mean as samples of a Gaussian are, where a straight line
    between two samples passes through the unlikely middle. Given the prior's mean and sigma (Z,),
    it walks the ends' offsets from the mean in units of sigma, (z - mean) / sigma, the space in
    which the prior is N(0, I); without them (DialogWAE's implicit prior), z itself around 0."""
    t = torch.linspace(0, 1, steps, dtype=z0.dtype).unsqueeze(1)           # (steps, 1)
    if not spherical:
        return (1 - t) * z0 + t * z1
    if mean is not None:
        path = interpolate((z0 - mean) / sigma, (z1 - mean) / sigma, steps, spherical=True)
        path = mean + sigma * path
        path[0], path[-1] = z0, z1   # the ends exactly: they decode to the two replies
        return path
    n0, n1 = z0.norm(), z1.norm()
    if min(n0, n1) < 1e-12:   # an end at the origin has no direction: the arc is the line
        return (1 - t) * z0 + t * z1
    u0, u1, t = (z0 / n0).double(), (z1 / n1).double(), t.double()
    # the angle from the chord and its complement: exact also for (nearly) opposite ends, where
    # arccos of a dot product near -1 loses every digit and sin(omega) ~ 0 blows the path up
    omega = 2 * torch.atan2((u0 - u1).norm(), (u0 + u1).norm())
    if omega < 1e-6:   # (nearly) the same direction: the line is the arc
        return (1 - t.to(z0.dtype)) * z0 + t.to(z0.dtype) * z1
    if math.pi - omega < 1e-6:   # opposite ends: every great circle joins them; one through a perpendicular
        other = torch.zeros_like(u0)
        other[int(u0.abs().argmin())] = 1.0
        other = other - torch.dot(other, u0) * u0
        if other.norm() < 1e-12:   # one dimension: no circle joins them, only the line through 0
            return (1 - t.to(z0.dtype)) * z0 + t.to(z0.dtype) * z1
        u1 = u1 + 1e-3 * other   # a nudge off the antipode picks that circle
        omega = 2 * torch.atan2((u0 - u1).norm(), (u0 + u1).norm())
    direction = torch.sin((1 - t) * omega) * u0 + torch.sin(t * omega) * u1          # (steps, Z)
    direction = direction / direction.norm(dim=1, keepdim=True)   # unit along the arc, to rounding
    path = (direction * ((1 - t) * n0.double() + t * n1.double())).to(z0.dtype)
    path[0], path[-1] = z0, z1   # the ends exactly: they decode to the two replies
    return path


def endpoints(mean: torch.Tensor, logvar: torch.Tensor, seed: int, around_mean: float = 0.0):
    """Two z's of one context's prior (Z,): two samples, or mean -+ k sigma along a random unit
    direction when around_mean = k > 0."""
    gen = torch.Generator().manual_seed(seed)
    sigma = torch.exp(0.5 * logvar)
    if around_mean > 0:
        u = torch.randn(mean.shape, generator=gen)
        u = u / u.norm()
        return mean - around_mean * sigma * u, mean + around_mean * sigma * u
    return tuple(mean + sigma * torch.randn(mean.shape, generator=gen) for _ in range(2))


@torch.inference_mode()
def implicit_endpoints(model, context: list[list[int]], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two z's of one context's prior (Z,) for a family whose prior is implicit (DialogWAE: noise
    through a generator), drawn as decoding draws them."""
    _require_latent(model)
    gen = torch.Generator().manual_seed(seed)
    ctx = context_states(model, [context]).expand(2, -1)                   # (2, Hc)
    eps = torch.randn(2, model.noise_dim, generator=gen).to(ctx)
    z0, z1 = model.sample_prior(ctx, eps).float().cpu()                    # (2, Z)
    return z0, z1


def _require_latent(model):
    if not model.latent:
        raise InputError("this checkpoint is an HRED model: it has no latent variable z")


# --- the latent space of real responses -------------------------------------------------------

@torch.inference_mode()
def posterior_stats(model, sp, cfg, dialogues: list[list[str]], batch: int = 64):
    """Posterior means (T, Z) and KL per dimension (T, Z) of every utterance that has a turn
    before it, in dialogue order, with its (dialogue, position) (T, 2)."""
    _require_latent(model)
    model.eval()
    device = next(model.parameters()).device
    wins, where = [], []
    for d, dialog in enumerate(dialogues):
        ids = encode_turns(sp, dialog, cfg.max_utt_len, len(dialog))
        for s, e in windows(len(ids), cfg.max_context + 1):
            wins.append(ids[s:e])
            where += [(d, n) for n in range(s + 1, e)]
    means, kls = [], []
    for i in range(0, len(wins), batch):
        b = collate(wins[i:i + batch]).to(device)
        out = model.posterior_terms(b.tokens, b.lens, b.turns)              # targets in window order
        if "kl" not in out:
            raise InputError(f"{model.cfg.model} has no Gaussian posterior and prior to plot (no KL per dimension)")
        means.append(out["post_mean"].cpu())
        kls.append(out["kl"].cpu())
    return torch.cat(means), torch.cat(kls), torch.tensor(where)


def pca_2d(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The first two principal components of the rows of x: projections (T, 2) and the share of
    the variance each explains (2,)."""
    centred = x.double() - x.double().mean(0)
    _, s, v = torch.linalg.svd(centred, full_matrices=False)
    share = s ** 2 / (s ** 2).sum()
    return (centred @ v[:2].T).float(), share[:2].float()


def colour_by(kind: str, dialogues, where: torch.Tensor, acts=None) -> tuple[list, str]:
    """A value per point and a legend title: response length in words, whether it asks a
    question, or DailyDialog's dialogue act."""
    texts = [dialogues[d][n] for d, n in where.tolist()]
    if kind == "length":
        return [len(t.split()) for t in texts], "response length (words)"
    if kind == "question":
        return ["question" if "?" in t else "no question" for t in texts], "has a question mark"
    if kind == "act":
        if acts is None:
            raise InputError("--color act needs DailyDialog's act labels, which this model's data lacks: "
                             "use --color question or --color length")
        return [ACTS.get(acts[d][n], "?") if len(acts[d]) == len(dialogues[d]) else "?"
                for d, n in where.tolist()], "dialogue act (DailyDialog)"
    raise InputError(f"--color must be act, length or question, got '{kind}'")


KL_LINE = 0.01   # nats: a dimension whose mean KL is below carries next to nothing about the response


def kl_panel(ax, kls: torch.Tensor) -> None:
    """Bars of each latent dimension's mean KL (kls: (N, Z)), largest first, over a labelled
    dashed line at KL_LINE."""
    per_dim = kls.mean(0)
    order = torch.argsort(per_dim, descending=True)
    ax.bar(range(len(per_dim)), per_dim[order].tolist(), label="mean KL of a dimension")
    ax.axhline(KL_LINE, color="grey", lw=0.8, ls="--", label=f"{KL_LINE} nats: below it, a dimension carries next to nothing")
    ax.legend(fontsize=8)
    ax.set_title(f"KL per latent dimension, sorted ({float(per_dim.sum()):.2f} nats per response)")
    ax.set_xlabel("latent dimension (by KL)")
    ax.set_ylabel("mean KL (nats)")


def plot(means, kls, values, title: str, legend: str, out: str) -> str:
    """PCA of the posterior means coloured by `values`, and the mean KL of each dimension."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    xy, share = pca_2d(means)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2), gridspec_kw={"width_ratios": [1.1, 1]})
    if isinstance(values[0], str):
        for label in sorted(set(values)):
            keep = torch.tensor([v == label for v in values])
            left.scatter(xy[keep, 0], xy[keep, 1], s=5, alpha=0.5, label=f"{label} ({int(keep.sum())})")
        left.legend(title=legend, markerscale=3, fontsize=8)
    else:
        sc = left.scatter(xy[:, 0], xy[:, 1], c=values, s=5, alpha=0.6, cmap="viridis",
                          vmax=sorted(values)[int(0.98 * (len(values) - 1))])
        fig.colorbar(sc, ax=left, label=legend)
    left.set_title(f"posterior means, PCA (PC1 {share[0]:.0%}, PC2 {share[1]:.0%} of the variance)")
    kl_panel(right, kls)
    fig.suptitle(title)
    fig.tight_layout()
    data = picture(fig, os.path.splitext(out)[1].lower().lstrip("."))
    write_bytes(out, data)   # the old picture stays until the new one is whole
    plt.close(fig)
    return out


# --- the command ------------------------------------------------------------------------------

def _validation_dialogues(cfg, n: int):
    """The first n validation dialogues of the checkpoint's data, and their acts (DailyDialog)."""
    from . import sources
    from .sources import split_dialogues
    if cfg.data != "dailydialog":
        return split_dialogues(cfg, "validation")[:n], None
    src = sources.find_dailydialog(cfg.data_dir, remembered=cfg.data_source)   # as training found it
    pairs = zip(sources.read_dailydialog(src)["validation"], sources.read_dailydialog_acts(src, "validation"))
    pairs = [(d, a) for d, a in pairs if len(d) > 1][:n]
    return [d for d, _ in pairs], [a for _, a in pairs]


def check_args(args):
    """Every count and number of the flags within its cap (vhred/limits.py), before any work."""
    if args.what == "interpolate":
        limits.count("--steps", args.steps, 2, limits.MAX_STEPS)
        limits.count("--max-len", args.max_len, 1, limits.MAX_LEN)
        limits.number("--around-mean", args.around_mean, 0, limits.MAX_AROUND_MEAN)
        limits.count("--seed", args.seed, 0, 2 ** 63 - 1)
    else:
        limits.count("--dialogues", args.dialogues, 1, limits.MAX_DIALOGUES)
        if os.path.splitext(args.out)[1].lower().lstrip(".") not in IMAGE_TYPES:
            raise InputError(f"--out must name a picture ({', '.join('.' + t for t in IMAGE_TYPES)}), got {args.out!r}")
        check_output(args.out)


IMAGE_TYPES = ("png", "pdf", "svg", "jpg", "jpeg")


def run_plot(args):
    model, cfg, sp = loading.load_model(args.checkpoint, pick_device(args.device))
    dialogues, acts = _validation_dialogues(cfg, args.dialogues)
    means, kls, where = posterior_stats(model, sp, cfg, dialogues)
    if len(means) < 2:   # one point has no spread to project
        raise InputError(f"the plot needs at least 2 validation responses, and {len(dialogues)} dialogue(s) gave "
                         f"{len(means)}: raise --dialogues")
    kind = args.color or ("act" if acts is not None else "question")   # own data has no act labels
    values, legend = colour_by(kind, dialogues, where, acts)
    active = int((means.double().var(0) > 0.01).sum())
    title = (f"{checkpoint.resolve(args.checkpoint)}: {len(means)} validation responses, "
             f"{active} of {means.shape[1]} dimensions active")
    print(plot(means, kls, values, title, legend, args.out))


def run_interpolate(args):
    model, cfg, sp = loading.load_model(args.checkpoint, pick_device(args.device))
    context = encode_turns(sp, [spaced(t) for t in args.context], cfg.max_utt_len, cfg.max_context)
    if model.latent and not model.kl:   # DialogWAE: two draws of its implicit prior, walked around 0
        if args.around_mean:
            raise InputError("--around-mean takes the prior's mean and spread, and DialogWAE's prior is implicit "
                             "(noise through a generator): leave it out for two of its draws")
        (z0, z1), mean, sigma = implicit_endpoints(model, context, args.seed), None, None
    else:
        mean, logvar = (t[0].cpu() for t in prior(model, [context]))
        z0, z1 = endpoints(mean, logvar, args.seed, args.around_mean)
        sigma = torch.exp(0.5 * logvar)
    for kind in (["linear", "spherical"] if args.kind == "both" else [args.kind]):
        path = interpolate(z0, z1, args.steps, kind == "spherical", mean, sigma)
        print(f"{kind}:")
        for i, (ids, _) in enumerate(decode(model, context, path, args.max_len)):
            print(f"  {i / (args.steps - 1):4.2f}  {response_text(sp, ids, args.max_len)}")


@command
def main(argv=None):
    p = Parser(prog=program("python -m vhred.latent"), description="Look at VHRED's latent variable.")
    sub = p.add_subparsers(dest="what", required=True, metavar="{interpolate,plot}",
                           help="interpolate: decode between two z's; plot: the latent space of validation responses")
    for name, helptext in (("interpolate", "decode evenly spaced z's between two z's of one context's prior"),
                           ("plot", "posterior means of validation responses (PCA) and KL per dimension")):
        s = sub.add_parser(name, help=helptext, description=helptext)
        s.add_argument("--checkpoint", help="a run folder, .pt file or exported model folder (default: the newest runs/*/best.pt)")
        s.add_argument("--device", default="auto", help="auto, cpu or cuda (default %(default)s)")
    it = sub.choices["interpolate"]
    it.add_argument("--context", nargs="+", required=True, help="the context's turns, oldest first")
    it.add_argument("--steps", type=int, default=7, help="points from one end to the other, both included (default %(default)s)")
    it.add_argument("--kind", choices=["linear", "spherical", "both"], default="both", help="(default %(default)s)")
    it.add_argument("--around-mean", type=float, default=0.0,
                    help="K > 0: the ends are the prior mean -+ K sigma along a random direction (default: two samples)")
    it.add_argument("--max-len", type=int, default=30, help="tokens per response (default %(default)s)")
    it.add_argument("--seed", type=int, default=0, help="which two ends (default %(default)s)")
    pl = sub.choices["plot"]
    pl.add_argument("--color", default=None, choices=["act", "length", "question"],
                    help="act, length or question (default: act on DailyDialog, question on your own data)")
    pl.add_argument("--dialogues", type=int, default=1000, help="validation dialogues to read (default %(default)s)")
    pl.add_argument("--out", default="latent.png", help="the picture (default %(default)s)")
    args = p.parse_args(argv)
    check_args(args)
    args.checkpoint = chosen_checkpoint(args.checkpoint)
    if args.what == "plot":
        run_plot(args)
    else:
        run_interpolate(args)


if __name__ == "__main__":
    main()
