"""Export a trained model as a shareable folder: python -m vhred.export RUN DIR

    vhred export runs/dailydialog-cpu-vhred exported/dailydialog-cpu-vhred

RUN is a run folder (its best.pt, else last.pt) or a .pt checkpoint. DIR receives
model.safetensors, config.json and tokenizer.model (the format: vhred/modelfolder.py), the run's
reply critic (critic.safetensors, vhred/critic.py), answer table (answers.json,
vhred/answers.py) and readers' table (kept.json, vhred/kept.py) when it has them, and a
README.md model card: the data, the config, the run's validation figures (metrics.jsonl) and how
to load it. vhred.load(DIR) and every --checkpoint read the folder; the optimiser is left out.
"""
import datetime
import errno
import json
import math
import os
import pathlib
import shutil
from dataclasses import asdict

from . import answers, cache, checkpoint, critic, kept, loading, modelfolder
from .cli import command, Parser, program
from .errors import InputError
from .models import FAMILIES
from .schedule import kl_cycle
from .stops import check_stop

CARD = "README.md"
RANKING_FILES = (critic.FILE, answers.FILE, kept.FILE)   # the reply critic, answer table and readers' table, when the run has them
RESULTS = ("results-", "samples-", "rank-")   # what eval and rank write into a model folder
VAL_FIGURES = ("elbo_per_token", "ppl", "nll_per_token", "kl_per_utt", "active_units")


def export(run: str, folder: str) -> str:
    """Write the model folder of a run or checkpoint; returns the checkpoint it came from."""
    source = checkpoint.resolve(run)
    if modelfolder.is_model_folder(source):
        raise InputError(f"{run} is already an exported model folder; copy it instead")
    state = checkpoint.load(source)
    cfg = checkpoint.config_of(state, source)
    model, _, sp = loading.load_model(source)   # the weights checked against their config
    cache.remove_crashed(folder, "export")   # the half-written export.tmp<pid> of an export that was killed
    _check_target(folder, model.state_dict())
    progress = state.get("progress", {})
    trained = {"step": progress.get("step"), "epoch": progress.get("epoch"),
               "best_val_elbo_per_token": progress["best"] if math.isfinite(progress.get("best", math.inf)) else None}
    header = {"model_type": cfg.arch.model, "vocab_size": sp.get_piece_size(),
              "special_ids": {"pad": 0, "unk": 1, "bos": 2, "eos": 3},
              "parameters": model.num_params(), "config": asdict(cfg), "trained": trained,
              "exported_from": {"checkpoint": os.path.basename(source),
                                "date": datetime.date.today().isoformat()}}
    card = model_card(header, val_records(os.path.dirname(source))).encode("utf-8")
    os.makedirs(folder, exist_ok=True)   # an earlier export keeps its own mode, group and mount
    staged = os.path.join(folder, f"export.tmp{os.getpid()}")   # on the folder's own file system
    try:
        modelfolder.write(staged, model.state_dict(), header, checkpoint.tokenizer_bytes(state))
        for name in RANKING_FILES:   # the run's ranking travels with it (rank "auto")
            src = os.path.join(os.path.dirname(source), name)
            if os.path.isfile(src):
                shutil.copyfile(src, os.path.join(staged, name))
        pathlib.Path(staged, CARD).write_bytes(card)
        check_stop()
        _move_in(staged, folder)
    except OSError as e:   # named by the folder asked for, not the staged copy's files
        raise OSError(e.errno, e.strerror or str(e), folder) from None
    finally:
        if os.path.isdir(staged):
            shutil.rmtree(staged)
    return source


def _move_in(staged: str, folder: str) -> None:
    """The staged files in place of the earlier export's, only once all are written, one rename
    each (every file new: a link there, as a hub cache's snapshot links into its blobs, is never
    written through): the earlier export's ranking files this run lacks go first, config.json,
    which holds the weights' hash, last, so a folder stopped among the renames is refused at load."""
    new = os.listdir(staged)
    for name in set(RANKING_FILES) - set(new):
        if os.path.lexists(os.path.join(folder, name)):
            os.remove(os.path.join(folder, name))
    for name in sorted(new, key=lambda n: n == modelfolder.CONFIG):
        os.replace(os.path.join(staged, name), os.path.join(folder, name))


