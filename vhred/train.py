"""Train a model of any family: python -m vhred.train --config configs/dailydialog.yaml [key=value ...]

The run folder <out_dir>/<name>/ holds config.json, tokenizer.model, metrics.jsonl, last.pt
(written every save_every steps, at each epoch end and on Ctrl-C) and best.pt (lowest validation
negative ELBO). Running the same command again resumes from last.pt.
"""
import gc
import json
import math
import os
import signal
import sys
import time
import warnings
from dataclasses import asdict, dataclass

import torch

from . import cache, checkpoint, config, distributed
from .cli import command, outlast_peer, Parser, program, say
from .dataset import DATA_SETTINGS, DialogueData, prepare, processed_digests
from .device import pick_device, use_bf16, use_tf32_for_training
from .errors import CheckpointError, ConfigError, DataError, TrainingError
from .files import append_line, write_bytes
from .memory import keep_freed_memory
from .metrics.likelihood import elbo_metrics
from .models import build
from .models.layers import positions
from .schedule import kl_weight, learning_rate, validation_due
from .stops import interrupted_code

MAX_BAD_STEPS = 20   # non-finite steps in a row before the run stops
MAX_ROLLBACKS = 3    # roll-backs to last.pt with no good save between them before the run stops


class RolledBack(Exception):
    """The run went back to last.pt (its weights had become NaN/inf): the loop goes on from there."""


@dataclass
class Progress:
    """Where a run stands; saved in last.pt and restored as one unit."""
    step: int = 0               # optimiser steps taken
    epoch: int = 0              # epochs completed
    batch_pos: int = 0          # batches of the current epoch done
    best: float = math.inf      # lowest validation negative ELBO per token so far
    best_epoch: int = 0         # the epoch (1-based) `best` came in; 0 before any (early stopping)
    last_val_step: int = -1     # step of the latest validation
    bad_steps: int = 0          # non-finite steps in a row
    skipped_total: int = 0      # non-finite steps in all
    wall_s: float = 0.0         # seconds of wall time the run has taken, over every process that ran it


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


def run_dir(cfg: config.Config) -> str:
    """The run folder: <out_dir>/<name> (a Config built without config.load may have no name)."""
    return os.path.join(cfg.out_dir, cfg.name or f"run-{cfg.arch.model}")


