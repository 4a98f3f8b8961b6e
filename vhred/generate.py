"""Responses for a file of contexts (`vhred generate`): N per context, z drawn from the prior, ranked.

    python -m vhred.generate --checkpoint runs/x/best.pt --input contexts.jsonl \\
        --output samples.jsonl --num-samples 10

Input lines are {"context": ["utt", ...]}; each output line adds "samples": [...] (readable
text, as the chat shows them when ranked: --order, a response cut at --max-len ending in " …"), "scores" (the
ranking score of each, or its per-token log-likelihood with --rank none) and "line" (the input
line it answers: a malformed input line is skipped and named on stderr, the others are answered).

A context's responses depend only on the seed and that context (vhred/decoding.py), so a context
gives the same responses alone, in any batch, and in chat. This module is the command and its
file formats; decoding.py decodes, candidates.py chooses and ranks what is shown, render.py writes
the text.
"""
import argparse
import json
import os
import sys

from . import loading
from .candidates import candidates, ranking, same_reply, shown_filter
from .cli import command, Parser, program
from .decoding import BEAM_STOPS, DecodeOptions, options_from_args, ORDERS, RANKS, z_matrix
from .device import pick_device
from .errors import InputError
from .files import check_output, json_line, output_file, text_lines
from .render import encode_turns, response_text
from .sources import spaced


