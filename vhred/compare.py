"""The model family compared on equal terms: python -m vhred.compare (vhred compare, make compare)

Trains every family of vhred/models/ on one config's sizes for the same number of optimiser
steps (several side by side, one CPU thread each), then evaluates each best.pt on the test
split the same way:

  DialogWAE's protocol  BLEU recall / precision / F1, intra/inter-dist-1/2, length
                        (vhred eval --protocol dialogwae: 10 greedy responses per prior z)
  likelihood            the test NLL bound per token (importance-weighted, K samples; for
                        DialogWAE the prior-proposal bound, see vhred/models/dialogwae.py), the
                        negative ELBO, KL per utterance and active units
  ranking               R@1 and MRR of the true response among 10, by PMI and by likelihood

with a last row that has no model: the training split's replies to the most similar turns
(vhred nearest); and BLEU F1 on the test targets the training split does not hold. It writes
one table, Markdown and JSON, to docs/ (the command line that made it beside it).
A run folder that is already trained to the step budget is evaluated again, not retrained.
`--reference RUN` adds a row for a finished run (the reference config: `make train CONFIG=configs/dailydialog.yaml`).
"""
import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

from . import config
from .cli import command, Parser, program
from .errors import InputError
from .files import json_safe, output_file

# row name: the settings that make it (one family each; GMP is DialogWAE with a mixture prior)
ROWS = {
    "hred": ["model=hred"],
    "vhred": ["model=vhred"],
    "cvae": ["model=cvae"],
    "vhcr": ["model=vhcr"],
    "dialogwae": ["model=dialogwae", "gmp_components=1"],
    "dialogwae-gmp": ["model=dialogwae", "gmp_components=3"],
}
ROW_KEYS = {s.split("=", 1)[0] for settings in ROWS.values() for s in settings}   # model, gmp_components
# keys the command sets for every row from its own flags (train_row): given as key=value they
# would win, and the table would evaluate the folder the command names, not the one trained
COMMAND_KEYS = {"name": "--out-dir (the rows train into <out-dir>/compare-<row>)", "out_dir": "--out-dir",
                "max_steps": "--steps", "device": "--device"}
COLUMNS = [("steps", "steps"), ("bleu-recall", "BLEU R"), ("bleu-precision", "BLEU P"), ("bleu-f1", "BLEU F1"),
           ("unseen-bleu-f1", "F1 unseen"),
           ("intra-dist-1", "intra-1"), ("intra-dist-2", "intra-2"), ("inter-dist-1", "inter-1"),
           ("inter-dist-2", "inter-2"), ("length", "len"), ("pmi_r1", "R@1 pmi"), ("pmi_mrr", "MRR pmi"),
           ("ll_r1", "R@1 ll"), ("ll_mrr", "MRR ll"), ("nll_bound", "test NLL bound/token"),
           ("elbo", "-ELBO/token"), ("kl_per_utt", "KL/utt"), ("active_units", "active units"),
           ("train_minutes", "train min")]


def check_table(table: str) -> None:
    """Refuse a --table the table could not be written to: empty, a folder, under a file."""
    if not table.strip() or table.endswith(("/", os.sep)) or os.path.isdir(table):
        raise InputError(f"--table {table!r} is not a table's path; give one without .md/.json "
                         "(e.g. docs/models-compare)")
    folder = os.path.dirname(table)
    if folder and os.path.exists(folder) and not os.path.isdir(folder):
        raise InputError(f"--table {table}: {folder} is a file, not a folder")
    for path in (table + ".md", table + ".json"):
        if os.path.exists(path) and not os.path.isfile(path):
            raise InputError(f"--table {table}: {path} exists and is not a regular file")


