"""Replay the failed cases of issue 21 (Reliability III) as a user would hit them: each command in
its own process, with its exit code, whether stderr holds a traceback, its peak memory (max RSS)
and its wall time; checkpoints that must not load; device files that must stay devices. The HTTP
cases run against a live `vhred serve` (eval/serve_compare.cases). Bounded: each case has a timeout.

    PYTHONPATH=. python -m eval.adversarial --checkpoint runs/x [--out adversarial.json]
"""
import json
import math
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time

import torch

from vhred.cli import command, Parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VHRED = [sys.executable, "-m", "vhred"]


def run(argv, timeout=120) -> dict:
    """One command in a child process (under /usr/bin/time for its peak memory): rc, whether
    stderr holds a traceback, max RSS in MB, wall seconds, stderr's last line."""
    t0 = time.monotonic()
    proc = subprocess.Popen(["/usr/bin/time", "-f", "MAXRSS_KB=%M", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"})
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    lines = err.decode("utf-8", "replace").strip().splitlines()
    rss = [int(x.split("=")[1]) for x in lines if x.startswith("MAXRSS_KB=")]
    lines = [x for x in lines if not x.startswith("MAXRSS_KB=") and not x.startswith("Command exited")]
    return {"rc": proc.returncode, "traceback": any("Traceback" in x for x in lines),
            "seconds": round(time.monotonic() - t0, 2), "peak_rss_mb": round(rss[0] / 1024, 1) if rss else None,
            "stderr": (lines or [""])[-1][:160]}


def forged(src: str, dest: str, change, fmt=None):
    """A copy of a checkpoint with a change, re-signed (a valid checksum), or saved as format 1."""
    from vhred import checkpoint
    state = checkpoint.load(src)
    state.pop("format")
    change(state)
    if fmt == 1:
        flat = {**state["config"], **state["config"].pop("arch")}
        state = {**{k: v for k, v in state.items() if k not in ("progress", "config")}, "config": flat,
                 **state.get("progress", {}), "format": 1}
        torch.save(state, dest)
    else:
        checkpoint.save(state, dest)
    return dest


def fill(value):
    return lambda s: [t.fill_(value) for t in s["model"].values() if t.is_floating_point()]


def build_cases(ckpt: str, tmp: str) -> list[tuple[str, str, list, str]]:
    """(group, name, argv, what must hold: "refused" | "ok" | "no-load")."""
    j = lambda *p: os.path.join(tmp, *p)   # noqa: E731
    with open(j("ctx.jsonl"), "w") as f:
        f.write('{"context": ["Hello, how are you?"]}\n')
    with open(j("surrogate.jsonl"), "w") as f:
        f.write('{"context": ["Hi \\ud800 there"]}\n')
    best = os.path.join(ckpt, "best.pt") if os.path.isdir(ckpt) else ckpt
    cp = {
        "format 1, weights 0.5": forged(best, j("f1-half.pt"), fill(0.5), fmt=1),
        "format 1, weights NaN": forged(best, j("f1-nan.pt"), fill(math.nan), fmt=1),
        "re-signed, max_utt_len=-3": forged(best, j("neg.pt"), lambda s: s["config"].__setitem__("max_utt_len", -3)),
        "re-signed, emb_dim=2^31-1": forged(best, j("huge.pt"), lambda s: s["config"]["arch"].__setitem__("emb_dim", 2 ** 31 - 1)),
        "re-signed, weights NaN": forged(best, j("nan.pt"), fill(math.nan)),
        "re-signed, step=-5 epoch=1e30 best=NaN": forged(best, j("progress.pt"), lambda s: s.__setitem__(
            "progress", {"step": -5, "epoch": 1e30, "best": math.nan})),
    }
    gen = lambda *a: [*VHRED, "generate", "--checkpoint", ckpt, "--input", j("ctx.jsonl"), "--output", j("out.jsonl"), *a]  # noqa: E731
    cases = [("1 checkpoints", name, [*VHRED, "generate", "--checkpoint", path, "--input", j("ctx.jsonl"),
                                      "--output", j("o.jsonl")], "no-load") for name, path in cp.items()]
    cases += [("1 checkpoints", "chat --json on a re-signed NaN checkpoint", [*VHRED, "chat", "--checkpoint", cp[
        "re-signed, weights NaN"], "--json"], "no-load")]
    cases += [("2 outputs", f"generate --output {dev}", gen()[:-2] + ["--output", dev], "refused")
              for dev in ("/dev/full", "/dev/null")]
    cases += [
        ("3 counts", "chat --method beam --beam 1000000", [*VHRED, "chat", "--checkpoint", ckpt, "--method", "beam", "--beam", "1000000"], "refused"),
        ("3 counts", "generate --num-samples 500000", gen("--num-samples", "500000"), "refused"),
        ("3 counts", "generate --num-samples 1000000", gen("--num-samples", "1000000"), "refused"),
        ("3 counts", "generate --max-len 1000000 --min-len 1000000", gen("--max-len", "1000000", "--min-len", "1000000"), "refused"),
        ("3 counts", "eval --num-samples 100000", [*VHRED, "eval", "--checkpoint", ckpt, "--num-samples", "100000"], "refused"),
        ("3 counts", "eval --iw-samples 1000000", [*VHRED, "eval", "--checkpoint", ckpt, "--iw-samples", "1000000"], "refused"),
        ("3 counts", "latent interpolate --steps 10^9", [*VHRED, "latent", "interpolate", "--checkpoint", ckpt, "--context", "hi", "--steps", str(10 ** 9)], "refused"),
        ("3 counts", "train vocab_size=2147483647", [*VHRED, "train", "--config", "configs/tiny.yaml", "vocab_size=2147483647", f"out_dir={tmp}"], "refused"),
        ("3 counts", "generate --input /dev/zero", gen()[:-4] + ["--input", "/dev/zero", "--output", j("z.jsonl")], "refused"),
        ("3 counts", "train on a JSONL with one 200 MB line", [*VHRED, "train", "--config", "configs/tiny.yaml",
                                                              f"data={j('long.jsonl')}", f"data_dir={tmp}", f"out_dir={tmp}"], "refused"),
        ("4 yaml", "billion laughs as a mapping key", [*VHRED, "train", "--config", j("laughs.yaml")], "refused"),
        ("4 yaml", "nested 100,000 deep", [*VHRED, "train", "--config", j("deep.yaml")], "refused"),
        ("7 smaller", "latent --max-len -5", [*VHRED, "latent", "interpolate", "--checkpoint", ckpt, "--context", "hi", "--max-len", "-5"], "refused"),
        ("7 smaller", "latent --max-len 0", [*VHRED, "latent", "interpolate", "--checkpoint", ckpt, "--context", "hi", "--max-len", "0"], "refused"),
        ("7 smaller", "latent --around-mean nan", [*VHRED, "latent", "interpolate", "--checkpoint", ckpt, "--context", "hi", "--around-mean", "nan"], "refused"),
        ("7 smaller", "latent --around-mean inf", [*VHRED, "latent", "interpolate", "--checkpoint", ckpt, "--context", "hi", "--around-mean", "inf"], "refused"),
        ("7 smaller", "plot --dialogues 0", [*VHRED, "latent", "plot", "--checkpoint", ckpt, "--dialogues", "0"], "refused"),
        ("7 smaller", "plot --dialogues -5", [*VHRED, "latent", "plot", "--checkpoint", ckpt, "--dialogues", "-5"], "refused"),
        ("7 smaller", "plot --out x.txt", [*VHRED, "latent", "plot", "--checkpoint", ckpt, "--out", j("x.txt")], "refused"),
        ("7 smaller", "plot on metrics.jsonl with 0xff and [1] lines", [*VHRED, "plot", j("run")], "ok"),
        ("7 smaller", "generate with a lone surrogate in a context", gen()[:-4] + ["--input", j("surrogate.jsonl"), "--output", j("s.jsonl")], "ok"),
        ("7 smaller", "not a checkpoint", [*VHRED, "generate", "--checkpoint", j("ctx.jsonl"), "--input", j("ctx.jsonl"), "--output", j("q.jsonl")], "refused"),
    ]
    with open(j("laughs.yaml"), "w") as f:
        f.write('a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
                + "".join(f"{c}: &{c} [{','.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefg", "bcdefgh"))
                + "? [" + ",".join(["*h"] * 9) + "]\n: 1\n")
    with open(j("deep.yaml"), "w") as f:
        f.write("[" * 100_000 + "]" * 100_000)
    with open(j("long.jsonl"), "wb") as f:
        f.write(b'{"dialog": ["' + b"x" * (200 << 20) + b'"]}\n')
    run_dir = j("run")
    shutil.copytree(ckpt if os.path.isdir(ckpt) else os.path.dirname(ckpt), run_dir)
    with open(os.path.join(run_dir, "metrics.jsonl"), "ab") as f:
        f.write(b"\xff\xfe{\n[1]\n")
    return cases


def http_cases(ckpt: str) -> dict:
    import vhred
    from eval.serve_compare import Stdlib, cases
    from vhred.serve import Limits
    bot = vhred.load(ckpt, device="cpu")
    server = Stdlib(bot, Limits())
    try:
        return cases(server.port, bot.config.arch.z_dim)
    finally:
        server.stop()


@command
def main(argv=None):
    p = Parser(prog="python -m eval.adversarial", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a run folder of a trained model (the tiny config will do)")
    p.add_argument("--out", default="adversarial.json")
    p.add_argument("--no-http", action="store_true")
    args = p.parse_args(argv)
    ckpt = os.path.abspath(args.checkpoint)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        devices = {d: os.stat(d).st_mode for d in ("/dev/full", "/dev/null")}
        for group, name, argv, want in build_cases(ckpt, tmp):
            r = run(argv)
            r.update(group=group, case=name, want=want)
            r["held"] = (not r["traceback"] and (r["rc"] == 0 if want == "ok" else r["rc"] == 2))
            results.append(r)
            print(f"{'held' if r['held'] else 'FAILED':6} {r['rc']!s:>4} {r['seconds']:6.2f}s  {group}: {name}: {r['stderr']}",
                  flush=True)
        replaced = [d for d, mode in devices.items() if not stat.S_ISCHR(os.stat(d).st_mode) or os.stat(d).st_mode != mode]
        pipe = subprocess.Popen([*VHRED, "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        pipe.stdout.close()
        pipe_err = pipe.stderr.read().decode()
        pipe.wait()
    base = run([sys.executable, "-c", "import torch"])
    summary = {
        "cases": len(results), "held": sum(r["held"] for r in results),
        "tracebacks": sum(r["traceback"] for r in results) + ("Traceback" in pipe_err),
        "silent_loads": sum(r["rc"] == 0 for r in results if r["want"] == "no-load"),
        "replaced_non_regular_files": replaced,
        "max_refusal_seconds": max(r["seconds"] for r in results if r["want"] != "ok"),
        "python_import_torch_seconds": base["seconds"],
        "max_peak_rss_mb_refused": max(r["peak_rss_mb"] or 0 for r in results if r["want"] != "ok"),
        "python_import_torch_rss_mb": base["peak_rss_mb"],
        "help_into_closed_pipe": "traceback" if "Traceback" in pipe_err else "quiet",
    }
    report = {"summary": summary, "cases": results}
    if not args.no_http:
        report["http"] = http_cases(ckpt)
    print(json.dumps(report["summary"], indent=1))
    if "http" in report:
        print(json.dumps(report["http"], indent=1))
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