def _check_target(folder: str, weights: dict) -> None:
    """DIR is new, empty, or an earlier export (whose files are replaced; results the commands
    wrote into it stay when it holds these very weights, byte for byte): never a run folder, a
    folder of other files, or an export of other weights with their results beside it."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise InputError(f"{folder} is a file; give a folder to export into")
    if os.path.isdir(folder) and not os.access(folder, os.W_OK | os.X_OK):   # found before the work, not after
        raise OSError(errno.EACCES, os.strerror(errno.EACCES), folder)
    if not os.path.isdir(folder) or not os.listdir(folder):
        return
    names = set(os.listdir(folder))
    others = sorted(n for n in names - {*modelfolder.FILES, CARD, *RANKING_FILES}
                    if not n.startswith(RESULTS))
    if others or not modelfolder.is_model_folder(folder):   # a README.md alone is someone's, not an export's
        shown = others or sorted(names)
        raise InputError(f"{folder} already holds other files ({', '.join(shown[:3])}); "
                         "export into a new or empty folder")
    results = sorted(n for n in names if n.startswith(RESULTS))
    if results and not _holds(folder, weights):   # another run of the same name and step is other weights too
        raise InputError(f"{folder} holds an export of other weights and what was measured of them "
                         f"({results[0]}, ...): export into a new folder, or remove those files first")


def _holds(folder: str, weights: dict) -> bool:
    """Whether an earlier export's model.safetensors is what exporting these weights writes."""
    path = os.path.join(folder, modelfolder.WEIGHTS)
    try:
        return os.path.isfile(path) and cache.file_sha256(path) == modelfolder.weights_sha256(weights)
    except OSError:
        return False


