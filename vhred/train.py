"""Train VHRED or HRED: python -m vhred.train --config configs/dailydialog.yaml [key=value ...]

The run folder <out_dir>/<name>/ holds config.json, tokenizer.model, metrics.jsonl, last.pt
(written every save_every steps, at each epoch end and on Ctrl-C) and best.pt (lowest validation
negative ELBO). Running the same command again resumes from last.pt.
"""
import argparse
import json
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import asdict

import torch

from . import checkpoint, distributed
from .checkpoint import CheckpointError
from .config import ARCH_FIELDS, Config, ConfigError, load, validate
from .dataset import DialogueData, prepare
from .memory import keep_freed_memory
from .model import VHRED, active_units, objective, perplexity
from .schedule import kl_weight, learning_rate
from .sources import DataError


MAX_BAD_STEPS = 20   # non-finite steps in a row before the run stops


class TrainingError(RuntimeError):
    """Training cannot go on (a diverged loss); the message says what to do."""


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA GPU is visible; use device=auto or device=cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether the training step runs under bf16 autocast: asked for, or precision=auto on a GPU
    that has bf16. Weights, gradients and the optimiser stay fp32; matmuls and GRUs run in bf16
    (tensor cores on GPUs); the losses are summed in fp32."""
    if precision == "auto":
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    return precision == "bf16"


@torch.inference_mode()
def evaluate(model: VHRED, data: DialogueData, batch_size: int, device, max_batches: int = 0,
             seed: int = 0) -> dict:
    """Validation metrics: the negative ELBO per token, its NLL and KL parts, active units.

    z is drawn from the posterior with its own seeded generator, so the training RNG stream is
    untouched and repeated validations of one model agree.
    """
    was_training = model.training
    model.eval()
    nll = kl = 0.0
    tokens = targets = 0
    means = []
    batches = data.batches(batch_size, shuffle=False)
    batches = batches[:max_batches] if max_batches else batches
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for idx in batches:
            b = data.batch(idx).to(device)
            out = model(b.tokens, b.lens, b.turns)
            nll += out["nll"].sum().item()
            tokens += out["n_tokens"]
            targets += len(out["nll"])
            if "kl" in out:
                kl += out["kl"].sum().item()
                means.append(out["post_mean"].float().cpu())
    model.train(was_training)
    elbo = (nll + kl) / max(tokens, 1)
    return {"elbo_per_token": elbo, "ppl": perplexity(elbo), "nll_per_token": nll / max(tokens, 1),
            "ppl_nll": perplexity(nll / max(tokens, 1)), "kl_per_utt": kl / max(targets, 1),
            "active_units": active_units(torch.cat(means)) if means else 0,
            "tokens": tokens, "utterances": targets}


def lock_run_dir(path: str):
    """Hold an exclusive lock on <run>/.lock while training; a second trainer there is refused.
    The kernel drops the lock when the process ends, even on SIGKILL: no stale locks."""
    import fcntl
    f = open(os.path.join(path, ".lock"), "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        owner = f.read().strip() or "?"
        f.close()
        raise CheckpointError(f"{path} is in use by another training process (pid {owner}); "
                              "wait for it, stop it, or pass name=<other name>") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


class Stop:
    """Ctrl-C and SIGTERM ask the loop to stop after the current step (a second Ctrl-C forces it)."""

    def __init__(self):
        self.requested = False
        self.signum = 0
        self.old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum

    def restore(self):
        for s, handler in self.old.items():
            signal.signal(s, handler)


class Run:
    """The state of one training run and the files it writes."""

    def __init__(self, cfg: Config, log=print):
        self.cfg, self.log = cfg, log
        self.dir = os.path.join(cfg.out_dir, cfg.name or f"run-{cfg.model}")
        self.started = time.time()
        keep_freed_memory()   # no page faults on every step's large buffers (see memory.py)
        self.rank, self.world, self.device = distributed.setup(pick_device(cfg.device))
        self.main = self.rank == 0   # only rank 0 writes files and logs
        self.bf16 = use_bf16(cfg.precision, self.device)
        if not self.main:
            self.log = log = lambda *_: None
        for w in validate(cfg):
            log(f"warning: {w}")
        folder = prepare(cfg, log=log) if self.main else None   # rank 0 builds the data cache,
        distributed.barrier()
        folder = folder or prepare(cfg, log=log)                   # then the others read it
        meta = json.load(open(os.path.join(folder, "meta.json")))
        cfg.vocab_size = meta["vocab_size"]   # a small corpus may give fewer pieces than asked
        self.train_data = DialogueData(folder, "train")
        self.val_data = DialogueData(folder, "validation")
        total = cfg.max_steps or cfg.epochs * -(-len(self.train_data) // cfg.batch_size)
        if cfg.model == "vhred" and cfg.kl_schedule == "linear" and cfg.kl_warmup_steps > total \
                and not cfg.max_steps:   # (with max_steps, validate() has warned already)
            log(f"warning: kl_warmup_steps={cfg.kl_warmup_steps} is longer than the whole run "
                f"({total} steps): the KL weight never reaches kl_max")
        with open(os.path.join(folder, "tokenizer.model"), "rb") as f:
            self.tokenizer = f.read()
        torch.manual_seed(cfg.seed)
        self.model = VHRED(cfg).to(self.device)   # the module itself: saved, validated, sampled
        self.net = self.model                     # what the training step runs
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel
            self.net = DistributedDataParallel(self.model)
            torch.manual_seed(cfg.seed + self.rank)   # own noise (z, word dropout) per rank
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.step, self.epoch, self.batch_pos = 0, 0, 0
        self.best = math.inf
        self.last_val_step = -1
        self.stopped = False
        self.bad_steps = self.skipped_total = 0   # non-finite steps: in a row, in all
        self.lock = None
        if self.main:
            os.makedirs(self.dir, exist_ok=True)
            self.lock = lock_run_dir(self.dir)
            for name in os.listdir(self.dir):   # half-written saves of a killed run
                if ".pt.tmp" in name:
                    os.remove(os.path.join(self.dir, name))
        self._resume_or_start(folder)

    def _resume_or_start(self, folder: str):
        last = os.path.join(self.dir, "last.pt")
        if os.path.exists(last):
            state = checkpoint.load(last)
            changed = [k for k in ARCH_FIELDS if state["config"].get(k) != getattr(self.cfg, k)]
            if changed:
                raise CheckpointError(f"{self.dir} holds a run with other {', '.join(changed)}; pass "
                                      f"name=<new name> for a new run, or remove {self.dir}")
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optim"])
            self.step, self.epoch, self.batch_pos = state["step"], state["epoch"], state["batch_pos"]
            self.best = state["best"]
            if self.world == 1:
                torch.set_rng_state(state["rng"])
            self.log(f"resuming {self.dir} at step {self.step} (epoch {self.epoch + 1}, batch {self.batch_pos})")
        if not self.main:
            return
        shutil.copyfile(os.path.join(folder, "tokenizer.model"), os.path.join(self.dir, "tokenizer.model"))
        with open(os.path.join(self.dir, "config.json"), "w") as f:
            json.dump(asdict(self.cfg), f, indent=1)

    def save(self, name: str, resumable: bool = True):
        """Write a checkpoint; best.pt leaves out the optimiser and position (a third the size)."""
        if not self.main:
            return
        state = {"model": self.model.state_dict(), "config": asdict(self.cfg),
                 "tokenizer": checkpoint.as_tensor(self.tokenizer), "step": self.step, "best": self.best}
        if resumable:
            state.update(optim=self.opt.state_dict(), epoch=self.epoch, batch_pos=self.batch_pos,
                         rng=torch.get_rng_state())
        checkpoint.save(state, os.path.join(self.dir, name))

    def metrics(self, record: dict):
        if not self.main:
            return
        record["wall_s"] = round(time.time() - self.started, 1)   # since this process started
        with open(os.path.join(self.dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")

    def validate(self) -> dict:
        self.last_val_step = self.step
        if not self.main:   # the other ranks wait for rank 0 at their next all-reduce
            return {}
        m = evaluate(self.model, self.val_data, self.cfg.batch_size, self.device,
                     self.cfg.eval_batches, self.cfg.seed)
        self.metrics({"split": "val", "step": self.step, "epoch": self.epoch, **m})
        self.log(f"step {self.step} validation: ELBO/token {m['elbo_per_token']:.3f} (ppl <= {m['ppl']:.1f}), "
                 f"NLL/token {m['nll_per_token']:.3f}, KL/utt {m['kl_per_utt']:.2f}, "
                 f"active units {m['active_units']}")
        if m["elbo_per_token"] < self.best:
            self.best = m["elbo_per_token"]
            self.save("best.pt", resumable=False)
        return m

    def train_step(self, indices, stop_requested: bool = False) -> dict:
        """One optimiser step on a batch of window indices (this rank's share of them).

        The loss is normalised by the whole batch's token count, so the gradients that data
        parallel ranks average equal one process's gradient on the whole batch."""
        cfg = self.cfg
        lr, beta = learning_rate(self.step, cfg), kl_weight(self.step, cfg)
        for group in self.opt.param_groups:
            group["lr"] = lr
        b = self.train_data.batch(indices[self.rank::self.world]).to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.net(b.tokens, b.lens, b.turns)
            loss_sum = objective(out, beta, cfg.free_bits, cfg.bow_weight, n_tokens=1)
        kl = out["kl"].sum() if "kl" in out else loss_sum.new_zeros(())
        stats = torch.stack([loss_sum.new_tensor(float(out["n_tokens"])), loss_sum.detach(),
                             out["nll"].sum().detach(), kl.detach(), loss_sum.new_tensor(float(len(out["nll"]))),
                             loss_sum.new_tensor(float(stop_requested))])
        # one device-to-host copy per step (and one all-reduce under torchrun)
        tokens, total, nll, kl, targets, stops = distributed.sum_all(stats)
        self.opt.zero_grad(set_to_none=True)
        finite = math.isfinite(total)   # the same on every rank: total is summed over them
        if finite:
            (loss_sum * (self.world / max(tokens, 1))).backward()
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            finite = bool(torch.isfinite(norm))
        if finite:   # a NaN/inf loss or gradient skips the update: the weights stay good
            self.opt.step()
        self.step += 1
        tokens = max(tokens, 1)
        return {"loss": total / tokens, "nll_per_token": nll / tokens,
                "kl_per_utt": kl / max(targets, 1), "beta": beta, "lr": lr, "tokens": int(tokens),
                "skipped": not finite, "stop": stops > 0}


def _done(run: Run) -> bool:
    return bool(run.cfg.max_steps) and run.step >= run.cfg.max_steps


def run_epoch(run: Run, stop: Stop):
    """Train through the rest of the current epoch (or to max_steps, or a stop); validate at its end."""
    from tqdm import tqdm
    cfg = run.cfg
    batches = run.train_data.batches(cfg.batch_size, cfg.seed, run.epoch)
    bar = tqdm(total=len(batches), initial=run.batch_pos, desc=f"epoch {run.epoch + 1}/{cfg.epochs}",
               mininterval=1.0 if sys.stderr.isatty() else 30.0, leave=False, disable=not run.main)
    t0, seen = time.perf_counter(), 0
    while run.batch_pos < len(batches) and not _done(run) and not run.stopped:
        if len(batches[run.batch_pos]) < run.world:   # a last batch too small to share
            run.batch_pos += 1
            continue
        # a signal seen by any rank stops them all after the same step
        m = run.train_step(batches[run.batch_pos], stop.requested)
        run.stopped = m.pop("stop")
        run.batch_pos += 1
        run.bad_steps = run.bad_steps + 1 if m["skipped"] else 0
        if m["skipped"]:
            run.skipped_total += 1
            run.log(f"warning: step {run.step}: loss or gradient not finite, update skipped")
            if run.bad_steps >= MAX_BAD_STEPS:
                raise TrainingError(f"the loss was NaN/inf for {MAX_BAD_STEPS} steps in a row (step {run.step}); "
                                    f"{run.dir}/last.pt holds the last good state: lower lr= or check the data")
        seen += m["tokens"]
        m["tokens_per_s"] = seen / (time.perf_counter() - t0)
        bar.update(1)
        bar.set_postfix(loss=f"{m['loss']:.3f}", nll=f"{m['nll_per_token']:.3f}", kl=f"{m['kl_per_utt']:.2f}",
                        beta=f"{m['beta']:.2f}", tok_s=f"{m['tokens_per_s']:.0f}", refresh=False)
        if run.step % cfg.log_every == 0:
            run.metrics({"split": "train", "step": run.step, "epoch": run.epoch, **m})
        if cfg.eval_every and run.step % cfg.eval_every == 0:
            run.validate()
        if run.step % cfg.save_every == 0:
            run.save("last.pt")
    bar.close()
    if run.batch_pos >= len(batches):   # the epoch is whole: validate, move on
        run.epoch, run.batch_pos = run.epoch + 1, 0
        run.validate()


def train(cfg: Config, log=print) -> Run:
    """Train until epochs or max_steps are done, or a stop is requested; resumable."""
    run = Run(cfg, log)
    log = run.log   # silent on ranks other than 0
    log(f"{cfg.model} with {run.model.num_params() / 1e6:.2f}M parameters on {run.device}"
        f"{' (bf16 autocast)' if run.bf16 else ''}; "
        f"{len(run.train_data)} training windows; run folder {run.dir}")
    stop = Stop()
    try:
        while run.epoch < cfg.epochs and not _done(run) and not run.stopped:
            run_epoch(run, stop)
            run.save("last.pt")
        if not run.stopped and run.last_val_step != run.step:   # max_steps ended mid-epoch
            run.validate()
            run.save("last.pt")
    finally:
        stop.restore()
        distributed.cleanup()
        if run.lock:
            run.lock.close()
    if run.main:
        _finish(run, log)
    run.signum = stop.signum
    return run


def _finish(run: Run, log):
    try:
        from .plot import plot
        log(f"training curves: {plot(run.dir)}")
    except Exception as e:   # a missing plot must never cost a finished run
        log(f"warning: no training curves ({e})")
    if run.stopped:
        log(f"stopped at step {run.step}; saved {run.dir}/last.pt. Run the same command to resume.")
    else:
        log(f"done at step {run.step}: best validation ELBO/token {run.best:.3f}; {run.dir}/best.pt")


def main(argv=None):
    p = argparse.ArgumentParser(description="Train VHRED / HRED on dialogues.")
    p.add_argument("--config", help="YAML config file (configs/*.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value settings that override the config file")
    args = p.parse_args(argv)
    try:
        cfg = load(args.config, args.overrides)
        run = train(cfg, log=lambda msg: print(msg, flush=True))   # flushed: logs survive a kill
    except (ConfigError, DataError, CheckpointError, TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:   # disk full, permissions: the previous checkpoint is still whole
        print(f"error: {e.strerror or e} ({e.filename or 'while training'}); the last checkpoint is intact",
              file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:   # a second Ctrl-C: no save, but no half-written file either
        print("interrupted; the last checkpoint is intact", file=sys.stderr)
        sys.exit(130)
    if run.stopped:
        sys.exit(128 + (run.signum or signal.SIGINT))   # the shell's code for a signalled end


if __name__ == "__main__":
    main()
