"""Benchmarks (never timed tests): python -m vhred.bench [--configs a.yaml b.yaml] [--steps N]
                                   python -m vhred.bench --serve [--checkpoint runs/x/best.pt]

For each config: training throughput in target tokens/s (non-padding tokens of decoded
utterances), the padding fraction of the batch tensors (memory only: the GRUs and the softmax
run on packed sequences, so no padding position is computed), peak RSS, seconds per epoch of the training
split, the latency of one chat turn (10 replies of exactly 30 tokens, greedy per z: the
decoding the tables were first measured with; beam search costs 2-3 times as much), and the
model FLOPs utilisation: the training step's FLOP/s over the machine's dense matmul rate
measured in the same run, in the step's own precision (fp32, or bf16 under precision=bf16, and
under precision=auto on a bf16 GPU from a batch of 256 a process). On CUDA it also reports the peak GPU memory.
Each config runs in its own process so its peak memory is its own. Prints a table and writes
bench.json.

--serve measures `vhred serve` instead: requests/s and p50/p95 latency at 1, 8 and 32 concurrent
clients, each sending POST /respond (a 3-turn history, n=5, the default decoding) as soon as its
previous answer came back, against a server in its own process, with batching (--max-batch 32)
and without (--max-batch 1), the server on the CPU. Without --checkpoint it serves an untrained model of the first
config's sizes and tokenizer: latency depends on the sizes, not on the weights (an untrained
model rarely ends a reply early, so its replies are the longest: the worst case).
"""
import argparse
import http.client
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time

import torch

from . import limits
from .cli import command, Parser, program
from .config import load
from .device import BF16_MIN_BATCH
from .errors import InputError
from .files import check_output, output_file
from .decoding import RANKS
from .models import FAMILIES
from .serve import Limits
from .train import prefetch