def add_decode_args(p: argparse.ArgumentParser, num_samples: int | None = None):
    """The decoding flags of chat, generate and eval, their defaults read from DecodeOptions."""
    d = DecodeOptions(num_samples=num_samples or DecodeOptions.num_samples)
    p.add_argument("--checkpoint", help="a run folder, .pt file or exported model folder (default: the newest runs/*/best.pt)")
    p.add_argument("--num-samples", type=int, default=d.num_samples, help="responses per context (default %(default)s)")
    p.add_argument("--method", choices=["greedy", "sample", "beam"],
                   help=f"greedy words (per sampled z for VHRED), sampled words, or beam search "
                        f"(default {d.method}; sample when --temperature, --top-k or --top-p shapes the words)")
    p.add_argument("--max-len", type=int, default=d.max_len, help="tokens per response (default %(default)s)")
    p.add_argument("--min-len", type=int, default=d.min_len, help="no end of turn before this many printing tokens (default %(default)s: never an empty reply; 0 allows one)")
    p.add_argument("--temperature", type=float, default=d.temperature, help="softmax temperature for --method sample (default %(default)s)")
    p.add_argument("--top-k", type=int, default=d.top_k, help="sample from the k most likely tokens, 0 for all (default %(default)s)")
    p.add_argument("--top-p", type=float, default=d.top_p, help="sample from the nucleus of this probability (default %(default)s)")
    p.add_argument("--beam", type=int, default=d.beam, help="beam width for --method beam (default %(default)s)")
    p.add_argument("--beam-stop", choices=BEAM_STOPS, default=d.beam_stop,
                   help="a beam search ends at its first ended reply, which readers keep more, or at the best "
                        "(fairseq's rule: likelier, longer replies; default %(default)s; docs/decoding.md)")
    p.add_argument("--no-dedup", dest="dedup", action="store_false", help="keep repeated responses of a context")
    p.add_argument("--no-clean", dest="clean", action="store_false",
                   help="rank responses with non-words, glued or repeated text like the others (by default "
                        "more draws replace them, and any still shown come after every clean one)")
    p.add_argument("--rank", choices=RANKS, default=d.rank,
                   help="choose the responses shown, best first, by the run's reply critic (critic: `vhred critic`), by "
                        "pointwise mutual information with the context (pmi), by per-token log-likelihood (ll), by "
                        "the MMI family (mmi: --mmi-lambda, --length-bonus), or not; auto: critic when the run has "
                        "one, else mmi (default %(default)s; see vhred/scoring.py, vhred/critic.py)")
    p.add_argument("--mmi-lambda", type=float, default=d.mmi_lambda,
                   help="--rank mmi (and critic's MMI term): weight of log p(r) taken off log p(r|c), per token (default %(default)s)")
    p.add_argument("--length-bonus", type=float, default=d.length_bonus,
                   help="--rank mmi (and critic's MMI term): score added per token of a reply; below 0 favours short ones (default %(default)s)")
    p.add_argument("--answer-weight", type=float, default=d.answer_weight,
                   help="--rank critic and mmi: weight of the answer score after a wh-question, when the run has "
                        "answers.json (`python -m vhred.answers`; default %(default)s)")
    p.add_argument("--order", choices=ORDERS, default=d.order,
                   help="the ranked replies shown: in order of how often blind readers kept each after this kind of "
                        "turn, when the run has kept.json (readers: `vhred kept`), or by the ranking score "
                        "(default %(default)s; docs/rating.md)")
    p.add_argument("--draws", type=int, default=d.draws,
                   help="responses decoded per one shown, 1 to 16: the best N of draws x N are shown (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="same seed, same responses (default %(default)s)")
    p.add_argument("--pool-with", action="append", default=[], metavar="RUN",
                   help="another run (of the same tokenizer; repeat for more) that draws an equal share of the "
                        "candidates, all ranked by the sum of every run's ranking score (default: none; docs/decoding.md#pooled-draws)")
    p.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu or cuda (default %(default)s)")


def read_contexts(path: str) -> tuple[list[list[str]], list, list[int], list[dict]]:
    """The contexts of a JSONL file ({"context": [...]} per line), each line's "z" (a list of
    floats to decode from, for VHRED) or None, each one's line number and its other fields (an
    "id": the output line keeps them). A malformed line is skipped and named on stderr, as
    training does with its data; a file with no good line is an error."""
    contexts, zs, linenos, extras, bad = [], [], [], [], []
    for lineno, line in enumerate(text_lines(path), 1):
        if not line.strip():
            continue
        why = context_line_error(line)
        if why:
            bad.append((lineno, why))
            continue
        obj = json.loads(line)
        contexts.append(obj["context"])
        zs.append(obj.get("z"))
        linenos.append(lineno)
        extras.append({k: v for k, v in obj.items() if k not in ("context", "z")})
    if not contexts:
        first = f": line {bad[0][0]}: {bad[0][1]}" if bad else ""
        raise InputError(f"{path} holds no contexts{first}")
    for lineno, why in bad[:10]:
        print(f"{path}: line {lineno}: skipped: {why}", file=sys.stderr)
    if len(bad) > 10:
        print(f"{path}: ... and {len(bad) - 10} more skipped lines", file=sys.stderr)
    return contexts, zs, linenos, extras


def context_line_error(line: str) -> str | None:
    """Why a line of a contexts file cannot be used, or None when it can."""
    expected = 'expected {"context": ["utterance", ...]} (and optionally "z": [numbers])'
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return f"{expected}: not valid JSON"
    if not isinstance(obj, dict) or "context" not in obj:
        return expected
    ctx, z = obj["context"], obj.get("z")
    if not (isinstance(ctx, list) and ctx and all(isinstance(u, str) for u in ctx)):
        return f'{expected}: "context" must be a non-empty list of strings'
    if not (z is None or (isinstance(z, list) and z and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in z))):
        return f'{expected}: "z" must be a list of numbers'
    return None


def _decodes(model, z) -> bool:
    """Whether this one z (or None) is one the model can decode from."""
    try:
        z_matrix(model, [z])
        return True
    except InputError:
        return False


def generate_file(model, cfg, sp, contexts: list[list[str]], opts: DecodeOptions, zs=None, batch_contexts: int = 64):
    """Yield (context, its responses as Response), batch by batch, with a progress bar that counts
    contexts. Context turns are read as they are written: corpus text, or spaced() user text."""
    from tqdm import tqdm
    zs = zs or [None] * len(contexts)
    keep = shown_filter(sp, cfg, opts)
    with tqdm(total=len(contexts), desc="generate", unit="context") as bar:
        for start in range(0, len(contexts), batch_contexts):
            chunk = contexts[start:start + batch_contexts]
            ids = [encode_turns(sp, c, cfg.max_utt_len, cfg.max_context) for c in chunk]
            z = z_matrix(model, zs[start:start + batch_contexts])
            found = candidates(model, ids, opts, same=same_reply(sp), z=z, keep=keep,   # as the chat
                               last_turns=[c[-1] if c else "" for c in chunk])
            bar.update(len(chunk))   # before the yield: a caller may stop at the last context
            yield from zip(chunk, found)