def parse_args(argv):
    about = __doc__.split("\n", 2)[2]   # the module's docstring less its title line
    p = Parser(prog=program("python -m vhred.compare"), description=about, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/dailydialog-cpu.yaml", help="sizes and recipe (default %(default)s)")
    p.add_argument("--steps", type=int, default=1000, help="optimiser steps per family, the same for all (default %(default)s)")
    p.add_argument("--measure", type=int, default=0,
                   help="only time N training steps of each row, one thread, and print seconds per step (to choose --steps; default 0: train)")
    p.add_argument("--rows", default=",".join(ROWS), help=f"rows to train, of {', '.join(ROWS)} (default: all)")
    p.add_argument("--jobs", type=int, default=2, help="trainings side by side, one thread each (default %(default)s)")
    p.add_argument("--out-dir", default="runs/compare", help="run folders (default %(default)s)")
    p.add_argument("--max-contexts", type=int, default=0, help="evaluate on the first N test contexts, 0 for all (default %(default)s)")
    p.add_argument("--rank-contexts", type=int, default=0, help="rank the first N test contexts, 0 for all (default %(default)s)")
    p.add_argument("--iw-samples", type=int, default=10, help="K of the test bound and of likelihood ranking (default %(default)s)")
    p.add_argument("--reference", help="a finished run folder to add as a row of its own (default: none)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where the rows are trained and evaluated: auto (a GPU when there is one), cpu or cuda (default %(default)s)")
    p.add_argument("--table", default="docs/models-compare", help="the table's path without .md/.json, from the folder the command runs in "
                        "(default %(default)s: the checkout's docs page when run from its top)")
    p.add_argument("overrides", nargs="*", help="key=value settings for every row that reads them (e.g. data_dir=...; "
                                                "critic_steps=5 goes to the DialogWAE rows only)")
    args = p.parse_args(argv)
    rows = args.rows.split(",")
    if unknown := [r for r in rows if r not in ROWS]:
        raise InputError(f"unknown row(s) {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    if twice := sorted({r for r in rows if rows.count(r) > 1}):   # both would train into one run folder
        raise InputError(f"--rows names {', '.join(twice)} more than once; give each row once")
    if (args.steps < 1 or args.jobs < 1 or args.max_contexts < 0 or args.rank_contexts < 0 or args.iw_samples < 1
            or args.measure < 0):
        raise InputError("--steps, --jobs and --iw-samples must be positive, --max-contexts, --rank-contexts and "
                         "--measure not negative")
    given = {_key(o) for o in args.overrides}
    for key in sorted(ROW_KEYS & given):   # given to all, a row named vhred would train another family, dialogwae GMP
        raise InputError(f"{key} is set by the rows themselves (--rows picks them): leave {key}= out")
    for key in [k for k in COMMAND_KEYS if k in given]:
        raise InputError(f"{key}= is set by compare for every row; use {COMMAND_KEYS[key]} instead")
    _check_file_settings(args.config, rows)
    check_table(args.table)   # before an hour of training, not after it
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        raise InputError(f"--out-dir {args.out_dir} is a file; give a folder for the rows' runs")
    if args.reference is not None and not args.reference.strip():
        raise InputError("--reference is empty; give a finished run folder, or leave the flag out")
    if args.reference is not None and not os.path.isdir(args.reference):
        raise InputError(f"--reference {args.reference}: no such run folder")
    if args.reference is not None and not os.path.isfile(os.path.join(args.reference, "best.pt")):
        raise InputError(f"--reference {args.reference} holds no best.pt: give a finished run folder")
    for row in rows:   # a config or override a row's training would refuse: said now, before any row starts
        config.load(args.config, [*ROWS[row], f"max_steps={args.steps}", *row_overrides(args.overrides, row)])
    for row in rows:   # a folder trained further would be scored at its own steps, not the table's
        run_dir = os.path.join(args.out_dir, f"compare-{row}")
        if (step := _steps_logged(run_dir)) > args.steps:
            raise InputError(f"{run_dir} is trained to step {step}, past --steps {args.steps}: give another "
                             f"--out-dir, or --steps {step}")
    args.rows = rows
    return args


def _last_error(log: str) -> str:
    """The last "error: ..." line a command wrote to its log, without the prefix; "" if none."""
    try:
        with open(log, encoding="utf-8", errors="replace") as f:
            lines = [line.strip() for line in f if line.startswith("error: ")]
    except OSError:
        return ""
    return lines[-1].removeprefix("error: ") if lines else ""


_CHILDREN, _LOCK = set(), threading.Lock()   # the commands the rows' threads are running
# set, under _LOCK, once _in_parallel stops its rows: a row whose thread took it from the queue
# just before (the thread of the row that failed, say) starts no command after it
_STOPPING = threading.Event()


class _NotStarted(Exception):
    """A row's command not started because the rows are stopping."""


def _in_parallel(jobs: int, fn, items: list) -> list:
    """fn over items, `jobs` at a time in threads. A stop (Ctrl-C, SIGTERM: raised in the main
    thread alone) or a row's failure stops the commands the others run, each as SIGTERM stops it
    (a training saves last.pt first, and the next compare goes on from there); rows not started
    never start."""
    pool = ThreadPoolExecutor(jobs)
    _STOPPING.clear()
    try:
        futures = [pool.submit(fn, item) for item in items]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)   # a later row's failure is seen at once
        for f in futures:
            if f in done and f.exception():
                raise f.exception()
        return [f.result() for f in futures]
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        with _LOCK:
            _STOPPING.set()
            running = list(_CHILDREN)
        for child in running:
            child.send_signal(signal.SIGTERM)
        for child in running:
            child.wait()
        raise
    finally:
        pool.shutdown(wait=True)


def _python(module: str, *argv: str, log: str) -> float:
    """Run `python -m module argv` with one thread, its output to `log`; seconds it took."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t0 = time.time()
    if _STOPPING.is_set():   # not even its log
        raise _NotStarted
    with open(log, "a") as f:
        with _LOCK:   # started and listed together, or not at all once the rows stop
            if _STOPPING.is_set():
                raise _NotStarted
            r = subprocess.Popen([sys.executable, "-m", module, *argv], stdout=f, stderr=subprocess.STDOUT, env=env)
            _CHILDREN.add(r)
        try:
            r.wait()
        finally:
            with _LOCK:
                _CHILDREN.discard(r)
    if r.returncode != 0:   # with its own last error line: the file a full disk could not take, say
        said = _last_error(log)
        raise InputError(f"python -m {module} {' '.join(argv)} failed (exit {r.returncode})"
                         f"{': ' + said if said else ''}; see {log}")
    return time.time() - t0


def _check_file_settings(path: str, rows: list[str]) -> None:
    """A config file holding a key only some families read (critic_steps: 5 of a DialogWAE
    config) would be refused by a row that does not read it, since every row trains from the file
    (and the nearest row reads it as its own model): said so, with what to do, before any row starts."""
    from .models import readers
    if not path.strip():   # config.load says what is wrong with an empty --config
        return
    settings = config.file_settings(path)
    models = {r: _row_model(r) for r in rows} | {"nearest": settings.get("model", config.ModelConfig.model)}
    for key, value in sorted(settings.items()):
        families = readers(key)
        misfits = [r for r, m in models.items() if m not in families]
        if not families or value == getattr(config.ModelConfig, key) or not misfits:
            continue
        if key in ROW_KEYS:   # the DialogWAE rows' own value wins over the file's: it does nothing there
            raise InputError(f"{path} sets {key}, which the rows set themselves (--rows picks them): remove it from the file")
        raise InputError(f"{path} sets {key}, which the {misfits[0]} row does not read, and every row trains from the "
                         f"file: remove it from the file and give {key}=... on the command line (each row gets what it reads)")


def _row_model(row: str | None) -> str | None:
    """The family a row trains (None: the config's own, as the nearest row reads it)."""
    return next((s.split("=", 1)[1] for s in ROWS.get(row, []) if s.startswith("model=")), None)


def row_overrides(overrides: list[str], row: str | None) -> list[str]:
    """The key=value settings given for every row that this row's family reads: one family's own
    setting (critic_steps=5 for DialogWAE, bow_weight=1 for the Gaussian ones) is left out of the
    others' runs, which would refuse it."""
    from .models import readers
    model = _row_model(row)

    def read(key: str) -> bool:
        families = readers(key)
        return not families or model in families
    return [o for o in overrides if read(_key(o))]


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("-").removeprefix("arch.")


def train_row(args, row: str) -> dict:
    """Train one row to the step budget (resuming a folder that has part of it). A folder already
    at the budget is not trained again: its minutes are those its metrics.jsonl recorded then."""
    name = f"compare-{row}"
    run_dir = os.path.join(args.out_dir, name)
    os.makedirs(args.out_dir, exist_ok=True)
    earlier = recorded_minutes(run_dir, args.steps)
    _python("vhred.train", "--config", args.config, *ROWS[row], f"max_steps={args.steps}",
            f"name={name}", f"out_dir={args.out_dir}", f"device={args.device}",
            *row_overrides(args.overrides, row), log=os.path.join(args.out_dir, f"{name}.log"))
    # the run's own clock: every process that trained it, a resumed one's included
    return {"row": row, "dir": run_dir, "train_minutes": _minutes_logged(run_dir),
            "trained_earlier": earlier is not None}


def recorded_minutes(run_dir: str, steps: int) -> float | None:
    """The training minutes of a run folder whose validation at `steps` is recorded (its wall_s:
    the seconds since the run started, resumes included), or None when it has not got that far."""
    done = [r for r in _records(run_dir) if r.get("split") == "val" and r.get("step") == steps]
    return done[0]["wall_s"] / 60 if done else None


def _records(run_dir: str) -> list[dict]:
    """The rows of a run folder's metrics.jsonl; none when it has none (a line a kill cut short is skipped)."""
    try:
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            lines = f.readlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return [r for r in rows if isinstance(r, dict)]


def _minutes_logged(run_dir: str) -> float | None:
    """The wall_s of the run's last validation, in minutes: where it ended, at --steps or earlier
    (epochs, patience)."""
    vals = [r for r in _records(run_dir) if r.get("split") == "val" and isinstance(r.get("wall_s"), (int, float))]
    return vals[-1]["wall_s"] / 60 if vals else None


def _steps_logged(run_dir: str) -> int:
    """The last step a run folder's metrics.jsonl logged; 0 for none."""
    return max((r["step"] for r in _records(run_dir) if isinstance(r.get("step"), int)), default=0)


def evaluate_row(args, row: str, run_dir: str) -> dict:
    """The test-split metrics of a run folder's best.pt, read back from the files eval and rank write."""
    log = os.path.join(run_dir, "compare-eval.log")
    evaluate = ["--checkpoint", os.path.join(run_dir, "best.pt"), "--protocol", "dialogwae", "--tag", "compare",
                "--iw-samples", str(args.iw_samples), "--device", args.device]
    if args.max_contexts:
        evaluate += ["--max-contexts", str(args.max_contexts)]
    _python("vhred.evaluate", *evaluate, log=log)
    rank = ["--checkpoint", os.path.join(run_dir, "best.pt"), "--iw-samples", str(args.iw_samples),
            "--device", args.device, "--tag", "compare"]
    if args.rank_contexts:
        rank += ["--max-contexts", str(args.rank_contexts)]
    _python("vhred.rank", *rank, log=log)
    with open(os.path.join(run_dir, "results-dialogwae-test-compare.json")) as f:
        ev = json.load(f)
    with open(os.path.join(run_dir, "rank-test-compare.json")) as f:
        rk = json.load(f)
    m = ev["metrics"]
    out = {key: m[key] for key in ("bleu-recall", "bleu-precision", "bleu-f1", "intra-dist-1", "intra-dist-2",
                                   "inter-dist-1", "inter-dist-2", "length", "kl_per_utt", "active_units")}
    out.update(nll_bound=m[f"iw{args.iw_samples}_nll_per_token"], elbo=m["elbo_nll_per_token"],
               contexts=m["contexts"], rank_contexts=rk["contexts"], **{"unseen-bleu-f1": m.get("unseen-bleu-f1")})
    for kind in ("pmi", "ll"):
        out[f"{kind}_r1"], out[f"{kind}_mrr"] = rk["metrics"][kind]["recall@1"], rk["metrics"][kind]["mrr"]
    with open(os.path.join(run_dir, "config.json")) as f:
        cfg = json.load(f)
    out["model"], out["z_dim"] = cfg["arch"]["model"], cfg["arch"]["z_dim"]
    from .models import FAMILIES
    family = FAMILIES[out["model"]]   # a figure the family has not got is "–" in the table, not 0.000
    if not family.latent:   # (a KL it has not got, vhred eval already leaves out)
        out["active_units"] = None
    progress = _last_step(run_dir)
    out["steps"] = progress
    return {"row": row, **out}


def nearest_row(args) -> dict:
    """The row with no model (vhred/nearest.py): what recalling the training split's replies scores."""
    from .evaluate import report_name
    out = os.path.join(args.out_dir, "nearest")
    os.makedirs(out, exist_ok=True)
    extra = ["--max-contexts", str(args.max_contexts)] if args.max_contexts else []
    _python("vhred.nearest", "--config", args.config, "--out", out, *extra, *row_overrides(args.overrides, None),
            log=os.path.join(args.out_dir, "nearest.log"))
    with open(os.path.join(out, f"results-{report_name('dialogwae', 'test', '', args.max_contexts)}.json")) as f:
        m = json.load(f)["metrics"]
    keys = ("bleu-recall", "bleu-precision", "bleu-f1", "unseen-bleu-f1", "intra-dist-1", "intra-dist-2",
            "inter-dist-1", "inter-dist-2", "length", "contexts")
    return {"row": "nearest (no model)", **{k: m.get(k) for k in keys}}


def _last_step(run_dir: str) -> int:
    """The step of the run's last validation (metrics.jsonl)."""
    step = 0
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("split") == "val":
                step = rec["step"]
    return step


def markdown(rows: list[dict], header: dict) -> str:
    cols = [(k, title) for k, title in COLUMNS if any(k in r for r in rows)]
    lines = ["# The model family for the same training steps", "",
             f"Made {header['date']} by `{header['command']}` on {header['machine']}; "
             f"{rows[0].get('contexts', '?')} test contexts (DialogWAE's protocol), "
             f"{rows[0].get('rank_contexts', '?')} ranked; test NLL bound with K = {header['iw_samples']}."
             + (f" Trained by an earlier run of the command and evaluated again: {', '.join(header['trained_earlier'])}"
                " (their train minutes are those their metrics.jsonl recorded)." if header.get("trained_earlier") else ""), "",
             "| row | " + " | ".join(t for _, t in cols) + " |", "|---|" + "---|" * len(cols)]
    for r in rows:
        cells = [_cell(r.get(k)) for k, _ in cols]
        lines.append(f"| {r['row']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(v) -> str:
    if v is None:
        return "–"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def machine(device: str = "cpu") -> str:
    import torch
    gpu = f"{torch.cuda.get_device_name()} GPU, " if device != "cpu" and torch.cuda.is_available() else ""
    return f"{gpu}{os.cpu_count()}-core {platform.machine()} CPU, torch {torch.__version__}"


def measure(args) -> dict:
    """Seconds per optimiser step of each row on one thread (after 2 warm-up steps), in this process."""
    import torch
    from .train import Run
    torch.set_num_threads(1)
    out = {}
    for row in args.rows:
        cfg = config.load(args.config, [*ROWS[row], f"name=measure-{row}", f"out_dir={args.out_dir}", f"device={args.device}",
                                 *row_overrides(args.overrides, row)])
        run = Run(cfg, log=lambda *_: None)
        batches = run.train_data.batches(cfg.batch_size, cfg.seed, 0)[:args.measure + 2]
        for idx in batches[:2]:
            run.train_step(idx)
        t0 = time.perf_counter()
        for idx in batches[2:]:
            run.train_step(idx)
        out[row] = (time.perf_counter() - t0) / max(len(batches) - 2, 1)
        run.close()
        print(f"{row}: {out[row]:.3f} s/step", flush=True)
    return out


@command
def main(argv=None):
    args = parse_args(argv)
    if args.measure:
        measure(args)
        return
    t0 = time.time()
    trained = _in_parallel(args.jobs, lambda row: train_row(args, row), args.rows)   # one-thread processes
    runs = [(t["row"], t["dir"], t["train_minutes"]) for t in trained]
    earlier = [t["row"] for t in trained if t["trained_earlier"]]
    if args.reference:
        runs.append(("reference", args.reference.rstrip("/"), None))
    rows = _in_parallel(args.jobs, lambda r: {**evaluate_row(args, r[0], r[1]), "train_minutes": r[2]}, runs)
    rows.append(nearest_row(args))
    header = {"date": time.strftime("%Y-%m-%d", time.gmtime()), "machine": machine(args.device),
              "command": " ".join(["vhred compare", *(argv if argv is not None else sys.argv[1:])]),
              "iw_samples": args.iw_samples, "minutes": round((time.time() - t0) / 60, 1), "trained_earlier": earlier}
    os.makedirs(os.path.dirname(args.table) or ".", exist_ok=True)
    with output_file(args.table + ".json") as f:   # each whole or not at all
        json.dump(json_safe({**header, "rows": rows}), f, indent=1, allow_nan=False)
    with output_file(args.table + ".md") as f:
        f.write(markdown(rows, header))
    print(markdown(rows, header))
    print(f"wrote {args.table}.md and .json ({header['minutes']} minutes)", file=sys.stderr)


if __name__ == "__main__":
    main()