def chat_latency(cfg, vocab: int, device="cpu", repeats: int = 20) -> float:
    """Median milliseconds of one chat turn on `device` (the run's): encode a 5-turn history,
    decode 10 x 30 tokens, greedy per z."""
    from .candidates import generate
    from .decoding import DecodeOptions
    from .models import build
    torch.manual_seed(0)
    model = build(cfg.arch, vocab).to(device).eval()   # latency depends on sizes, not on trained weights
    history = [torch.randint(4, vocab, (15,)).tolist() for _ in range(5)]
    # no early <eos>: full length; decoding only (ranking costs more: see the serving bench)
    opts = DecodeOptions(num_samples=10, method="greedy", max_len=30, min_len=30, rank="none", dedup=False)
    times = []
    for i in range(repeats + 3):
        t0 = time.perf_counter()
        generate(model, [history], opts)
        if i >= 3:   # the first calls warm up allocators and kernels
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def matmul_rate(dtype=torch.float32, seconds: float = 2.0) -> float:
    """The machine's dense matrix-multiply rate in FLOP/s, in dtype. On a GPU, rounds of 20
    8192-square matmuls with one synchronisation each (a sync per small matmul would time the
    launches and the waits, not the tensor cores, and overstate MFU); on a CPU, 1024-square ones."""
    cuda = torch.cuda.is_available()
    n, per_sync = (8192, 20) if cuda else (1024, 1)
    a, b = (torch.randn(n, n, device="cuda" if cuda else "cpu", dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(per_sync):
            a @ b
        sync()
        count += per_sync
    return 2 * n ** 3 * count / (time.perf_counter() - t0)


def forward_flops(arch, vocab: int, batch) -> float:
    """Multiply-add FLOPs (2 per MAC) of one forward pass over a batch, from the model's sizes.

    encoder: every utterance token, both directions: 2 * 3Hu * (E + Hu) each
    context: every utterance: 2 * 3Hc * (2Hu + Hc)
    decoder: every target token: 2 * 3Hd * (E + C + Hd), C = Hc + Z, plus the output layer
             (tied: 2 * Hd * E + 2 * E * V; untied: 2 * Hd * V)
    per target utterance: the decoder's initial state and the prior / posterior MLPs
    attention over N words: per target, the projection 2 * N * 2Hu * Hd; per decoder token, the
             scores and the read 2 * 2 * N * Hd, and W_c 2 * 2Hd * Hd
    Backward costs about twice the forward, so a training step is 3x this.
    """
    E, Hu, Hc, Hd, V, L = arch.emb_dim, arch.utt_hidden, arch.ctx_hidden, arch.dec_hidden, vocab, arch.latent_hidden
    Z = arch.z_dim if FAMILIES[arch.model].latent else 0   # the latent families: VHCR and DialogWAE add a little more
    C = Hc + Z
    U, B = len(batch.lens), len(batch.turns)
    enc_tokens = int((batch.lens - 1).sum())
    dec_tokens = batch.target_tokens
    out = 2 * Hd * E + 2 * E * V if arch.tie_embeddings else 2 * Hd * V
    flops = enc_tokens * 2 * (2 * 3 * Hu * (E + Hu)) + U * 2 * 3 * Hc * (2 * Hu + Hc)
    flops += dec_tokens * (2 * 3 * Hd * (E + C + Hd) + out)
    per_target = 2 * C * Hd
    if arch.attention:
        N = arch.attention
        flops += dec_tokens * (4 * N * Hd + 4 * Hd * Hd)
        per_target += 4 * N * Hu * Hd
    if Z:
        mlp = lambda d_in: 2 * (d_in * L + L * L + 2 * L * Z)
        per_target += mlp(Hc) + mlp(Hc + 2 * Hu)
    return flops + (U - B) * per_target


def train_throughput(cfg, steps: int) -> dict:
    """Train `steps` steps on real batches after 3 warm-up steps; tokens/s, padding, memory."""
    from .train import Run
    run = Run(cfg, log=lambda *_: None)
    batches = run.train_data.batches(cfg.batch_size, cfg.seed, 0)
    if len(batches) < steps + 3:   # 3 warm-up steps first; one epoch's batches, each step a new one
        raise InputError(f"--steps {steps} needs {steps + 3} batches and the training split gives "
                         f"{len(batches)} of batch_size={cfg.batch_size}: give --steps {max(len(batches) - 3, 1)} "
                         f"or less, or a smaller batch size")
    for idx in batches[:3]:
        run.train_step(idx)
    tokens = 0
    t0 = time.perf_counter()
    for idx, batch in prefetch(run.make_batch, batches[3:3 + steps]):   # as training builds them
        tokens += run.train_step(idx, batch=batch)["tokens"]
    seconds = time.perf_counter() - t0
    gpu = gpu_profile(run, batches[3:3 + min(steps, 10)]) if run.device.type == "cuda" else {}
    padded = real = flops = 0
    for idx in batches[3:3 + steps]:   # token slots in the padded batch tensors vs real tokens
        b = run.train_data.batch(idx)
        padded += b.tokens.numel()
        real += int(b.lens.sum())
        flops += 3 * forward_flops(cfg.arch, run.vocab_size, b)
    tps = tokens / seconds
    epoch_tokens = int(run.train_data.n_tokens.sum())
    return {"train_tokens_per_s": tps, "step_s": seconds / steps,
            "padding_fraction": 1 - real / padded,
            "epoch_s": epoch_tokens / tps, "params_M": run.model.num_params() / 1e6,
            "train_flops_per_s": flops / seconds, "flops_per_token": flops / tokens,
            "precision": "bf16" if run.bf16 else "fp32", "vocab_size": run.vocab_size,
            "batch_size": cfg.batch_size, "device": str(run.device), **gpu}


def gpu_profile(run, batches) -> dict:
    """On a GPU: the share of the step's wall time the GPU spends in kernels, and the kernel
    launches per step, from torch.profiler over a few steps (the launch count is what a
    small-batch step is bound by; a busy share well under 1 means the GPU waits for the host)."""
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for idx, batch in prefetch(run.make_batch, batches):
            run.train_step(idx, batch=batch)
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    kernel_us, launches = kernel_time_and_launches(prof.key_averages())
    return {"gpu_busy": kernel_us / 1e6 / wall, "launches_per_step": launches / len(batches),
            "gpu_peak_MB": torch.cuda.max_memory_allocated() / 2 ** 20}


# the runtime and driver calls that start work on the GPU: cuBLASLt and cuDNN use the driver's
# cuLaunchKernel(Ex), graphs launch many kernels at once
MAX_REPORT_BYTES = 1 << 20   # a report is a few KB: a larger --out file is something else, not read whole
LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchCooperativeKernel", "cudaGraphLaunch")


def kernel_time_and_launches(rows) -> tuple[float, int]:
    """(microseconds the GPU spent in kernels, launch calls) from profiler rows. Only the device's
    own rows count: a CPU op's row carries the device time of the kernels it launched too, so
    adding every row counts each kernel twice."""
    from torch.autograd import DeviceType
    kernel_us = sum(e.self_device_time_total for e in rows if e.device_type == DeviceType.CUDA)
    launches = sum(e.count for e in rows if e.device_type == DeviceType.CPU and e.key.startswith(LAUNCHES))
    return kernel_us, launches


def one(config: str, steps: int, overrides: list[str], folder: str) -> dict:
    """One config's row; its run folder (config.json, no checkpoint) is made in folder, the report's."""
    cfg = load(config, [f"name=bench-{os.path.basename(config)}", f"out_dir={folder}", *overrides])
    result = {"config": config, **train_throughput(cfg, steps)}
    result["chat_ms"] = chat_latency(cfg, result["vocab_size"], result["device"])
    result["matmul_flops_per_s"] = matmul_rate(torch.bfloat16 if result["precision"] == "bf16" else torch.float32)
    result["mfu"] = result["train_flops_per_s"] / result["matmul_flops_per_s"]
    result["peak_rss_MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def parse_args(argv):
    p = Parser(prog=program("python -m vhred.bench"),
               description="Training speed, memory and chat latency per config; "
                           "or, with --serve, the throughput and latency of `vhred serve`.")
    p.add_argument("--configs", nargs="+", default=["configs/dailydialog.yaml", "configs/dailydialog-cpu.yaml"],
                   help="configs to measure; --serve takes the first one's sizes (default %(default)s)")
    p.add_argument("--steps", type=int, default=30, help="timed training steps per config (default %(default)s)")
    p.add_argument("--precisions", nargs="+", choices=["auto", "fp32", "bf16"],
                   help="training-step precisions to measure, each a row (default: fp32 and bf16, or the "
                        "precision= setting given)")
    p.add_argument("--batch-sizes", type=int, nargs="+",
                   help="a sweep of batch sizes, each a row (default: each config's own)")
    p.add_argument("--out", help="where the JSON report goes; the runs' folders are made beside it "
                                 "(default runs/bench/bench.json, with --serve runs/bench/serve.json)")
    p.add_argument("--serve", action="store_true", help="benchmark `vhred serve` instead of training (default: off)")
    p.add_argument("--checkpoint", help="--serve: the model to serve (default: an untrained model of the first config)")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32],
                   help="--serve: numbers of concurrent clients (default %(default)s)")
    p.add_argument("--seconds", type=float, default=20.0, help="--serve: seconds of load per measurement (default %(default)s)")
    p.add_argument("--max-batch", type=int, nargs="+", default=[32, 1],
                   help="--serve: the server's --max-batch settings to compare, 1 for no batching (default %(default)s)")
    p.add_argument("--wait-ms", type=float, default=Limits.wait_ms,
                   help="--serve: the server's --wait-ms (default %(default)s)")
    p.add_argument("--rank", choices=RANKS,
                   help="--serve: the requests' ranking (default: the server's, DecodeOptions.rank)")
    p.add_argument("--method", choices=["beam", "greedy", "sample"],
                   help="--serve: the requests' decoding (default: the server's, DecodeOptions.method)")
    p.add_argument("--one", help=argparse.SUPPRESS)   # child process: one config
    p.add_argument("overrides", nargs="*", help="key=value applied to every config (default: none)")
    args = p.parse_args(argv)
    # `--configs a.yaml key=value`: the list takes the setting too; it is a setting
    args.overrides += [c for c in args.configs if "=" in c]
    args.configs = [c for c in args.configs if "=" not in c] or p.get_default("configs")
    _settings_or_sweeps(args)
    if not args.serve:   # a flag only --serve reads would otherwise be dropped without a word
        given = [f"--{a.dest.replace('_', '-')}" for a in p._actions
                 if a.help and a.help.startswith("--serve:") and getattr(args, a.dest) != a.default]
        if given:
            raise InputError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} only with --serve")
    if not math.isfinite(args.wait_ms):
        raise InputError(f"--wait-ms must be a number of milliseconds, got {args.wait_ms}")
    sizes = [b for b in args.batch_sizes or [] if b is not None]   # [None]: one row at the batch_size= given
    if sizes and min(sizes) < 1:
        raise InputError("--batch-sizes must be at least 1")
    if args.steps < 1 or args.seconds <= 0 or min(args.clients) < 1 or min(args.max_batch) < 1 or args.wait_ms < 0:
        raise InputError("--steps, --clients and --max-batch must be at least 1, --seconds positive, "
                         "--wait-ms not negative")
    # caps (docs/limits.md): a benchmark is minutes, a client a thread, a batch size a model's batch
    limits.count("--steps", args.steps, 1, 100_000)
    limits.number("--seconds", args.seconds, 0, 3600)
    for name, values, cap in (("--clients", args.clients, 1024), ("--max-batch", args.max_batch, 1024),
                              ("--batch-sizes", sizes or [1], 65_536)):
        for v in values:
            limits.count(name, v, 1, cap)
    args.out = args.out or ("runs/bench/serve.json" if args.serve else "runs/bench/bench.json")
    if os.path.isdir(args.out):   # found before the benchmark runs, not after
        raise InputError(f"--out {args.out} is a folder; give the path of a .json file")
    if args.configs != p.get_default("configs") and not all(args.configs):
        raise InputError("--configs takes config files (configs/*.yaml); an empty one names none")
    if args.serve and args.checkpoint and args.overrides:   # they size the untrained model served without one
        raise InputError(f"{' '.join(args.overrides)}: key=value settings make the untrained model --serve serves "
                         "without --checkpoint; a checkpoint has its own, leave them out")
    if not args.one and not (args.serve and args.checkpoint):   # a config or setting refused before any folder is made
        for config, extra in (sweep(args)[:1] if args.serve else sweep(args)):
            load(config, [*args.overrides, *extra])
    args.folder = folder = os.path.dirname(args.out) or "."   # the runs' folders go beside the report
    try:   # the report's folder now: a path that cannot be written would lose the figures at the end
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise InputError(f"--out {args.out}: its folder {folder} cannot be made ({e.strerror or e}); "
                         f"give another path") from None
    check_output(args.out)
    if os.path.exists(args.out) and not is_report(args.out):   # --out best.pt, --out the config measured
        raise InputError(f"--out {args.out} exists and is not a bench report: writing the report would lose it; "
                         "give another path")
    return args