def replaceable_output(input_path: str, output: str) -> None:
    """Refuse an --output that writing would lose: the --input file itself, or a file that is not an
    earlier output of this command (a checkpoint, its tokenizer, a config). Also used by the eval
    scripts that write this command's lines."""
    check_output(output)
    if os.path.exists(output) and os.path.exists(input_path) and os.path.samefile(input_path, output):
        raise InputError(f"--output {output} is the --input file: writing it would lose the contexts "
                         "(and any line skipped); give another --output")
    if os.path.isfile(output) and not earlier_output(output):
        raise InputError(f"--output {output} exists and is not an earlier output of vhred generate: "
                         "writing it would lose it; give another --output")


def earlier_output(path: str) -> bool:
    """Whether path is empty or holds this command's lines (JSON objects with "samples"), the only
    file --output may replace. A file that does not start as a JSON object (a checkpoint, a
    tokenizer) is not read further; else its first line, however long its context."""
    try:
        with open(path, "rb") as f:
            start = f.read(4).removeprefix(b"\xef\xbb\xbf")
            if not start or not start.startswith(b"{"):
                return not start and f.tell() == 0
            first = (start + f.readline()).split(b"\n", 1)[0]
    except OSError:
        return False
    try:
        row = json.loads(first)
    except ValueError:
        return False
    return isinstance(row, dict) and "samples" in row


@command
def main(argv=None):
    p = Parser(prog=program("python -m vhred.generate"),
               description="Decode responses for each context of a JSONL file.")
    add_decode_args(p)
    p.add_argument("--input", required=True,
                   help='JSONL, one {"context": [...]} per line; "z": [numbers] decodes that line from this z')
    p.add_argument("--output", required=True, help="JSONL written with \"samples\" and \"scores\" lists per line")
    p.add_argument("--return-z", action="store_true",
                   help='add "z": the latent of each sample (VHRED), which "z" in an input line decodes again')
    args = p.parse_args(argv)
    opts = options_from_args(args)
    replaceable_output(args.input, args.output)
    contexts, zs, linenos, extras = read_contexts(args.input)   # a bad input file is refused before the model loads
    if args.return_z and args.pool_with:
        raise InputError("--return-z gives the latents of --checkpoint's draws only: leave out --pool-with")
    model, cfg, sp = loading.load_model(loading.chosen_checkpoint(args.checkpoint), pick_device(args.device),
                                           args.pool_with)
    try:
        z_matrix(model, zs)   # refuse a bad z or ranking before any decoding
    except InputError as e:   # name the first line whose z it is
        bad = next((n for n, z in zip(linenos, zs) if not _decodes(model, z)), None)
        raise InputError(f"{args.input}: line {bad}: {e}" if bad else str(e)) from None
    ranking(model, opts)
    if args.return_z and not model.latent:
        raise InputError("--return-z: this checkpoint is an HRED model, it has no latent variable z")
    answers = generate_file(model, cfg, sp, [[spaced(t) for t in c] for c in contexts], opts, zs)
    with output_file(args.output) as out:   # a regular file, replaced only when complete
        # the generator first: it ends its bar
        for (_, responses), ctx, lineno, extra in zip(answers, contexts, linenos, extras):
            out.write(json_line({**extra, **output_row(ctx, responses, sp, opts, args.return_z, lineno)}) + "\n")


def output_row(context: list[str], responses, sp, opts: DecodeOptions, with_z: bool, lineno: int | None = None) -> dict:
    row = {"context": context, "samples": [response_text(sp, r[0], opts.max_len) for r in responses],
           "scores": [round(r[1], 4) for r in responses]}
    if with_z and responses and responses[0].z is not None:
        row["z"] = [r.z.tolist() for r in responses]
    if lineno is not None:
        row["line"] = lineno   # the input line it answers (malformed lines are skipped)
    return row


if __name__ == "__main__":
    main()
