"""Training curves of a run: python -m vhred.plot runs/x  ->  runs/x/curves.png

Four panels over optimiser steps: NLL per token (train, validation), KL per utterance (train,
validation), the KL weight beta, and the active latent units at each validation.
"""
import argparse
import json
import os
import sys


def read_metrics(run_dir: str) -> tuple[list[dict], list[dict]]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found; is {run_dir} a run folder?")
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue   # a line cut short by a kill
    return [r for r in rows if r.get("split") == "train"], [r for r in rows if r.get("split") == "val"]


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
    vsteps = [r["step"] for r in val]
    fig, ax = plt.subplots(2, 2, figsize=(11, 7))
    panels = [(ax[0, 0], "nll_per_token", "NLL per token (nats)"),
              (ax[0, 1], "kl_per_utt", "KL per utterance (nats)")]
    for a, key, title in panels:
        a.plot(steps, smooth([r[key] for r in train]), label="train", lw=1)
        a.plot(vsteps, [r[key] for r in val], "o-", label="validation")
        a.set_title(title)
        a.legend()
    ax[1, 0].plot(steps, [r["beta"] for r in train])
    ax[1, 0].set_title("KL weight beta")
    ax[1, 1].plot(vsteps, [r["active_units"] for r in val], "o-")
    ax[1, 1].set_title("active latent units (validation)")
    for a in ax.flat:
        a.set_xlabel("step")
        a.grid(alpha=0.3)
    fig.suptitle(os.path.basename(os.path.normpath(run_dir)))
    fig.tight_layout()
    out = os.path.join(run_dir, "curves.png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description="Plot a run's training curves to curves.png.")
    p.add_argument("run_dir")
    args = p.parse_args(argv)
    try:
        print(plot(args.run_dir))
    except (FileNotFoundError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