def is_report(path: str) -> bool:
    """Whether path holds an earlier report of this command (a JSON object with "machine"), the
    only file --out may replace."""
    try:
        with open(path, "rb") as f:
            if f.read(1) != b"{":   # a checkpoint, a YAML config: not read whole
                return False
            f.seek(0)
            report = json.loads(f.read(MAX_REPORT_BYTES + 1))
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and "machine" in report


@command
def main(argv=None):
    args = parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one, args.steps, args.overrides, args.folder)))
        return
    if args.serve:
        return serve_main(args)
    rows = []
    for config, extra in sweep(args):
        r = subprocess.run([sys.executable, "-m", "vhred.bench", "--one", config, "--steps", str(args.steps),
                            "--out", args.out, *args.overrides, *extra], capture_output=True, text=True)
        if r.returncode != 0:   # the child's own last line, without its "error: "
            said = r.stderr.strip().splitlines()[-1].removeprefix("error: ") if r.stderr.strip() else r.returncode
            raise InputError(f"{' '.join([config, *extra])}: {said}")
        rows.append({**json.loads(r.stdout.strip().splitlines()[-1]), "overrides": " ".join(extra)})
    machine = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
               "torch": torch.__version__, "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    print(f"{'config':32} {'batch':>5} {'params':>7} {'prec':>4} {'tok/s':>8} {'step s':>7} {'pad mem':>7} "
          f"{'epoch s':>8} {'RSS MB':>7} {'chat ms':>8} {'GFLOP/s':>8} {'MFU':>6} {'GPU MB':>7} {'busy':>5} {'launch':>6}")
    for r in rows:
        gpu = (f"{r['gpu_peak_MB']:7.0f} {r['gpu_busy']:5.0%} {r['launches_per_step']:6.0f}" if "gpu_busy" in r
               else f"{'-':>7} {'-':>5} {'-':>6}")
        print(f"{r['config']:32} {r['batch_size']:5d} {r['params_M']:6.2f}M {r['precision']:>4} "
              f"{r['train_tokens_per_s']:8.0f} {r['step_s']:7.3f} {r['padding_fraction']:7.1%} {r['epoch_s']:8.0f} "
              f"{r['peak_rss_MB']:7.0f} {r['chat_ms']:8.1f} {r['train_flops_per_s'] / 1e9:8.1f} {r['mfu']:6.1%} {gpu}")
    with output_file(args.out) as f:   # whole or not at all; after the table, which a failed write does not lose
        json.dump({"machine": machine, "results": rows}, f, indent=1)
    print(f"machine: {machine}; precision=auto picks bf16 from batch {BF16_MIN_BATCH} on a bf16 GPU, "
          f"else fp32 (vhred/device.py); written to {args.out}")


