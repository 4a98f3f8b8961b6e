"""The full evaluation of a checkpoint on a split:

    python -m vhred.evaluate --checkpoint runs/x/best.pt [--protocol ours|dialogwae] [decoding flags]

Responses are decoded with the flags of vhred.generate, whose defaults are what the chat shows
(DecodeOptions). Two protocols score them against the one reference of each context:

  ours       every utterance that has a turn before it is a target (context: up to max_context
             earlier turns); multi-sample BLEU-1..4 precision / recall / F1 on
             vhred.metrics.text.tokenize, DialogWAE's BLEU on the same tokens, intra / inter /
             response distinct-1/2, mean length.
  dialogwae  DialogWAE's own evaluation, rule by rule (vhred/metrics/dialogwae.py): its targets,
             tokens, vocabulary, end token and BLEU / distinct formulas; its decoding (10 responses,
             greedy words per prior z, 40 steps) unless decoding flags say otherwise.

The likelihood side (skipped with --iw-samples 0) reports the negative ELBO per token, the
importance-weighted bound with K samples, KL per utterance and active units on the dialogues
that hold the scored targets. BLEU, distinct-n and length are computed on the model's own text,
the surface faults on the text shown (glued_before_text_out_share: how often the model glued a
sentence mark that the text out mended); the samples file holds contexts, reference and responses
as readable text (vhred.render.pretty), with flags for responses that reached the length limit
("cut") and that the model glued ("glued"). Writes results-<protocol>-<split>.json / .md and samples-<protocol>-<split>.jsonl
into the run folder, or into an exported model folder (--tag adds a suffix).
"""
import json
import os
import re
import sys
import time

from . import checkpoint, limits, loading
from .cli import command, Parser, program
from .config import MAX_INT
from .dataset import DialogueData
from .device import pick_device
from .errors import InputError
from .files import check_output, json_line, json_safe, output_file, output_files
from .lexicon import training_lexicon, training_stock
from .candidates import ranking
from .decoding import options_from_args, shapes_words
from .generate import add_decode_args, generate_file
from .loading import chosen_checkpoint
from .render import pretty, response_text
from .metrics import dialogwae
from .metrics.likelihood import elbo_metrics, iw_nll, perplexity
from .metrics.protocol import context_pairs, sample_metrics
from .metrics.stock import stock_metrics
from .metrics.surface import glued, surface_metrics
from .sources import split_dialogues

# DialogWAE's decoding, for the decoding flags a --protocol dialogwae run does not give
DIALOGWAE_DECODING = {"num_samples": dialogwae.SAMPLES, "method": "greedy", "max_len": dialogwae.MAX_TOKENS,
                      "min_len": 0, "dedup": False, "clean": False, "rank": "none"}   # an empty reply is a reply there


def likelihood_metrics(model, cfg, sp, dialogues, k: int, max_batches: int) -> dict:
    data = DialogueData.from_dialogues(dialogues, sp, cfg.max_utt_len, cfg.max_context)
    m = elbo_metrics(model, data, cfg.batch_size, max_batches, cfg.seed)
    iw = iw_nll(model, data, k, cfg.batch_size, max_batches, cfg.seed)
    return {"elbo_nll_per_token": m["elbo_per_token"], "elbo_ppl": m["ppl"],
            f"iw{k}_nll_per_token": iw, f"iw{k}_ppl": perplexity(iw),
            # DialogWAE's implicit prior has no KL in closed form (HRED no latent): none, not a 0 read as "unused"
            "kl_per_utt": m["kl_per_utt"] if model.kl else None, "active_units": m["active_units"],
            "reconstruction_nll_per_token": m["nll_per_token"]}