def val_records(run_dir: str) -> list[dict]:
    """The validation lines of the run's metrics.jsonl (none when it has no such file)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                r = json.loads(line)
            except ValueError:   # a line cut by a kill: the others still count
                continue
            if isinstance(r, dict) and r.get("split") == "val":
                records.append(r)
    return records


def model_card(header: dict, vals: list[dict]) -> str:
    cfg, arch = header["config"], header["config"]["arch"]
    data = ("DailyDialog (Li et al., 2017), its train split" if cfg["data"] == "dailydialog"
            else f"the dialogues of {os.path.basename(cfg['data'])}")
    if cfg.get("max_dialogues"):
        data += f", first {cfg['max_dialogues']} dialogues of each split"
    t = header["trained"]
    has_kl = FAMILIES[header["model_type"]].kl   # HRED and DialogWAE have no KL term to weigh
    dailydialog = cfg["data"] == "dailydialog"
    tags = dict.fromkeys(["dialogue", header["model_type"], "vhred", "safetensors"])   # a VHRED's type once
    lines = ["---",   # the metadata a model hub reads
             "library_name: vhred", f"tags: [{', '.join(tags)}]",
             *(["datasets: [daily_dialog]"] if dailydialog else []),
             *(["license: other   # the training data's terms govern the weights",
                "license_name: dailydialog-cc-by-nc-sa-4.0",
                "license_link: https://creativecommons.org/licenses/by-nc-sa/4.0/"] if dailydialog else
               ["license: other   # the terms of the dialogues the model was trained on",
                "license_name: training-data-terms   # add license_link: the address of those terms"]),
             "---", "",
             f"# {cfg['name']}: a {header['model_type'].upper()} dialogue model (vhred)", "",
             f"Exported by `vhred export` on {header['exported_from']['date']} from "
             f"{header['exported_from']['checkpoint']} (step {t.get('step')}, epochs completed: {t.get('epoch')}); "
             f"{header['parameters']:,} parameters, a SentencePiece vocabulary of {header['vocab_size']}.", "",
             f"- Data: {data}; utterances cut to {cfg['max_utt_len']} tokens, {cfg['max_context']} context turns.",
             "- Model: " + ", ".join(f"{k}={v}" for k, v in arch.items()) + ".",
             f"- Training: {cfg['epochs']} epochs (max_steps {cfg['max_steps']}), batch {cfg['batch_size']}, "
             f"lr {cfg['lr']}, " + (f"{kl_schedule(cfg)}, " if has_kl else "") +
             f"seed {cfg['seed']}. The full config is config.json's \"config\".", ""]
    lines += validation_table(vals, has_kl)
    lines += ["## Load it", "", "From this folder:", "", "```python", "import vhred",
              'bot = vhred.load(".")   # this folder', 'print(bot.respond(["Hi! Where is the station?"])[0].text)',
              "```", "",
              "or `vhred chat --checkpoint .` (every command's --checkpoint takes the folder). "
              "The weights are a safetensors file: `safetensors.torch.load_file(\"model.safetensors\")` "
              "reads them without vhred (docs/export.md of the vhred repository).", ""]
    return "\n".join(lines)


def validation_table(vals: list[dict], has_kl: bool = True) -> list[str]:
    if not vals:
        return ["No validation figures: the run folder held no metrics.jsonl.", ""]
    finite = [r for r in vals if math.isfinite(r.get("elbo_per_token", math.inf))] or vals   # training skips a NaN
    best = min(finite, key=lambda r: r.get("elbo_per_token", math.inf))
    rows = [("best", best)] + ([("last", vals[-1])] if vals[-1] is not best else [])
    out = ["## Validation (from the run's metrics.jsonl)", "",
           "| | step | " + " | ".join(VAL_FIGURES) + " |", "|---|---|" + "---|" * len(VAL_FIGURES)]
    for name, r in rows:
        cells = ["–" if k == "kl_per_utt" and not has_kl else f"{r[k]:.3f}" if isinstance(r.get(k), float)
                 else str(r.get(k, "")) for k in VAL_FIGURES]
        out.append(f"| {name} | {r.get('step')} | " + " | ".join(cells) + " |")
    loss = ("the negative ELBO per token (lower is better), an upper bound on the NLL" if has_kl else
            "the reconstruction loss per token (lower is better): this family has no KL term, so it is no ELBO")
    return out + ["", f"elbo_per_token: {loss}; ppl: exp of it; kl_per_utt: KL of the posterior from the prior "
                  "per utterance (– without a KL term); active_units: latent dimensions the model uses.", ""]


def kl_schedule(cfg: dict) -> str:
    """The KL weight's schedule in words, as vhred/schedule.py applies it, with free bits."""
    warmup = cfg["kl_warmup_steps"]
    if cfg["kl_schedule"] == "constant" or not warmup:
        how = f"KL weight {cfg['kl_max']}"
    elif cfg["kl_schedule"] == "cyclical":
        cycle = kl_cycle(cfg["kl_cycle_steps"], warmup)
        how = f"KL weight cyclical: each {cycle} steps rises over {warmup} to {cfg['kl_max']}"
    else:
        how = f"KL weight rising over {warmup} steps to {cfg['kl_max']}"
    return how + (f", free bits {cfg['free_bits']} nats a dimension" if cfg.get("free_bits") else "")


@command
def main(argv=None):
    p = Parser(prog=program("python -m vhred.export"),
               description="Export a trained model as model.safetensors + config.json + "
                           "tokenizer.model + a README.md model card.")
    p.add_argument("run", help="a run folder (its best.pt, else last.pt) or a .pt checkpoint")
    p.add_argument("dir", help="the folder to write (new, empty, or an earlier export to replace)")
    args = p.parse_args(argv)
    if not args.dir.strip():
        raise InputError("the folder to write is empty; give one, e.g. exported/my-model")
    source = export(args.run, args.dir)
    ranking = [f for f in RANKING_FILES if os.path.isfile(os.path.join(args.dir, f))]
    print(f"exported {source} to {args.dir}: {', '.join((*modelfolder.FILES, CARD, *ranking))}")


if __name__ == "__main__":
    main()
