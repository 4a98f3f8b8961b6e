"""Scaling benchmark (not a test): python -m vhred.bench_scale --scales 1 10 100

For each scale k it writes a synthetic JSONL corpus of k times DailyDialog's size (13,118
dialogues per unit) out of DailyDialog's own utterances, shuffled into new dialogues whose
lengths follow DailyDialog's (seeded, no download), then measures in child processes, so each
figure is that process's own:
  - preparation (`prepare`): wall time, peak resident memory (VmHWM, which also counts pages of
    memory-mapped files) and peak anonymous memory (RssAnon, the heap: what cannot be paged
    out), per phase of preparation as well;
  - training: target tokens/s over a few steps of the config on the prepared corpus.
Prints a table and writes bench-scale.json into the work folder.
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time

import numpy as np

from . import limits
from .cli import command, Parser, program
from .errors import InputError
from .files import output_file

DAILYDIALOG_DIALOGUES = 13118   # train + validation + test: the unit of scale


def write_corpus(dailydialog: str, scale: float, path: str, seed: int = 0, chunk: int = 10000) -> int:
    """Write scale x DailyDialog's dialogue count as JSONL; return the number of dialogues.

    Utterances are drawn at random from all of DailyDialog, dialogue lengths from its own
    length distribution, so the corpus looks like DailyDialog but repeats no dialogue.
    """
    from .sources import read_dailydialog
    dd = [d for split in read_dailydialog(dailydialog).values() for d in split]
    utts = np.array([u for d in dd for u in d], dtype=object)
    lengths = np.array([len(d) for d in dd])
    rng = np.random.default_rng(seed)
    total = int(round(scale * DAILYDIALOG_DIALOGUES))
    with output_file(path) as f:   # whole or not at all
        for start in range(0, total, chunk):   # in chunks: the writer's memory stays flat
            n = rng.choice(lengths, size=min(chunk, total - start))
            picks = iter(utts[rng.integers(0, len(utts), size=int(n.sum()))])
            f.writelines(json.dumps({"dialog": [next(picks) for _ in range(k)]}) + "\n" for k in n)
    return total


class MemorySampler(threading.Thread):
    """Samples this process's RssAnon every `every` s; keeps the peak per phase (a log line)."""

    def __init__(self, every: float = 0.02):
        super().__init__(daemon=True)
        self.every, self.phase, self.peaks = every, "start", {}
        self.done = threading.Event()

    @staticmethod
    def status() -> dict:
        """Memory lines of /proc/self/status, in MB."""
        out = {}
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                    out[key] = int(value.split()[0]) / 1024
        return out

    def run(self):
        while not self.done.wait(self.every):
            anon = self.status()["RssAnon"]
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), anon)

    def log(self, message: str):
        print(message, file=sys.stderr)
        self.phase = message.strip()[:48]   # preparation logs the start of each phase


def measure_prepare(config: str, overrides: list[str]) -> dict:
    """Child process: prepare the data from scratch; wall time and memory peaks."""
    from .config import load
    from .dataset import prepare
    cfg = load(config, overrides)
    sampler = MemorySampler()
    sampler.start()
    t0 = time.perf_counter()
    folder = prepare(cfg, log=sampler.log)
    seconds = time.perf_counter() - t0
    sampler.done.set()
    sampler.join()
    meta = json.load(open(os.path.join(folder, "meta.json")))
    return {"prepare_s": seconds, "peak_rss_MB": MemorySampler.status()["VmHWM"],
            "peak_anon_MB": max(sampler.peaks.values()), "phase_anon_MB": sampler.peaks,
            "dialogues": meta["dialogues"], "windows": meta["windows"],
            "target_tokens": meta["target_tokens"]}