# What each metric says and which way is better, matched on the metric's name (first match wins)
LEGEND = [
    ("unseen_contexts", "", "unseen contexts: targets whose reply the training split does not hold after the same turn"),
    ("unseen", "higher", "unseen: only the targets whose reply the training split does not hold after the same turn "
                         "(DialogWAE's protocol; an exact copy of a reference scores up to 1.15 under its BLEU)"),
    ("seen_contexts", "", "seen contexts: targets whose reply the training split holds after the same turn"),
    ("seen", "", "seen: only the targets whose reply the training split holds after the same turn, where "
                 "recalling a training reply scores (higher is not better there)"),
    ("contexts", "", "contexts scored"),
    ("bleu", "higher", "BLEU-n: n-gram overlap of the responses with the one reference (precision: the mean over a "
                       "context's responses, recall: the best one, f1: their harmonic mean; averaged over contexts)"),
    ("distinct", "higher", "distinct-n: distinct n-grams / all n-grams (intra: among a context's responses, inter: "
                           "over all responses, response: within each response); higher is more varied"),
    ("-dist-", "higher", "DialogWAE's distinct-n, its formulas (intra: within each response, averaged over the "
                         "responses; inter: over one context's responses, averaged over the contexts)"),
    ("mean_length", "", "mean response length in tokens"),
    ("length", "", "DialogWAE's length: mean response length in words before </s>"),
    ("ppl", "lower", "perplexity: exp of the NLL bound per token"),
    ("nll_per_token", "lower", "negative log-likelihood per token in nats (elbo: the ELBO's bound, iwK: the tighter "
                               "importance-weighted bound, reconstruction: the decoder's term alone)"),
    ("kl_per_utt", "", "KL(posterior || prior) per utterance: how much z carries (0: the latent is unused; "
                       "–: the family has no KL in closed form, DialogWAE's implicit prior, or no latent, HRED)"),
    ("active_units", "higher", "latent dimensions whose posterior mean varies over the data (of z_dim)"),
    ("glued_before_text_out", "lower", "responses in which the model glued a sentence mark to the next word "
                                       "(\"25.How\"): the text out mends them (\"25. How\"), so glued_share, "
                                       "measured on the shown text, is 0"),
    ("stock_share", "", "stock_share: responses that are a turn the training split says whole 10 times or more "
                        "(\"OK.\", \"I see.\"; vhred/metrics/stock.py): such a reply fits after most turns and says "
                        "little; the human replies of DailyDialog's validation split, 6%"),
    ("words_per_reply", "", "words per response, split at spaces as shown"),
    ("_share", "lower", "surface faults of the shown text: the share of responses with a word never seen whole in "
                        "the training text (non_word), glued punctuation (glued), nothing printed (empty), a "
                        "repeated fragment (repeated), a mangled number or mark (mangled), or any of them "
                        "(vhred/metrics/surface.py)"),
]


def legend(metric: str) -> tuple[str, str | None]:
    """(which way is better: "higher", "lower" or "", its explanation or None) of a metric."""
    for key, better, meaning in LEGEND:
        if key in metric:
            return better, meaning
    return "", None


def markdown(results: dict, title: str) -> str:
    """The results as a table with a "better" column, then what each kind of metric means."""
    lines = [f"# {title}", "", "| metric | value | better |", "|---|---|---|"]
    meanings = []
    for key, value in results["metrics"].items():
        better, meaning = legend(key)
        shown = f"{value:.4f}" if isinstance(value, float) else "–" if value is None else f"{value}"
        lines.append(f"| {key} | {shown} | {better} |")
        if meaning and meaning not in meanings:
            meanings.append(meaning)
    lines += ["", *(f"- {m}" for m in meanings), "", f"Settings: {json.dumps(results['settings'])}"]
    if "decoding" in results:   # the options as decoded: "auto" resolved to the ranking used
        lines.append(f"Decoding: {json.dumps(results['decoding'])}")
    return "\n".join(lines) + "\n"


def parse_args(argv):
    # no abbreviated flags: --protocol dialogwae keeps the decoding flags given, found by their full names
    p = Parser(prog=program("python -m vhred.evaluate"), allow_abbrev=False,
               description="Multi-sample BLEU, distinct-n and likelihood of a checkpoint on a split.")
    add_decode_args(p)
    p.add_argument("--protocol", choices=["ours", "dialogwae"], default="ours",
                   help="ours: every turn after the first is a target, multi-sample BLEU-1..4 and distinct-n; "
                        "dialogwae: DialogWAE's targets, decoding and formulas, rule by rule (default %(default)s)")
    p.add_argument("--tag", default="", help="suffix of the result file names (default: none, or first<N> with "
                                             "--max-contexts N: a quick check never replaces a split's figures)")
    p.add_argument("--split", default="test", choices=["validation", "test"], help="the split to evaluate on (default %(default)s)")
    p.add_argument("--max-contexts", type=int, default=0, help="score only the first N contexts, 0 for all (default %(default)s)")
    p.add_argument("--iw-samples", type=int, default=50, help="K of the importance-weighted bound, 0 for no likelihood (default %(default)s)")
    args = p.parse_args(argv)
    limits.count("--max-contexts", args.max_contexts, 0, MAX_INT)
    limits.count("--iw-samples", args.iw_samples, 0, limits.MAX_IW_SAMPLES)
    check_tag(args.tag)
    if args.protocol == "dialogwae":
        given = {a.dest for a in p._actions for flag in a.option_strings
                 for arg in (argv if argv is not None else sys.argv[1:]) if arg.split("=")[0] == flag}
        for key, value in DIALOGWAE_DECODING.items():   # shaped words are sampled, as under --protocol ours
            if key not in given and not (key == "method" and shapes_words(args)):
                setattr(args, key, value)
    return args


