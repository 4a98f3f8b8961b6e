"""Training curves of a run: python -m vhred.plot runs/x  ->  runs/x/curves.png

Four panels over optimiser steps: per token, the training NLL, the validation NLL and the
validation negative ELBO (the best.pt criterion, its lowest point marked); KL per utterance
(train, validation); the KL weight beta; the active latent units at each validation. Validations
made below full KL weight (early in a cyclical schedule's cycle) are hollow markers off the line.
"""
import io
import json
import math
import os

from .cli import command, Parser, program

from .errors import InputError
from .files import write_bytes


def read_metrics(run_dir: str) -> tuple[list[dict], list[dict]]:
    if not run_dir:
        raise InputError("the run folder is empty; give one, e.g. runs/dailydialog-cpu-vhred")
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise InputError(f"{path} not found; is {run_dir} a run folder?")
    rows = []
    with open(path, "rb") as f:
        for line in f:
            try:
                row = json.loads(line)
            except (ValueError, RecursionError):
                continue   # a line cut short by a kill, or not JSON (bytes that are not UTF-8)
            if isinstance(row, dict):   # a line that is JSON but not a record ([1]) is no metric either
                rows.append(row)
    # a step logged twice (a run killed and resumed before the trimming of vhred/train.py): the last
    last = {(r.get("split"), r.get("step")): r for r in rows}
    rows = [r for r in rows if last[(r.get("split"), r.get("step"))] is r]
    return [r for r in rows if r.get("split") == "train"], [r for r in rows if r.get("split") == "val"]


def run_config(run_dir: str):
    """The run's Config from its config.json, or None without one (or with one not read)."""
    from .config import from_dict
    try:
        with open(os.path.join(run_dir, "config.json")) as f:
            return from_dict(json.load(f))
    except (OSError, ValueError, TypeError):
        return None


def beta_curve(run_dir: str, train: list[dict]) -> tuple[list[int], list[float]]:
    """The KL weight at every step the run took, from its config.json: the logged rows sample a
    cyclical schedule every log_every steps and can miss its troughs. A row at step s was logged
    after step s - 1 had been taken with beta(s - 1). Without the config: the logged values."""
    from .schedule import kl_weight
    cfg = run_config(run_dir)
    if cfg is None:
        return [r["step"] for r in train], [r["beta"] for r in train]
    last = max((r["step"] for r in train), default=0)
    return list(range(1, last + 1)), [kl_weight(s - 1, cfg) for s in range(1, last + 1)]


def below_full_weight(run_dir: str, val: list[dict]) -> set[int]:
    """The steps of validations whose last training step had a KL weight below kl_max, in a
    model with a KL: early in a cyclical schedule's cycle the KL jumps and the ELBO with it
    (docs/configs.md, early stopping), so they are drawn apart. None without the config."""
    from .schedule import kl_weight
    cfg = run_config(run_dir)
    if cfg is None:
        return set()
    return {r["step"] for r in val if r.get("kl_per_utt", 0) > 0 and r["step"] > 0
            and kl_weight(r["step"] - 1, cfg) < cfg.kl_max}


def plot_val(a, val: list[dict], low: set[int], key: str, style: str, color: str, label: str):
    """A validation series: the figures at full KL weight joined by a line, those below it
    (`low`) as hollow markers beside it."""
    full = [r for r in val if r["step"] not in low]
    a.plot([r["step"] for r in full], [r[key] for r in full], f"{style}-", color=color, label=label)
    ramp = [r for r in val if r["step"] in low]
    if ramp:
        a.plot([r["step"] for r in ramp], [r[key] for r in ramp], style, color=color, mfc="none",
               label=f"{label.split(' (')[0]}, below full KL weight")


def smooth(values: list[float], width: int = 10) -> list[float]:
    """Trailing moving average, to see the trend through batch noise."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v - (values[i - width] if i >= width else 0.0)
        out.append(acc / min(i + 1, width))
    return out


def plot(run_dir: str) -> str:
    import matplotlib
    matplotlib.use("Agg")   # headless: files only, no display needed
    import matplotlib.pyplot as plt
    train, val = read_metrics(run_dir)
    steps = [r["step"] for r in train]
    fig, ax = plt.subplots(2, 2, figsize=(11, 7))
    panels = [(ax[0, 0], "nll_per_token", "per token (nats)"),
              (ax[0, 1], "kl_per_utt", "KL per utterance (nats)")]
    low = below_full_weight(run_dir, val)
    for a, key, title in panels:
        a.plot(steps, smooth([r[key] for r in train]), label=f"train {key.split('_')[0].upper()}", lw=1)
        plot_val(a, val, low, key, "o", "C1", f"validation {key.split('_')[0].upper()}")
        a.set_title(title)
    plot_elbo(ax[0, 0], val, low)
    for a, _, _ in panels:
        a.legend(fontsize="small")
    ax[1, 0].plot(*beta_curve(run_dir, train))
    ax[1, 0].set_title("KL weight beta")
    plot_val(ax[1, 1], val, low, "active_units", "o", "C0", "validation")
    ax[1, 1].set_title("active latent units (validation)")
    for a in ax.flat:
        a.set_xlabel("step")
        a.grid(alpha=0.3)
    fig.suptitle(os.path.basename(os.path.normpath(run_dir)))
    fig.tight_layout()
    out = os.path.join(run_dir, "curves.png")
    write_bytes(out, picture(fig, "png"))   # the old picture stays until the new one is whole
    plt.close(fig)
    return out


def picture(fig, kind: str) -> bytes:
    """The figure drawn in memory as a png, pdf, svg or jpg file: written by write_bytes, a full
    disk is one named error (matplotlib's writers cut a JPEG short silently, or hide the error
    behind one of zlib's) and the old picture stays."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=100, format=kind)
    return buffer.getvalue()


def plot_elbo(a, val: list[dict], low: set[int] = frozenset()):
    """Validation negative ELBO per token, which picks best.pt (among all its figures, those
    below full KL weight too): its lowest point is marked."""
    rows = [r for r in val if "elbo_per_token" in r]
    if not rows:
        return
    plot_val(a, rows, low, "elbo_per_token", "s", "C3", "validation -ELBO (best.pt criterion)")
    finite = [r for r in rows if math.isfinite(r["elbo_per_token"])]   # training skips a NaN validation too
    if not finite:
        return
    best = min(finite, key=lambda r: r["elbo_per_token"])
    a.plot([best["step"]], [best["elbo_per_token"]], "*", color="C3", markersize=16,
           label=f"best.pt: {best['elbo_per_token']:.3f} at step {best['step']}")


@command
def main(argv=None):
    p = Parser(prog=program("python -m vhred.plot"),
               description="Plot a run's training curves to <run_dir>/curves.png.")
    p.add_argument("run_dir", help="a run folder holding metrics.jsonl")
    args = p.parse_args(argv)
    try:
        print(plot(args.run_dir))
    except InputError:   # already one line that says what to do (no metrics.jsonl)
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{args.run_dir}/metrics.jsonl lacks or garbles {str(e)[:60]}; was it written by vhred?") from None


if __name__ == "__main__":
    main()