def _settings_or_sweeps(args):
    """A precision= or batch_size= setting measures that one value; with its sweep flag too, which
    one to measure is unclear: refused. Without either, the sweep's default (fp32 and bf16)."""
    for key, flag, default in (("precision", "precisions", ["fp32", "bf16"]), ("batch_size", "batch_sizes", None)):
        if any(o.startswith(f"{key}=") for o in args.overrides):
            if getattr(args, flag):
                raise InputError(f"give --{flag.replace('_', '-')} or {key}=, not both")
            setattr(args, flag, [None])   # one row, with the setting as given
        elif getattr(args, flag) is None:
            setattr(args, flag, default)


def sweep(args) -> list[tuple[str, list[str]]]:
    """(config, extra overrides) for every config x precision x batch size asked for."""
    return [(config, ([f"precision={p}"] if p else []) + ([f"batch_size={b}"] if b else []))
            for config in args.configs for b in (args.batch_sizes or [None]) for p in args.precisions]


# --- serving ------------------------------------------------------------------------------------

SERVE_HISTORY = ["Hello, could you tell me the way to the station?", "Sure, it is two blocks down this street.",
                 "Thank you. How long does it take to walk there?"]


def untrained_checkpoint(config: str, overrides: list[str], folder: str) -> str:
    """A checkpoint of an untrained model with config's sizes and its data's tokenizer, in a run
    folder made in folder (the report's)."""
    from dataclasses import asdict
    from . import checkpoint
    from .dataset import prepare
    from .models import build
    cfg = load(config, [f"name=serve-{os.path.splitext(os.path.basename(config))[0]}", f"out_dir={folder}", *overrides])
    folder = prepare(cfg)   # the tokenizer: a cached one when the data was prepared before
    with open(os.path.join(folder, "tokenizer.model"), "rb") as f:
        tokenizer = f.read()
    with open(os.path.join(folder, "meta.json")) as f:
        vocab = json.load(f)["vocab_size"]
    torch.manual_seed(cfg.seed)
    model = build(cfg.arch, vocab)
    path = os.path.join(cfg.out_dir, cfg.name, "untrained.pt")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    checkpoint.save({"model": model.state_dict(), "config": asdict(cfg), "tokenizer": checkpoint.as_tensor(tokenizer),
                     "progress": {}}, path)
    return path