def dialogues_of(dialogues, n_pairs: int):
    """The first dialogues that hold n_pairs targets: the likelihood over the same utterances."""
    used, count = [], 0
    for d in dialogues:
        if count >= n_pairs:
            break
        used.append(d)
        count += len(d) - 1
    return used


def check_tag(tag: str) -> None:
    if not re.fullmatch(r"[\w.-]{0,64}", tag):
        raise InputError(f"--tag must be up to 64 letters, digits, '.', '-' or '_' (it names files), got {tag!r}")


def report_name(protocol: str, split: str, tag: str = "", max_contexts: int = 0) -> str:
    """<protocol>-<split>, then the --tag, or without one first<N> for --max-contexts N: a quick
    check on a few contexts never replaces a whole split's figures."""
    tag = tag or (f"first{max_contexts}" if max_contexts else "")
    return f"{protocol}-{split}{tag and '-' + tag}"


def report_paths(run_dir: str, protocol: str, split: str, tag: str, max_contexts: int) -> list[str]:
    """The results as JSON and as Markdown, and the samples, that write_report writes."""
    name = report_name(protocol, split, tag, max_contexts)
    return [os.path.join(run_dir, f) for f in (f"results-{name}.json", f"results-{name}.md", f"samples-{name}.jsonl")]


# settings that leave the figures as they are: where the model was read from, on which device, the files' names
NEUTRAL_SETTINGS = ("checkpoint", "device", "tag", "out")


def check_replaces_its_own(path: str, checkpoint_file: str | None, settings: dict, hint: str) -> None:
    """Refuse, before the work, to replace a results file that holds another checkpoint file's
    figures or those of other settings: a second run under the same name (last.pt after best.pt,
    --iw-samples 0 after the hours of a whole split's bound) lost the first's without a word. A
    rerun of the same settings replaces it."""
    try:
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
    except (OSError, ValueError):   # none yet, or not a report: the write decides
        return
    if not isinstance(old, dict) or not isinstance(old.get("settings"), dict):
        return
    before = {k: v for k, v in old["settings"].items() if k not in NEUTRAL_SETTINGS}
    now = {k: v for k, v in json.loads(json.dumps(json_safe(settings))).items() if k not in NEUTRAL_SETTINGS}
    if checkpoint_file and isinstance(old.get("checkpoint"), str):
        before["checkpoint file"] = os.path.basename(old["checkpoint"])
        now["checkpoint file"] = os.path.basename(checkpoint_file)
    differ = [k for k in now if k in before and before[k] != now[k]]   # a key an older file lacks: not compared
    if differ:
        said = "; ".join(f"{k} {before[k]!r} there, {now[k]!r} now" for k in differ[:3])
        raise InputError(f"{path} holds the figures of other settings ({said}): {hint}")


def write_report(run_dir: str, results: dict, rows: list[dict], title: str) -> list[str]:
    """Write the samples, the results as JSON and as Markdown (named by report_name); returns the three paths."""
    settings = results["settings"]
    paths = report_paths(run_dir, results["protocol"], results["split"], settings["tag"], settings.get("max_contexts", 0))
    with output_files() as together:   # regular files, whole or not at all, and never new beside old
        with output_file(paths[2], together=together) as f:
            for row in rows:
                f.write(json_line(row) + "\n")
        with output_file(paths[0], together=together) as f:
            json.dump(json_safe(results), f, indent=1, allow_nan=False)
        with output_file(paths[1], together=together) as f:
            f.write(markdown(results, title))
    return paths


