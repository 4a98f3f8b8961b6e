"""Benchmarks (never timed tests): python -m vhred.bench [--configs a.yaml b.yaml] [--steps N]

For each config: training throughput in target tokens/s (non-padding tokens of decoded
utterances), the padding fraction of the batches, peak RSS, seconds per epoch of the training
split, and the latency of one chat turn (10 samples of exactly 30 tokens, the worst case).
Each config runs in its own process so its peak memory is its own. Prints a table and writes
bench.json.
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

from .config import load


def chat_latency(cfg, repeats: int = 20) -> float:
    """Median milliseconds of one chat turn: encode a 5-turn history, decode 10 x 30 tokens."""
    from .generate import DecodeOptions, generate
    from .model import VHRED
    torch.manual_seed(0)
    model = VHRED(cfg).eval()   # latency depends on sizes, not on trained weights
    history = [torch.randint(4, cfg.vocab_size, (15,)).tolist() for _ in range(5)]
    opts = DecodeOptions(num_samples=10, max_len=30, min_len=30)   # no early <eos>: full length
    times = []
    for i in range(repeats + 3):
        t0 = time.perf_counter()
        generate(model, [history], opts)
        if i >= 3:   # the first calls warm up allocators and kernels
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def train_throughput(cfg, steps: int) -> dict:
    """Train `steps` steps on real batches after 3 warm-up steps; tokens/s, padding, memory."""
    from .train import Run
    run = Run(cfg, log=lambda *_: None)
    batches = run.train_data.batches(cfg.batch_size, cfg.seed, 0)
    for idx in batches[:3]:
        run.train_step(idx)
    tokens = 0
    t0 = time.perf_counter()
    for idx in batches[3:3 + steps]:
        tokens += run.train_step(idx)["tokens"]
    seconds = time.perf_counter() - t0
    padded = real = 0
    for idx in batches[3:3 + steps]:   # token slots in the padded batch tensors vs real tokens
        b = run.train_data.batch(idx)
        padded += b.tokens.numel()
        real += int(b.lens.sum())
    tps = tokens / seconds
    epoch_tokens = int(run.train_data.n_tokens.sum())
    return {"train_tokens_per_s": tps, "step_s": seconds / steps,
            "padding_fraction": 1 - real / padded,
            "epoch_s": epoch_tokens / tps, "params_M": run.model.num_params() / 1e6}


def one(config: str, steps: int, overrides: list[str]) -> dict:
    cfg = load(config, [f"name=bench-{os.path.basename(config)}", "out_dir=runs/bench", *overrides])
    result = {"config": config, **train_throughput(cfg, steps)}
    result["chat_ms"] = chat_latency(cfg)
    result["peak_rss_MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["configs/dailydialog.yaml", "configs/dailydialog-cpu.yaml"])
    p.add_argument("--steps", type=int, default=30, help="timed training steps per config")
    p.add_argument("--out", default="runs/bench/bench.json")
    p.add_argument("--one", help=argparse.SUPPRESS)   # child process: one config
    p.add_argument("overrides", nargs="*", help="key=value applied to every config")
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one, args.steps, args.overrides)))
        return
    rows = []
    for config in args.configs:
        r = subprocess.run([sys.executable, "-m", "vhred.bench", "--one", config, "--steps", str(args.steps),
                            *args.overrides], capture_output=True, text=True)
        if r.returncode != 0:
            print(f"error: {config}: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}",
                  file=sys.stderr)
            sys.exit(1)
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    machine = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
               "torch": torch.__version__, "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"machine": machine, "results": rows}, f, indent=1)
    print(f"{'config':32} {'params':>7} {'tok/s':>8} {'step s':>7} {'pad':>6} {'epoch s':>8} {'RSS MB':>7} {'chat ms':>8}")
    for r in rows:
        print(f"{r['config']:32} {r['params_M']:6.1f}M {r['train_tokens_per_s']:8.0f} {r['step_s']:7.3f} "
              f"{r['padding_fraction']:6.1%} {r['epoch_s']:8.0f} {r['peak_rss_MB']:7.0f} {r['chat_ms']:8.1f}")
    print(f"machine: {machine}; written to {args.out}")


if __name__ == "__main__":
    main()
