"""What only a GPU can show, checked in a few minutes: python -m vhred.gpu_check (make gpu-check)

1. The GRUs under bf16: their outputs' dtype and the kernels that ran them (cuDNN's own dtype
   policy would run them in fp16 under plain autocast; vhred casts them explicitly).
2. A resumed run equals an uninterrupted one on the device: the CPU and CUDA generator states
   travel with last.pt. Kernels with atomic adds make two identical runs differ in the last bits,
   so the resumed run's distance is compared with that of a plain rerun.
3. With two or more GPUs, a two-process torchrun run with early stopping ends by itself.
4. bench at fp32 and bf16 on the CPU and reference configs.

Writes runs/gpu-check/gpu-check.json and prints a summary; on a machine without a GPU it runs
the same checks on the CPU (--device cpu), which is how the tests keep it working.
"""
import json
import os
import subprocess
import sys

import torch

from . import checkpoint
from .cli import command, Parser, program
from .config import ModelConfig, load
from .device import pick_device
from .files import output_file
from .models import build

TINY = "configs/tiny.yaml"   # found where vhred runs from (config._find), the checkout or the installed package


def gru_kernels(device: torch.device) -> dict:
    """Output dtype of each GRU and the names of the RNN kernels, one bf16 training forward and backward."""
    from torch.profiler import ProfilerActivity, profile
    arch = ModelConfig() if device.type == "cuda" else ModelConfig(  # the reference sizes; tiny on a CPU
        emb_dim=16, utt_hidden=16, ctx_hidden=16, dec_hidden=16, z_dim=4, latent_hidden=16)
    model = build(arch, 5000).to(device)
    seen = {}
    for name in ("utt_rnn", "ctx_rnn", "dec_rnn"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: seen.update({name: str(o[1].dtype)}))
    U, L = 64, 20
    tokens = torch.randint(4, 5000, (U, L), device=device)
    lens, turns = torch.full((U,), L), torch.full((8,), U // 8)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = model(tokens, lens, turns)
        (out["nll"].sum() + out["kl"].sum()).backward()
    names = sorted({e.key for e in prof.key_averages() if any(w in e.key.lower() for w in ("rnn", "gru"))})
    return {"output_dtypes": seen, "rnn_kernels": names[:40]}


def train_steps(out: str, name: str, device: str, data: list, steps: int):
    from .train import train
    cfg = load(TINY, [*data, f"out_dir={out}", f"name={name}", f"device={device}", f"max_steps={steps}",
                      "save_every=1000", "epochs=100"])
    train(cfg, log=lambda *_: None)


def max_difference(out: str, a: str, b: str) -> float:
    wa, wb = (checkpoint.load(os.path.join(out, n, "last.pt"))["model"] for n in (a, b))
    return max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa)


def resume_check(device: str, out: str, data: list, steps: int = 8) -> dict:
    """Weights after `steps` steps: run twice straight through, and once stopped half-way and resumed."""
    for name in ("straight", "again"):
        train_steps(out, name, device, data, steps)
    train_steps(out, "resumed", device, data, steps // 2)
    train_steps(out, "resumed", device, data, steps)
    rerun, resumed = max_difference(out, "straight", "again"), max_difference(out, "straight", "resumed")
    return {"rerun_max_abs_diff": rerun, "resumed_max_abs_diff": resumed, "ok": resumed <= max(rerun, 0.0) * 10}


def two_processes(out: str, data: list) -> dict:
    if torch.cuda.device_count() < 2:
        return {"skipped": "fewer than two GPUs"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "vhred.train",
           "--config", TINY, *data, f"out_dir={out}", "name=two", "epochs=6", "patience=1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return {"returncode": r.returncode, "last_line": (r.stdout.strip().splitlines() or [""])[-1]}


def bench(out: str) -> dict:
    cmd = [sys.executable, "-m", "vhred.bench", "--configs", "configs/dailydialog-cpu.yaml", "configs/dailydialog.yaml",
           "--precisions", "fp32", "bf16", "--steps", "20", "--out", os.path.join(out, "bench.json")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    return {"returncode": r.returncode, "table": r.stdout.strip().splitlines()}


@command
def main(argv=None):
    p = Parser(prog=program("python -m vhred.gpu_check"),
               description="Check the GPU path: GRU dtype, resume on the device, torchrun, bench.")
    p.add_argument("--device", default="auto", help="auto, cuda or cpu (default %(default)s)")
    p.add_argument("--out", default="runs/gpu-check", help="folder for the runs and the report (default %(default)s)")
    p.add_argument("--no-bench", action="store_true", help="leave out the bench rows (default: run them)")
    p.add_argument("overrides", nargs="*", help="key=value for the tiny runs, e.g. data_dir=... (default: none)")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "gru": gru_kernels(device),
              "resume": resume_check(device.type, args.out, args.overrides),
              "two_processes": two_processes(args.out, args.overrides) if device.type == "cuda" else {"skipped": "cpu"}}
    if not args.no_bench:
        report["bench"] = bench(args.out)
    os.makedirs(args.out, exist_ok=True)
    with output_file(os.path.join(args.out, "gpu-check.json")) as f:
        json.dump(report, f, indent=1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