def decode(model, cfg, sp, pairs, opts):
    """Responses for each (context, reference): token ids, and rows for the samples file."""
    responses, rows = [], []
    answers = generate_file(model, cfg, sp, [c for c, _ in pairs], opts)
    for (_, found), (ctx, ref) in zip(answers, pairs):   # the generator first: it ends its progress bar
        ids, scores = [r[0] for r in found], [r[1] for r in found]
        responses.append(ids)
        rows.append({"context": [pretty(t) for t in ctx], "reference": pretty(ref),   # readable, as the samples
                     "samples": [response_text(sp, r, opts.max_len, mark_cut=False) for r in ids],
                     "cut": [len(r) >= opts.max_len for r in ids], "scores": [round(x, 4) for x in scores],
                     "glued": [bool(glued(sp.decode(r))) for r in ids]})   # as the model wrote it, before the mending
    return responses, rows


def ours(model, cfg, sp, dialogues, opts, max_contexts: int):
    """Our protocol: (metrics, rows)."""
    pairs = context_pairs(dialogues, cfg.max_context)[:max_contexts or None]
    responses, rows = decode(model, cfg, sp, pairs, opts)
    texts = [[sp.decode(r) for r in row] for row in responses]   # the model's own text
    return {"contexts": len(pairs), **sample_metrics(texts, [r for _, r in pairs])}, rows


def dialogwae_protocol(model, cfg, sp, dialogues, opts, max_contexts: int):
    """DialogWAE's protocol (vhred/metrics/dialogwae.py): (metrics, rows)."""
    pairs = dialogwae.targets(dialogues)[:max_contexts or None]
    responses, rows = decode(model, cfg, sp, pairs, opts)
    texts = [[(sp.decode(r), len(r) < opts.max_len) for r in row] for row in responses]
    metrics, seen = dialogwae.report(split_dialogues(cfg, "train"), pairs, texts)
    for row, s in zip(rows, seen):
        row["seen_in_training"] = s
    return metrics, rows


@command
def main(argv=None):
    args = parse_args(argv)
    opts = options_from_args(args)
    path = checkpoint.resolve(chosen_checkpoint(args.checkpoint))
    outs = report_paths(checkpoint.results_folder(path), args.protocol, args.split, args.tag, args.max_contexts)
    for out in outs:
        check_output(out)   # a folder one may not write in: found now, not after the evaluation
    check_replaces_its_own(outs[0], path, vars(args), "give --tag NAME to keep both, or delete it to replace them")
    model, cfg, sp = loading.load_model(path, pick_device(args.device), args.pool_with)
    resolved = ranking(model, opts)   # a ranking this model (or its pool) cannot do is refused first
    if opts.rank != "none" and not args.pool_with:   # with a pool, "auto" is each run's own: kept so
        opts.rank = resolved   # the report names the ranking used, "auto" resolved
    dialogues = split_dialogues(cfg, args.split)
    t0 = time.time()
    protocol = dialogwae_protocol if args.protocol == "dialogwae" else ours
    metrics, rows = protocol(model, cfg, sp, dialogues, opts, args.max_contexts)
    replies = [s for row in rows for s in row["samples"]]
    metrics.update(surface_metrics(replies, training_lexicon(cfg)))
    metrics.update(stock_metrics(replies, training_stock(cfg)))
    mended = [g for row in rows for g in row["glued"]]
    metrics["glued_before_text_out_share"] = sum(mended) / max(len(mended), 1)
    if args.max_contexts:   # both protocols have len(d) - 1 targets per dialogue
        dialogues = dialogues_of(dialogues, metrics["contexts"])
    if args.iw_samples:
        metrics.update(likelihood_metrics(model, cfg, sp, dialogues, args.iw_samples, 0))
    results = {"checkpoint": path, "model": cfg.arch.model, "split": args.split, "protocol": args.protocol,
               "metrics": metrics, "decoding": vars(opts), "settings": vars(args), "seconds": time.time() - t0}
    title = f"{cfg.arch.model} on the {args.split} split, {args.protocol} protocol ({os.path.basename(path)})"
    paths = write_report(checkpoint.results_folder(path), results, rows, title)
    print(markdown(results, title))
    print(f"wrote {', '.join(paths)}", file=sys.stderr)


if __name__ == "__main__":
    main()
