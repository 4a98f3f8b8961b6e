"""The `vhred` command: one program, one subcommand per job.

    vhred train --config configs/dailydialog-cpu.yaml   (= python -m vhred.train ...)
    vhred chat | generate | eval | rank | bench | serve | plot | export | latent ...

Each subcommand is the module's own main(argv), so `python -m vhred.<module>` keeps working and
both spellings share every flag, default and error message. A subcommand's module is imported
only when it runs: `vhred serve` never pays for matplotlib, `vhred --help` for torch.
"""
import difflib
import importlib
import sys

from . import cli
from .stops import catch_stops_while_starting

# subcommand: (module, what it does)
COMMANDS = {
    "train": ("vhred.train", "train a model (VHRED, HRED, CVAE, VHCR, DialogWAE) on DailyDialog or your own JSONL dialogues"),
    "chat": ("vhred.chat", "talk to a trained model in the terminal"),
    "generate": ("vhred.generate", "decode responses for each context of a JSONL file"),
    "eval": ("vhred.evaluate", "multi-sample BLEU, distinct-n and likelihood on a split"),
    "nearest": ("vhred.nearest", "the row with no model: training replies to the most similar turns, DialogWAE's protocol"),
    "rank": ("vhred.rank", "ranking: the true response among random ones, R@1/R@2/MRR per score"),
    "serve": ("vhred.serve", "HTTP JSON API and a browser chat page"),
    "bench": ("vhred.bench", "training speed and memory, or serving throughput (--serve)"),
    "plot": ("vhred.plot", "draw a run's training curves to curves.png"),
    "export": ("vhred.export", "write a run as model.safetensors + config.json + tokenizer.model + model card"),
    "critic": ("vhred.critic_train", "train a run's reply critic, which ranks candidates as a reader would (--rank critic)"),
    "answers": ("vhred.answers", "count which words answer each kind of wh-question in a run's training split (ranking)"),
    "kept": ("vhred.kept", "count how often blind readers kept each reply after each kind of turn (the shown order)"),
    "rate": ("vhred.rate", "blind rating: write a pack of replies (rate pack), score a rater's answers (rate score)"),
    "compare": ("vhred.compare", "train every model family for the same steps and tabulate their test metrics"),
    "latent": ("vhred.latent", "VHRED's latent variable: interpolate between z's, plot the latent space"),
    "checkpoint": ("vhred.checkpoint", "upgrade a format-1 checkpoint you trust; time the integrity checks"),
}


def usage() -> str:
    rows = "\n".join(f"  {name:10} {what}" for name, (_, what) in COMMANDS.items())
    return (f"usage: vhred <command> [options]\n\ncommands:\n{rows}\n\n"
            "`vhred <command> --help` lists a command's options.")


def _print(text: str, file=None):
    """print, as a command's output: a reader who left (`| head`) ends it quietly, a full disk in
    one line."""
    try:
        print(text, file=file or sys.stdout, flush=True)
    except BrokenPipeError:
        cli._quiet_stdout()
    except OSError as e:
        cli._quiet_stdout()
        cli.fail(f"{e.strerror} ({cli.STDOUT})", 1)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        _print(usage(), file=sys.stdout if argv else sys.stderr)
        sys.exit(0 if argv else 2)
    if argv[0] == "--version":
        from importlib.metadata import PackageNotFoundError, version
        try:
            _print(f"vhred {version('vhred')}")
        except PackageNotFoundError:   # run from a checkout that was never installed
            _print("vhred (not installed)")
        return
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else f"; one of {', '.join(COMMANDS)}"
        cli.fail(f"unknown command '{name}'{hint}")
    cli.INVOKED_AS = f"vhred {name}"   # what the subcommand's --help and usage lines show
    # importing torch takes seconds: a Ctrl-C meanwhile ends it quietly (a KeyboardInterrupt inside
    # numpy's import comes out as an ImportError); the command's main then handles its own
    catch_stops_while_starting()
    return importlib.import_module(COMMANDS[name][0]).main(rest)


if __name__ == "__main__":
    main()