class Server:
    """`vhred serve` in its own process on a free port, for `with`; stopped on leaving."""

    def __init__(self, ckpt: str, max_batch: int, wait_ms: float):
        self.args = [sys.executable, "-m", "vhred.serve", "--checkpoint", ckpt, "--port", "0", "--quiet",
                     "--device", "cpu", "--max-batch", str(max_batch), "--wait-ms", str(wait_ms), "--timeout", "300"]

    def __enter__(self):
        self.proc = subprocess.Popen(self.args, stderr=subprocess.PIPE, text=True)
        try:   # a Ctrl-C while it loads must stop it too: __exit__ runs only once this returns
            line = self.proc.stderr.readline()   # "serving ... on cpu: http://127.0.0.1:PORT/ ..."
        except BaseException:
            self.proc.kill()
            raise
        if "http://" not in line:   # its own one-line error (a wrong --checkpoint), said as ours
            self.proc.kill()
            said = line.strip().removeprefix("error: ") or f"exit code {self.proc.wait()}"
            raise InputError(f"vhred serve did not start: {said}")
        self.port = int(line.split("http://")[1].split("/")[0].rsplit(":", 1)[1])
        # the server's later messages (tracebacks) pass through, and never fill the pipe; not its
        # "interrupted" as it stops, which would land inside the table
        threading.Thread(target=lambda: [sys.stderr.write(x) for x in self.proc.stderr if x != "interrupted\n"],
                         daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except BaseException:   # a second Ctrl-C, or a server that does not stop: never left running
            self.proc.kill()
            raise


def post_json(conn: http.client.HTTPConnection, path: str, body: dict) -> dict:
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = json.loads(resp.read())
    if 400 <= resp.status < 500:   # what the flags asked for is refused (--rank critic without a critic)
        raise InputError(f"the server refused the benchmark's {path}: {data.get('error', data)}")
    if resp.status != 200:
        raise RuntimeError(f"{path}: {resp.status} {data}")
    return data


def drive(port: int, clients: int, seconds: float, body: dict) -> dict:
    """`clients` threads, each sending `body` as soon as its previous request is answered, for
    `seconds`: requests/s, p50 and p95 latency."""
    latencies, errors, lock, stopped = [], [], threading.Lock(), threading.Event()
    stop_at = time.perf_counter() + seconds

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        while time.perf_counter() < stop_at and not stopped.is_set():
            t0 = time.perf_counter()
            try:
                post_json(conn, "/respond", body)
            except (OSError, RuntimeError, ValueError, http.client.HTTPException) as e:   # a server stopped mid-answer too
                errors.append(str(e))
                conn.close()
                continue
            with lock:
                latencies.append(time.perf_counter() - t0)

    # daemon, and told to stop when the wait is cut short (Ctrl-C, SIGTERM): otherwise Python's
    # exit waits for them, and they would load a stopped server until `seconds` ran out
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    t0 = time.perf_counter()
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        stopped.set()
    wall = time.perf_counter() - t0
    if not latencies:
        raise InputError(f"no request was answered in {seconds:g} s ({len(errors)} failed"
                         f"{': ' + errors[0] if errors else ''}); give more --seconds")
    return {"clients": clients, "requests": len(latencies), "errors": len(errors), "requests_per_s": len(latencies) / wall,
            "p50_ms": 1000 * statistics.median(latencies), "p95_ms": 1000 * p95(latencies)}


def p95(values: list[float]) -> float:
    """The 95th percentile, interpolated between observations: below 20 of them the default
    (exclusive) method of statistics.quantiles extrapolates past the largest."""
    return statistics.quantiles(values, n=20, method="inclusive")[18] if len(values) > 1 else values[0]


def serve_bench(ckpt: str, clients: list[int], seconds: float, rank: str | None, wait_ms: float,
                batchings: list[int], method: str | None = None, header: str = "") -> list[dict]:
    """A row per max batch x clients, each printed as it comes; header first, once the first
    server answers (a server that does not start is one line, not a table's head)."""
    body = {"history": SERVE_HISTORY, "n": 5, **({"rank": rank} if rank else {}),
            **({"method": method} if method else {})}
    rows = []
    for max_batch in batchings:
        with Server(ckpt, max_batch, wait_ms) as server:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
            for _ in range(3):   # warm-up: allocators, kernels
                post_json(conn, "/respond", body)
            conn.close()
            if header:
                print(header, flush=True)
                header = ""
            for c in clients:
                before = _served(server.port)
                row = {"max_batch": max_batch, **drive(server.port, c, seconds, body)}
                after = _served(server.port)
                row["mean_batch"] = (after["requests"] - before["requests"]) / max(after["batches"] - before["batches"], 1)
                print(_serve_row(row), flush=True)
                rows.append(row)
    return rows


def _served(port: int) -> dict:
    """The server's count of requests and batches so far (a new connection: an idle one is closed)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", "/health")
    served = json.loads(conn.getresponse().read())["served"]
    conn.close()
    return served


def _serve_row(r: dict) -> str:
    return (f"| {'yes' if r['max_batch'] > 1 else 'no':8} | {r['clients']:7} | {r['requests_per_s']:10.2f} | "
            f"{r['p50_ms']:7.0f} | {r['p95_ms']:7.0f} | {r['mean_batch']:10.1f} | {r['errors']:6} |")


def serve_main(args):
    ckpt = args.checkpoint or untrained_checkpoint(args.configs[0], args.overrides, args.folder)
    header = (f"serving {ckpt}; rank {args.rank or 'default'}, method {args.method or 'default'}; "
              f"{args.seconds:g} s per measurement, {torch.get_num_threads()} threads\n"
              "| batching | clients | requests/s | p50 ms | p95 ms | mean batch | errors |\n|---|---|---|---|---|---|---|")
    rows = serve_bench(ckpt, args.clients, args.seconds, args.rank, args.wait_ms, args.max_batch, args.method, header)
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__}
    with output_file(args.out) as f:
        json.dump({"machine": machine, "checkpoint": ckpt, "untrained": not args.checkpoint, "rank": args.rank,
                   "method": args.method, "wait_ms": args.wait_ms, "device": "cpu", "results": rows}, f, indent=1)
    for r in rows:
        base = next(b for b in rows if b["max_batch"] == r["max_batch"] and b["clients"] == min(args.clients))
        if r is not base:
            print(f"max batch {r['max_batch']}, {r['clients']} clients: "
                  f"{r['requests_per_s'] / base['requests_per_s']:.1f}x the {base['clients']}-client rate")
    print(f"machine: {machine}; written to {args.out}")


if __name__ == "__main__":
    main()