def measure_training(config: str, overrides: list[str], steps: int) -> dict:
    """Child process: target tokens/s of `steps` training steps on the prepared corpus."""
    import resource

    from .bench import train_throughput
    from .config import load
    r = train_throughput(load(config, overrides), steps)
    return {"train_tokens_per_s": r["train_tokens_per_s"],
            "train_peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def child(kind: str, config: str, steps: int, overrides: list[str]) -> dict:
    """Run one measurement in a fresh process; its peak memory is then its own."""
    cmd = [sys.executable, "-m", "vhred.bench_scale", "--child", kind, "--config", config,
           "--steps", str(steps), *overrides]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if r.returncode == 2:   # a mistake of the user's, which the child has said in its one line
        sys.exit(2)
    if r.returncode != 0:
        sys.exit(f"error: {kind} child failed ({r.returncode}): {' '.join(cmd)}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def one_scale(args, scale: float) -> dict:
    path = os.path.join(args.workdir, f"synthetic-{scale:g}x.jsonl")
    t0 = time.perf_counter()
    if not os.path.exists(path):
        write_corpus(args.dailydialog, scale, path, seed=args.seed)
    print(f"{scale:g}x: corpus {path} ({os.path.getsize(path) / 2**20:.0f} MB, "
          f"written in {time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    # a data_dir per run, so preparation always starts from scratch
    data_dir = os.path.join(args.workdir, f"data-{scale:g}x")
    shutil.rmtree(data_dir, ignore_errors=True)
    overrides = [f"data={path}", f"data_dir={data_dir}", "max_dialogues=0", f"seed={args.seed}",
                 f"out_dir={args.workdir}/runs", f"name=scale-{scale:g}x", *args.overrides]
    row = {"scale": scale, "corpus_MB": os.path.getsize(path) / 2 ** 20,
           **child("prepare", args.config, args.steps, overrides)}
    if args.steps:
        shutil.rmtree(os.path.join(args.workdir, "runs", f"scale-{scale:g}x"), ignore_errors=True)   # no resuming
        row.update(child("train", args.config, args.steps, overrides))
    return row


def print_table(rows: list[dict]):
    print(f"{'scale':>6} {'dialogues':>10} {'JSONL MB':>9} {'target tokens':>14} {'prep s':>7} "
          f"{'peak RSS MB':>12} {'peak anon MB':>13} {'train tok/s':>12}")
    for r in rows:
        tps = f"{r['train_tokens_per_s']:12.0f}" if "train_tokens_per_s" in r else f"{'-':>12}"
        print(f"{r['scale']:>5g}x {sum(r['dialogues'].values()):10d} {r['corpus_MB']:9.0f} "
              f"{sum(r['target_tokens'].values()):14d} {r['prepare_s']:7.0f} {r['peak_rss_MB']:12.0f} "
              f"{r['peak_anon_MB']:13.0f} {tps}")


def check_args(args):
    """Every mistake in the flags, settings or source said before a corpus is written."""
    from .config import load
    for scale in args.scales:
        limits.number("--scales", scale, 0, 1000)   # 1000 DailyDialogs: about 13 million dialogues
        if scale * DAILYDIALOG_DIALOGUES < 1:
            raise InputError(f"--scales {scale:g} is less than one dialogue; give 0.001 or more")
    limits.count("--steps", args.steps, 0, 100_000)
    load(args.config, args.overrides)
    if not os.path.exists(args.dailydialog):
        raise InputError(f"{args.dailydialog} does not exist: give DailyDialog's archive or folder with --dailydialog")


@command
def main(argv=None):
    p = Parser(prog=program("python -m vhred.bench_scale"), description=__doc__.splitlines()[0])
    p.add_argument("--scales", nargs="+", type=float, default=[1, 10, 100],
                   help="corpus sizes in DailyDialogs, each a row (default %(default)s)")
    p.add_argument("--dailydialog", default=os.environ.get("DAILYDIALOG_SRC"),
                   help="DailyDialog archive or folder the corpora are drawn from (default $DAILYDIALOG_SRC)")
    p.add_argument("--config", default="configs/dailydialog-cpu.yaml",
                   help="its data settings prepare the corpora, its model is trained for --steps")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per scale (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default="runs/bench-scale", help="corpora, caches and results go here")
    p.add_argument("--child", choices=["prepare", "train"], help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="key=value applied to the config")
    args = p.parse_args(argv)
    if args.child == "prepare":
        print(json.dumps(measure_prepare(args.config, args.overrides)))
        return
    if args.child == "train":
        print(json.dumps(measure_training(args.config, args.overrides, args.steps)))
        return
    if not args.dailydialog:
        p.error("no DailyDialog to draw from: set DAILYDIALOG_SRC or give --dailydialog")
    check_args(args)
    os.makedirs(args.workdir, exist_ok=True)
    rows = [one_scale(args, s) for s in args.scales]
    import torch
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "torch": torch.__version__}
    with output_file(os.path.join(args.workdir, "bench-scale.json")) as f:
        json.dump({"machine": machine, "config": args.config, "results": rows}, f, indent=1)
    print_table(rows)
    print(f"machine: {machine}; config {args.config}; written to {args.workdir}/bench-scale.json")


if __name__ == "__main__":
    main()