class Run:
    """One training run: its data, model, optimiser, progress and the files it writes."""

    def __init__(self, cfg: config.Config, log=print):
        self.cfg = cfg
        self.dir = run_dir(cfg)
        self.started = time.time()
        keep_freed_memory()   # no page faults on every step's large buffers (see memory.py)
        self.rank, self.world, self.device = distributed.setup(pick_device(cfg.device))
        self.is_rank0 = self.rank == 0   # only rank 0 writes files and logs
        if cfg.batch_size < self.world:   # every rank takes a share of each batch: none would be trained on
            raise ConfigError(f"batch_size={cfg.batch_size} is smaller than the {self.world} processes, "
                              f"each of which takes a share of every batch; give batch_size={self.world} or more")
        self.log = log if self.is_rank0 else (lambda *_: None)
        self.bf16 = use_bf16(cfg.precision, self.device, cfg.batch_size // self.world)
        use_tf32_for_training(self.device)
        self.tb = None   # a SummaryWriter once the folder exists, when tensorboard=true
        if cfg.tensorboard and self.is_rank0:
            tensorboard_writer_class()   # refuse early, before any data is prepared
        self.progress = Progress()
        self.stopped = False
        self.epoch_batches = 0   # the batches of the epoch in progress: a validation on its last one ends it
        self.rollbacks = 0   # roll-backs since the last good save of last.pt (not in Progress: it survives them)
        self._setup_data()
        self._setup_model()
        self.lock = distributed.run_on_rank0(self._setup_folder)
        self._resume()
        if cfg.tensorboard and self.is_rank0:
            self._open_tensorboard()

    def _setup_data(self):
        """Prepare (rank 0) or read (the others) the processed data; warn about the schedule."""
        cfg = self.cfg
        cfg.data_source = cfg.data_source or self._remembered_source()   # a resumed run reads where it read
        folder = distributed.run_on_rank0(lambda: prepare(cfg, log=self.log))
        self.data_folder = folder or prepare(cfg, log=self.log)   # the others read what rank 0 prepared
        self.train_data = DialogueData(self.data_folder, "train")
        self.val_data = DialogueData(self.data_folder, "validation")
        if len(self.train_data) < self.world:
            raise DataError(f"the training split has {len(self.train_data)} windows, fewer than the {self.world} "
                            f"processes; train on more dialogues or with fewer processes")
        with open(os.path.join(self.data_folder, "tokenizer.model"), "rb") as f:
            self.tokenizer = f.read()
        self.data_digests = processed_digests(self.data_folder)   # what the data is; saved in checkpoints
        self.wh_replies = WhReplies(self.tokenizer, cfg.wh_reply_weight) if cfg.wh_reply_weight != 1 else None
        with open(os.path.join(self.data_folder, "meta.json")) as f:
            meta = json.load(f)
        cfg.data_source = os.path.abspath(meta["source"])   # saved in config and checkpoints: eval reads the same data
        if cfg.data != "dailydialog":   # its split follows line numbers: eval checks the file is the one trained on
            cfg.data_sha256 = meta.get("source_sha256") or cache.file_sha256(cfg.data_source)   # the data trained on
        self.vocab_size = meta["vocab_size"]   # a small corpus may give fewer pieces than vocab_size asked for
        steps = cfg.epochs * -(-len(self.train_data) // cfg.batch_size)
        total = min(cfg.max_steps, steps) if cfg.max_steps else steps   # whichever ends the run first
        for w in config.warnings(cfg, total):
            self.log(f"warning: {w}")

    def _remembered_source(self) -> str:
        """Where this run folder's earlier process read its data ("" for a new run): resuming
        then needs no $DAILYDIALOG_SRC, as evaluation does not."""
        try:
            with open(os.path.join(self.dir, "config.json"), encoding="utf-8") as f:
                source = json.load(f).get("data_source", "")
        except (OSError, ValueError, AttributeError):
            return ""
        return source if isinstance(source, str) else ""

    def _setup_model(self):
        """The model over the tokenizer's vocabulary, its data-parallel wrapper and the optimiser."""
        torch.manual_seed(self.cfg.seed)
        self.model = build(self.cfg.arch, self.vocab_size)                 # saved, validated, sampled
        line = self.model.index_training_split(self.train_data.ds["ids"])
        if line:
            self.log(line)
        self.model = self.model.to(self.device)
        self.net = self.model                                      # what the training step runs
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel
            # buffers (a retrieval index) are built alike on every rank and never change: never sent;
            # a batch norm's running statistics, which do, are averaged after each step instead.
            # Its successor, forward_sync_buffers=False, still sends them at the start, which gloo
            # refuses for the index's int16 buffers ("Invalid scalar type"): the deprecated flag, quietly.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated", FutureWarning)
                self.net = DistributedDataParallel(self.model, broadcast_buffers=False)
            torch.manual_seed(self.cfg.seed + self.rank)   # own noise (z, word dropout) per rank
        # a family may give parts of itself their own learning rate (lr_scale times the schedule's)
        self.opt = torch.optim.AdamW(self.model.param_groups(), lr=self.cfg.lr,
                                     weight_decay=self.cfg.weight_decay)

    def _setup_folder(self):
        """The run folder, locked for this process; half-written saves of a killed run removed."""
        os.makedirs(self.dir, exist_ok=True)
        lock = lock_run_dir(self.dir)
        for name in os.listdir(self.dir):
            if ".pt.tmp" in name:
                os.remove(os.path.join(self.dir, name))
        return lock

    def _resume(self):
        """Continue from last.pt when the folder has one (same model, same data), then write the
        run's tokenizer and final config."""
        last = os.path.join(self.dir, "last.pt")
        if os.path.exists(last):
            state = checkpoint.load(last)
            distributed.run_on_rank0(lambda: self._check_same_run(state))   # a mismatch said once
            self._restore(state)
            p = self.progress
            self.log(f"resuming {self.dir} at step {p.step} (epoch {p.epoch + 1}, batch {p.batch_pos})")
        elif self.is_rank0:   # afresh: rows of a run killed before its first save, or of one removed to start over
            self._forget_metrics_after(0, -1)
        if not self.is_rank0:
            return
        write_bytes(os.path.join(self.dir, "tokenizer.model"), self.tokenizer)
        write_bytes(os.path.join(self.dir, "config.json"), json.dumps(asdict(self.cfg), indent=1).encode())

    def _check_same_run(self, state: dict):
        saved = checkpoint.config_of(state, os.path.join(self.dir, "last.pt"))
        changed = [k for k, v in asdict(self.cfg.arch).items() if getattr(saved.arch, k) != v]
        # the saved position in the data (epoch, batch) means another order under another batch size or seed
        changed += [k for k in ("batch_size", "seed") if getattr(saved, k) != getattr(self.cfg, k)]
        if checkpoint.tokenizer_bytes(state) != self.tokenizer or not self._same_data(state, saved):
            changed.append("data")
        if changed:
            raise CheckpointError(f"{self.dir} holds a run with other {', '.join(changed)}; pass "
                                  f"name=<new name> for a new run, or remove {self.dir}")
        if "optim" not in state:
            raise CheckpointError(f"{self.dir}/last.pt has no optimiser state (is it a copy of best.pt?); "
                                  "restore the real last.pt, or remove it to start over")

    def _restore(self, state: dict):
        try:
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optim"])
            self.progress = Progress(**state["progress"])
            self.started = time.time() - self.progress.wall_s   # a resumed run's clock goes on
        except (RuntimeError, ValueError, TypeError, KeyError) as e:
            raise CheckpointError(f"{self.dir}/last.pt does not fit this run ({str(e).splitlines()[0][:120]}); "
                                  "remove it to start over") from None
        if "rng" in state:
            self._set_rng(state["rng"])
        if self.is_rank0:
            self._forget_metrics_after(self.progress.step, self.progress.last_val_step)

    def _forget_metrics_after(self, step: int, last_val_step: int):
        """Drop the metrics rows that last.pt does not know of, which a kill or a roll-back undid:
        training rows after its step, and validation rows after its latest validation (last.pt
        is saved at a step before that step's validation). They are logged again as the run
        replays them (so the curves have one row a step). (0, -1): a run starting afresh."""
        path = os.path.join(self.dir, "metrics.jsonl")
        if not os.path.exists(path):
            return
        with open(path, "rb") as f:
            lines = f.readlines()
        kept = [line for line, (val, at) in zip(lines, map(_row_step, lines)) if at <= (last_val_step if val else step)]
        if len(kept) != len(lines):
            write_bytes(path, b"".join(kept))

    def _rng_states(self) -> list[dict]:
        """Every rank's generator states (CPU, and the GPU's on CUDA), gathered on all ranks:
        z and dropout draws go on after a resume or a roll-back as if the run never stopped."""
        mine = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            mine["cuda"] = torch.cuda.get_rng_state(self.device)
        return distributed.gather_objects(mine)

    def _set_rng(self, saved):
        """Restore this rank's generators from _rng_states() (or a bare CPU state of older runs).
        A run resumed with another number of processes keeps its own fresh streams."""
        states = [{"cpu": saved}] if isinstance(saved, torch.Tensor) else saved
        if len(states) != self.world:
            return
        torch.set_rng_state(states[self.rank]["cpu"])
        if self.device.type == "cuda" and "cuda" in states[self.rank]:
            torch.cuda.set_rng_state(states[self.rank]["cuda"], self.device)

    def _data_id(self) -> str:
        return os.path.basename(os.path.normpath(self.data_folder))

    def _same_data(self, state: dict, saved: config.Config) -> bool:
        """Whether a checkpoint's processed data is this run's: the same folder, or one whose files
        are the same. A source copied, re-downloaded or touched gets a new folder (its identity
        holds its modification time) with the same content, and the run still resumes; so does one
        whose data a newer vhred prepared again (another folder name)."""
        saved_id = state.get("data", self._data_id())
        if saved_id == self._data_id():
            return True
        if state.get("data_digests"):   # what the data was, recorded in the checkpoint
            return state["data_digests"] == self.data_digests
        old = processed_digests(os.path.join(os.path.dirname(os.path.normpath(self.data_folder)), saved_id))
        if old is not None:
            return old == self.data_digests
        # a checkpoint from before the record, its folder gone (removed, or prepared again by a
        # newer vhred): the same tokenizer (checked by the caller) from the same source and settings
        same = all(getattr(saved, k) == getattr(self.cfg, k) for k in DATA_SETTINGS) and (
            not saved.data_sha256 or saved.data_sha256 == self.cfg.data_sha256)
        if same:
            self.log(f"note: the data folder {saved_id} of last.pt is gone; resuming on {self._data_id()}, "
                     "prepared from the same source with the same settings and tokenizer")
        return same

    # --- files ---

    def save(self, name: str, resumable: bool = True):
        """Write a checkpoint; best.pt leaves out the optimiser and RNG (a third the size).
        Weights that are no longer finite are never written: the run rolls back instead. Nor is
        last.pt during a run of NaN/inf losses: weights still finite can give nothing else, and
        the last good state is what a stopped run and its resume need."""
        if resumable and self.progress.bad_steps:   # equal on every rank: the losses are all-reduced
            return
        if not self.weights_finite():   # equal on every rank, and every rank saves last.pt
            if resumable:
                self.roll_back()
            return
        rng = self._rng_states() if resumable else None   # a collective: every rank takes part
        if not self.is_rank0:
            return
        self.progress.wall_s = round(time.time() - self.started, 1)
        state = {"model": self.model.state_dict(), "config": asdict(self.cfg), "data": self._data_id(),
                 "data_digests": self.data_digests,
                 "tokenizer": checkpoint.as_tensor(self.tokenizer), "progress": asdict(self.progress)}
        if resumable:
            state.update(optim=self.opt.state_dict(), rng=rng)
        checkpoint.save(state, os.path.join(self.dir, name))
        self.rollbacks = 0 if resumable else self.rollbacks   # a good last.pt: progress was made

    def log_metrics(self, record: dict):
        if not self.is_rank0:
            return
        record["wall_s"] = round(time.time() - self.started, 1)   # since the run started, resumes included
        append_line(os.path.join(self.dir, "metrics.jsonl"), json.dumps(record))   # never half a row
        if self.tb:
            log_to_tensorboard(self.tb, record)

    # --- guards ---

    def weights_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.model.parameters())

    def roll_back(self):
        """Weights went NaN/inf (an update a finite loss did not flag): back to last.pt, whose
        weights are finite (save() writes no others), then raise RolledBack so the loop goes on
        from its position. The same fault again and again (a replay repeats it exactly) stops the run."""
        p, last = self.progress, os.path.join(self.dir, "last.pt")
        if not os.path.exists(last):
            raise TrainingError(f"the weights became NaN/inf by step {p.step}, before any checkpoint; "
                                "lower lr= or check the data")
        self.rollbacks += 1
        if self.rollbacks > MAX_ROLLBACKS:
            raise TrainingError(f"the weights became NaN/inf again after {MAX_ROLLBACKS} roll-backs "
                                f"(step {p.step}); {last} holds the last good state: lower lr= or check the data")
        self.log(f"warning: step {p.step}: weights not finite; rolling back to {last}")
        skipped, started = p.skipped_total, self.started
        self._restore(checkpoint.load(last))
        self.progress.skipped_total, self.started = skipped, started   # the replayed steps took time too
        if self.tb:
            self._open_tensorboard()
        raise RolledBack

    def _open_tensorboard(self):
        """The TensorBoard writer holding what metrics.jsonl holds after a resume or a roll-back.
        TensorBoard purges by step, every tag at once (it drops the events on reading): from the
        first step last.pt does not wholly know of, its latest validation's when a kill came
        between a step's save and that step's validation. metrics.jsonl's kept rows from there
        on are logged again; the run logs the rest as it replays them."""
        if self.tb:
            self.tb.close()
        purge = min(self.progress.step, self.progress.last_val_step) + 1
        self.tb = tensorboard_writer_class()(os.path.join(self.dir, "tb"), purge_step=purge)
        for record in self._metrics_rows():
            if isinstance(record.get("step"), int) and record["step"] >= purge and record.get("split") in ("train", "val"):
                log_to_tensorboard(self.tb, record)

    def _metrics_rows(self) -> list[dict]:
        path = os.path.join(self.dir, "metrics.jsonl")
        if not os.path.exists(path):
            return []
        with open(path, "rb") as f:
            rows = [_json_row(line) for line in f]
        return [r for r in rows if r]

    def count_step(self, skipped: bool):
        """Track non-finite steps; too many in a row stop the run (last.pt holds good weights)."""
        p = self.progress
        p.bad_steps = p.bad_steps + 1 if skipped else 0
        if not skipped:
            return
        p.skipped_total += 1
        self.log(f"warning: step {p.step}: loss or gradient not finite, update skipped")
        if not self.weights_finite():
            self.roll_back()
        elif p.bad_steps >= MAX_BAD_STEPS:
            last = os.path.join(self.dir, "last.pt")
            kept = f"{last} holds the last good state" if os.path.exists(last) else "no checkpoint was written yet"
            raise TrainingError(f"the loss was NaN/inf for {MAX_BAD_STEPS} steps in a row (step {p.step}); "
                                f"{kept}: lower lr= or check the data")

    # --- the loop ---

    def validate(self) -> dict:
        """Each rank validates its share of the batches; the sums are all-reduced, so every rank
        sees the whole split's figures and takes the same best epoch and stop decisions."""
        p = self.progress
        p.last_val_step = p.step
        m = elbo_metrics(self.model, self.val_data, self.cfg.batch_size, self.cfg.eval_batches, self.cfg.seed,
                         shard=(self.rank, self.world), reduce=distributed.all_reduce_)
        ended = p.batch_pos > 0 and p.batch_pos >= self.epoch_batches   # on an epoch's last step, before it rolls over
        self.log_metrics({"split": "val", "step": p.step, "epoch": p.epoch + ended, **m})
        beta = kl_weight(p.step - 1, self.cfg) if p.step else 0.0   # the last step's
        low = (f" (KL weight {beta:.2f} at the last step: below full weight the KL runs high, and the ELBO with it)"
               if self.model.kl and beta < self.cfg.kl_max else "")
        self.log(f"step {p.step} validation: ELBO/token {m['elbo_per_token']:.3f} (ppl <= {m['ppl']:.1f}), "
                 f"NLL/token {m['nll_per_token']:.3f}, KL/utt {m['kl_per_utt']:.2f}, "
                 f"active units {m['active_units']}{low}")
        if m["elbo_per_token"] < p.best:
            p.best, p.best_epoch = m["elbo_per_token"], p.epoch + (p.batch_pos > 0)   # mid-epoch: that epoch
            self.save("best.pt", resumable=False)
        return m

    def train_step(self, indices, stop_requested: bool = False, batch=None) -> dict:
        """One optimiser step on a batch of window indices (this rank's share of them; `batch`
        when it was built ahead, see batch_stream).

        The loss is normalised by the whole batch's token count, known on the host, so the
        gradients that data-parallel ranks average equal one process's gradient on the whole
        batch. The step reads one small tensor back from the device, after backward: a NaN/inf
        loss or gradient shows there, and the update is skipped (the weights stay good)."""
        cfg, step = self.cfg, self.progress.step
        lr, beta = learning_rate(step, cfg), kl_weight(step, cfg)
        for group in self.opt.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        b = batch or self.make_batch(indices)
        tokens = max(int(self.train_data.n_tokens[indices].sum()), 1)   # all ranks' targets
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.net(b.tokens, b.lens, b.turns)
            loss_sum = self.model.objective(out, beta, cfg.free_bits, n_tokens=1, weights=b.weights,
                                            reduce=distributed.all_reduce_)
        self.opt.zero_grad(set_to_none=True)
        (loss_sum * (self.world / tokens)).backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        kl = out["kl"].sum().detach() if "kl" in out else torch.zeros_like(norm)
        stats = torch.stack([loss_sum.detach(), out["nll"].sum().detach(), kl, norm / self.world])
        # the step's one device-to-host copy (and one all-reduce under torchrun)
        total, nll, kl, norm, targets, stops = distributed.sum_all(stats, [len(out["nll"]), stop_requested])
        finite = math.isfinite(total) and math.isfinite(norm)   # the same on every rank
        if finite:
            self.opt.step()
            self.extra_steps(out)
        if self.world > 1:
            distributed.average_norm_stats_(self.model)   # each rank's forward moved them its own way
        self.progress.step += 1
        return {"loss": total / tokens, "nll_per_token": nll / tokens,
                "kl_per_utt": kl / max(targets, 1), "beta": beta, "lr": lr, "tokens": tokens,
                "skipped": not finite, "stop": stops > 0}

    def extra_steps(self, out: dict):
        """The family's optimiser steps of one player alone after the main step, on the same batch
        (Hierarchical.extra_steps): ranks average each step's gradients, as data-parallel does for
        the main one, and a step whose gradient is not finite is skipped."""
        steps = self.model.extra_steps(out)
        while True:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                loss = next(steps, None)
            if loss is None:
                return
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.world > 1:
                for p in self.model.parameters():
                    if p.grad is not None:
                        distributed.all_reduce_(p.grad)
                        p.grad.div_(self.world)
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            if math.isfinite(float(norm)):   # one small read per extra step
                self.opt.step()

    def make_batch(self, indices):
        """This rank's share of a batch, on the device (pinned first on a GPU: a non-blocking copy),
        with its targets' loss weights when replies to wh-questions weigh more."""
        b = self.train_data.batch(indices[self.rank::self.world])
        if self.wh_replies:
            b.weights = self.wh_replies(b)
        return b.to(self.device, non_blocking=True)

    @property
    def patience_out(self) -> bool:
        """Early stopping: `patience` whole epochs since the best validation ELBO."""
        p = self.progress
        return self.cfg.patience > 0 and p.epoch - p.best_epoch >= self.cfg.patience

    @property
    def done(self) -> bool:
        p, cfg = self.progress, self.cfg
        return (self.stopped or p.epoch >= cfg.epochs or self.patience_out
                or bool(cfg.max_steps) and p.step >= cfg.max_steps)

    def train_epoch(self, stop: Stop):
        """Train through the rest of the current epoch (or to max_steps, or a stop); validate at its end."""
        cfg, p = self.cfg, self.progress
        batches = self.train_data.batches(cfg.batch_size, cfg.seed, p.epoch)
        self.epoch_batches = len(batches)
        bar = _progress_bar(len(batches), p, cfg.epochs, disable=not self.is_rank0)
        t0, seen = time.perf_counter(), 0
        ahead = prefetch(self.make_batch, [b for b in batches[p.batch_pos:] if len(b) >= self.world])
        try:
            for indices, batch in ahead:
                self._skip_unshareable(batches)
                if self.done:
                    break
                # a signal seen by any rank stops them all after the same step
                m = self.train_step(indices, stop.requested, batch)
                self.stopped = m.pop("stop")
                p.batch_pos += 1
                self.count_step(m["skipped"])
                seen += m["tokens"]
                m["tokens_per_s"] = seen / (time.perf_counter() - t0)
                bar.update(1)
                bar.set_postfix(loss=f"{m['loss']:.3f}", nll=f"{m['nll_per_token']:.3f}",
                                kl=f"{m['kl_per_utt']:.2f}", beta=f"{m['beta']:.2f}",
                                tok_s=f"{m['tokens_per_s']:.0f}", refresh=False)
                self._every_n_steps(m)
        finally:
            ahead.close()
            bar.close()
        self._skip_unshareable(batches)
        if p.batch_pos >= len(batches):   # the epoch is whole: validate (unless a validation just did), move on
            p.epoch, p.batch_pos = p.epoch + 1, 0
            if p.last_val_step != p.step:
                self.validate()

    def _skip_unshareable(self, batches):
        """Step over batches too small to give every rank a share (only under torchrun)."""
        p = self.progress
        while p.batch_pos < len(batches) and len(batches[p.batch_pos]) < self.world:
            p.batch_pos += 1

    def _every_n_steps(self, m: dict):
        cfg, p = self.cfg, self.progress
        if p.step % cfg.log_every == 0:
            self.log_metrics({"split": "train", "step": p.step, "epoch": p.epoch, **m})
        if validation_due(p.step, cfg, self.model.kl):
            self.validate()
        if p.step % cfg.save_every == 0:
            self.save("last.pt")

    def train(self, stop: Stop):
        """Train until done, going on from last.pt after each roll-back."""
        while True:
            try:
                return self._train(stop)
            except RolledBack:   # the progress is last.pt's now: its epoch's batches are built again
                continue

    def _train(self, stop: Stop):
        """Epochs until done; a run that max_steps ended mid-epoch is validated and saved too."""
        while not self.done:
            self.train_epoch(stop)
            self.save("last.pt")
        if not self.stopped and self.progress.last_val_step != self.progress.step:
            self.validate()
            self.save("last.pt")

    def close(self):
        # data-parallel's reducer holds the process group: dropped first, so that destroying the
        # group ends gloo's threads now, not at the interpreter's exit (where they may abort it)
        if self.net is not self.model:
            self.net = self.model
            gc.collect()
        distributed.cleanup()
        if self.tb:
            self.tb.close()
        if self.lock:
            self.lock.close()


class WhReplies:
    """The loss weights of a batch's targets (config.wh_reply_weight): `weight` for a reply to a
    turn that asks a wh-question (rate.turn_kind: what, where, when, why, who, which, how), 1 for
    the others. Blind readers keep a good first reply after one wh-question in five, against two
    turns in three otherwise (docs/rating.md): the model seldom draws a fitting answer to them."""

    def __init__(self, tokenizer: bytes, weight: float):
        from .tokenizer import load_tokenizer
        self.sp, self.weight, self.seen = load_tokenizer(model_bytes=tokenizer), weight, {}

    def __call__(self, batch) -> torch.Tensor:
        """(T,) on the host, in the targets' order (Hierarchical.targets): each utterance after a
        dialogue's first, weighed by the turn before it."""
        _, pos = positions(batch.turns)                                     # place in its dialogue (U,)
        answered = (pos > 0).nonzero().squeeze(1) - 1                       # the row each target answers (T,)
        return torch.tensor([self.weight if self._asks_wh(batch.tokens[u, 1:batch.lens[u] - 1]) else 1.0
                             for u in answered.tolist()])

    def _asks_wh(self, ids: torch.Tensor) -> bool:
        key = tuple(ids.tolist())
        if key not in self.seen:   # a turn recurs in every window that holds it: read once
            from .rate import turn_kind
            self.seen[key] = turn_kind([self.sp.decode(list(key))]) == "wh"
        return self.seen[key]


def tensorboard_writer_class():
    """torch's SummaryWriter; tensorboard is an optional dependency, so its absence is one line."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("tensorboard=true needs the tensorboard package: pip install 'vhred[tb]' "
                          "(or pip install tensorboard), or leave tensorboard=false") from None
    return SummaryWriter


def log_to_tensorboard(writer, record: dict):
    """A metrics.jsonl record as scalars: "train/loss", "val/elbo_per_token", ... at its step."""
    for key, value in record.items():
        if key not in ("split", "step", "epoch") and isinstance(value, (int, float)) and not isinstance(value, bool):
            writer.add_scalar(f"{record['split']}/{key}", value, record["step"])
    writer.flush()   # as metrics.jsonl is appended: a killed run loses nothing logged


def prefetch(make, items: list, depth: int = 2):
    """Yield (item, make(item)) for each item, make running up to `depth` items ahead in a
    background thread: the next batch is read, collated and copied to the device while the
    current step runs. Closing the generator stops the thread."""
    import queue
    import threading
    q, halt, end = queue.Queue(depth), threading.Event(), object()

    def work():
        try:
            for item in items:
                if halt.is_set():
                    return
                q.put((item, make(item)))
        except BaseException as e:   # raised again in the consumer, where it can be reported
            q.put(e)
        q.put(end)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    try:
        while (got := q.get()) is not end:
            if isinstance(got, BaseException):
                raise got
            yield got
    finally:
        halt.set()
        while worker.is_alive():   # let a worker blocked on a full queue see the halt
            try:
                q.get(timeout=0.01)
            except queue.Empty:
                pass


def _json_row(line: bytes) -> dict | None:
    """A metrics.jsonl row, None for a line a kill cut short (no JSON record)."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) else None


def _row_step(line: bytes) -> tuple[bool, float]:
    """Whether a metrics.jsonl row is a validation's, and its step; infinity for a line a kill
    cut short (no JSON record), which the next row would be glued to."""
    row = _json_row(line) or {}
    step = row.get("step")
    return row.get("split") == "val", (step if isinstance(step, int) else math.inf)


def _progress_bar(total: int, p: Progress, epochs: int, disable: bool):
    from tqdm import tqdm
    return tqdm(total=total, initial=p.batch_pos, desc=f"epoch {p.epoch + 1}/{epochs}",
                mininterval=1.0 if sys.stderr.isatty() else 30.0, leave=False, disable=disable)


def train(cfg: config.Config, log=print) -> Run:
    """Train until epochs or max_steps are done, or a stop is requested; resumable."""
    try:
        run = Run(cfg, log)
    except BaseException:   # a refused resume, say: a process group left alive aborts the process at exit
        distributed.cleanup()
        raise
    run.log(f"{cfg.arch.model} with {run.model.num_params() / 1e6:.2f}M parameters on {run.device}"
            f"{' (bf16 autocast)' if run.bf16 else ''}; "
            f"{len(run.train_data)} training windows; run folder {run.dir}")
    stop = Stop()
    try:
        run.train(stop)
        # every rank tears down together, as PyTorch asks of destroy_process_group (without the wait
        # rank 1 destroyed its group while rank 0 still wrote last.pt). Not after an error, where
        # peers may never come.
        distributed.barrier()
    finally:
        stop.restore()
        run.close()
    if run.is_rank0:
        _finish(run)
    run.signum = stop.signum
    return run


def _finish(run: Run):
    if os.path.exists(os.path.join(run.dir, "metrics.jsonl")):   # none yet: stopped before its first log line
        try:
            from .plot import plot
            run.log(f"training curves: {plot(run.dir)}")
        except Exception as e:   # a missing plot must never cost a finished run
            run.log(f"warning: no training curves ({e})")
    p = run.progress
    if run.stopped:
        run.log(f"stopped at step {p.step}; saved {run.dir}/last.pt. Run the same command to resume.")
    elif not math.isfinite(p.best):   # no validation came out finite, so no best.pt was written
        raise TrainingError(f"the run diverged: no validation ELBO was finite ({p.skipped_total} of {p.step} steps "
                            f"skipped as NaN/inf) and no best.pt was written; lower lr= (now {run.cfg.lr:g}) "
                            f"or check the data")
    else:
        early = f"early stop after {run.cfg.patience} epochs without improvement; " if run.patience_out else ""
        when = f"epoch {p.best_epoch}" if p.best_epoch else "in the first epoch"
        run.log(f"done at step {p.step}: {early}best validation ELBO/token {p.best:.3f} ({when}); {run.dir}/best.pt")


@command
def main(argv=None):
    p = Parser(prog=program("python -m vhred.train"),
               description="Train a model (VHRED, HRED, CVAE, VHCR or DialogWAE) on dialogues.")
    p.add_argument("--config", help="YAML config file (configs/*.yaml); without it, the defaults of vhred/config.py")
    p.add_argument("overrides", nargs="*", help="key=value settings that override the config file")
    p.add_argument("--run-dir", action="store_true",
                   help="print the run folder these settings train into, and exit (`make train` trains its critic there)")
    args = p.parse_args(argv)
    cfg = config.load(args.config, args.overrides)
    if args.run_dir:
        print(run_dir(cfg))
        return
    try:
        run = train(cfg, log=lambda msg: print(msg, flush=True))   # flushed: logs survive a kill
    except OSError as e:   # disk full, permissions: a checkpoint written before is still whole
        last = os.path.join(run_dir(cfg), "last.pt")
        kept = f"; {last} is intact" if os.path.isfile(last) else ""   # never claim one that is not there
        raise OSError(e.errno, f"{e.strerror or e}{kept}", e.filename) from None
    except RuntimeError as e:   # under torchrun: another process ended first, and said why itself
        if not distributed.peer_gone(e):
            raise
        outlast_peer()
        say("stopped: another process of this run ended (its error is above)")
        sys.exit(1)
    except KeyboardInterrupt as e:   # a second Ctrl-C, or a stop while the data is prepared: no half-written file
        last = os.path.join(run_dir(cfg), "last.pt")
        if os.environ.get("RANK", "0") == "0":   # under torchrun every process gets the stop: one line
            say(f"interrupted; {last} is intact" if os.path.isfile(last) else "interrupted before any checkpoint")
        sys.exit(interrupted_code(e))
    if run.stopped:
        sys.exit(128 + (run.signum or signal.SIGINT))   # the shell's code for a signalled end


if __name__ == "__main__":
    main()
