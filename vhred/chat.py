"""Talk to a trained model: python -m vhred.chat [--checkpoint runs/x/best.pt] [--num-samples 5]

Each turn shows the N best candidate responses by the ranking score (--rank: the run's reply
critic when it has one, else MMI with lambda 0.25; vhred/critic.py, vhred/scoring.py,
docs/rating.md), faulty ones last, in the readers' order when the run has kept.json (--order,
vhred/kept.py), else best first; the first
(or the one chosen with /pick K) joins the history, which is the model's context. Piped
input works too: one user turn per line, the candidates on stdout (numbered when N > 1, a
blank line after each turn; or one JSON line per turn with --json, scores included); notes
go to stderr. Ctrl-C ends it with exit code 130.
"""
import sys
from dataclasses import replace

import torch

from . import checkpoint, loading
from .cli import command, Parser, program
from .device import pick_device
from .errors import InputError
from .files import json_line
from .stops import interrupted_code
from .candidates import candidates, draws_made, ranking, readers_order_applies, same_reply, shown_filter, shown_note
from .decoding import DecodeOptions, RANKS
from .decoding import options_from_args
from .generate import add_decode_args
from .loading import chosen_checkpoint
from .render import encode_turns, pretty, response_text
from .sources import spaced

__all__ = ["Chat", "main", "pretty", "spaced"]   # pretty lives in vhred/render.py, spaced in vhred/sources.py

HELP = """commands:
  /reset           forget the conversation
  /history         show the conversation the model reads (its last turns)
  /samples N       show N candidates per turn
  /pick K          put candidate K of the last turn into the history instead of the first
  /temperature T   sample words at temperature T (default: beam search)
  /top_p P         sample words from the nucleus of probability P
  /greedy          greedy words (faster than beam search, fewer good replies)
  /beam            back to beam search (width {beam})
  /rank R          order candidates by R: auto (the run's critic if it has one, else mmi),
                   critic, mmi, pmi, ll or none
  /seed S          seed for the next turns
  /keep K          keep the z of candidate K for the next turns (a "style"; VHRED)
  /release         back to a new z from the prior each turn
  /prior           the prior p(z | conversation) for the next reply: its mean and spread
  /help            this text
  /quit            leave (Ctrl-D and Ctrl-C leave too)"""


MAX_SAMPLES = 100   # candidates per turn: more cannot be read, and each costs a decode


class CommandError(ValueError):
    """A /command the chat cannot run; its message is shown in brackets and the chat goes on."""


class Chat:
    """The conversation state and the commands that change it."""

    def __init__(self, model, cfg, sp, opts: DecodeOptions, out=print, note=None):
        self.model, self.cfg, self.sp, self.opts = model, cfg, sp, opts
        self.out = out
        self.note = note or (lambda msg: print(msg, file=sys.stderr))
        self.history: list[str] = []   # turns as the model reads them (corpus-style text)
        self.last: list[str] = []      # the last turn's candidates, the same way
        self.scores: list[float] = []  # and their ranking scores
        self.zs: list = []             # and the z each was decoded from (VHRED)
        self.kept = None               # a z held for the next turns (/keep), or None
        self.forgotten = 0             # turns dropped from the front of history (it holds max_context)

    def respond(self, text: str) -> list[str]:
        """Add the user's turn, return the candidates as readable text in the order shown; the
        first joins the history."""
        turn = spaced(text)
        pieces = self.sp.encode(turn)
        if len(pieces) > self.cfg.max_utt_len:
            self.note(f"(your turn was {len(pieces)} tokens; the model reads the first {self.cfg.max_utt_len})")
        if pieces and 2 * sum(p == self.sp.unk_id() for p in pieces) >= len(pieces):   # emoji, another script
            self.note("(most of your turn is outside the model's vocabulary; it reads those parts as unknown "
                      "words, so the replies answer little of it)")
        self.history.append(turn)
        context = encode_turns(self.sp, self.history, self.cfg.max_utt_len, self.cfg.max_context)
        opts = self.opts   # its seed as is: a turn gives what bot.respond(history, seed) gives
        z = None if self.kept is None else self.kept.unsqueeze(0)           # (1, Z)
        keep = shown_filter(self.sp, self.cfg, opts)
        [responses] = candidates(self.model, [context], opts,   # the best N of draws x N, in the order shown
                                 same=same_reply(self.sp), z=z, keep=keep, last_turns=[turn])
        note = shown_note(responses, opts.num_samples, keep, draws_made(self.model, opts))
        if note:
            self.note(f"({note})")
        self.last = [self.sp.decode(r[0]) for r in responses]
        self.scores = [r[1] for r in responses]
        self.zs = [r.z for r in responses]
        self.history.append(self.last[0] if self.last else "")
        self.forgotten += max(0, len(self.history) - self.cfg.max_context)
        self.history = self.history[-self.cfg.max_context:]
        return [response_text(self.sp, r[0], opts.max_len) for r in responses]

    def command(self, line: str) -> bool:
        """Run a /command; False means quit."""
        name, _, arg = line[1:].strip().partition(" ")
        if name in ("quit", "exit", "q"):
            return False
        run = getattr(self, f"_cmd_{name}", None) if name.isidentifier() else None
        try:
            if run is None:
                self.note(f"(unknown command /{name}; /help lists them)")
            else:
                run(arg.strip())
        except (CommandError, InputError) as e:   # InputError: what this model cannot do (DialogWAE's /prior)
            self.note(f"({e})")
        except (ValueError, OverflowError):   # int() / float() of the argument
            self.note(f"(/{name} needs a whole number, as /{name} 2)" if _is_number(arg) else f"(/{name} needs a number)")
        return True

    # --- the /commands, one method each ---

    def _cmd_reset(self, arg):
        self.history, self.last, self.scores, self.zs, self.forgotten = [], [], [], [], 0
        self.kept = None   # a fresh conversation: a z kept with /keep belonged to the old one
        self.note("(conversation reset)")

    def _cmd_history(self, arg):
        if not self.history:
            self.note("(the history is empty: nothing said yet)")
        elif self.forgotten:   # the context is the last max_context turns: older ones are gone
            self.note(f"({self.forgotten} earlier turn{'s' * (self.forgotten > 1)} not shown: the model reads "
                      f"the last {self.cfg.max_context})")
        for i, turn in enumerate(self.history):
            self.out(f"{'you' if (len(self.history) - i) % 2 == 0 else 'bot'}: {pretty(turn)}")

    def _cmd_samples(self, arg):
        self._set(num_samples=_bounded(int(arg), 1, MAX_SAMPLES, "samples"))
        n = self.opts.num_samples
        self.note(f"(showing {n} candidate{'s' if n > 1 else ''} per turn)")

    def _set(self, **changes):
        """Change decoding options only to a whole that decodes (n x beam within its cap, say):
        a value refused here is a note; one refused at the next turn would end the chat."""
        self.opts = replace(self.opts, **changes).check()

    def _cmd_pick(self, arg):
        k = self._candidate(arg)
        self.history[-1] = self.last[k - 1]
        self.note(f"(candidate {k} is now the reply in the history)")

    def _cmd_temperature(self, arg):   # the range of --temperature (DecodeOptions.check)
        self._set(temperature=float(arg), method="sample")
        self.note(f"(sampling words at temperature {self.opts.temperature})")

    def _cmd_top_p(self, arg):
        self._set(top_p=float(arg), method="sample")
        self.note(f"(sampling words with top_p {self.opts.top_p})")

    def _cmd_greedy(self, arg):
        self.opts.method = "greedy"
        self.note("(greedy words; VHRED candidates still differ through z)")

    def _cmd_beam(self, arg):
        self._set(method="beam")
        self.note(f"(beam search, width {self.opts.beam}; VHRED candidates still differ through z)")

    def _cmd_rank(self, arg):
        if arg not in RANKS:
            raise CommandError(f"/rank takes one of {', '.join(RANKS)}")
        ranked_by = ranking(self.model, replace(self.opts, rank=arg))   # refuses a critic the model lacks
        self.opts.rank = arg
        self.note(f"(candidates ranked by {ranked_words(ranked_by, self.opts, self.model.answers is not None)})")

    def _cmd_seed(self, arg):
        self.opts.seed = _bounded(int(arg), 0, 2 ** 63 - 1, "seed")
        self.note(f"(seed {self.opts.seed})")

    def _cmd_keep(self, arg):
        self._need_latent()
        k = self._candidate(arg)
        if self.zs[k - 1] is None:   # drawn by a run of --pool-with: its z is not this model's
            raise CommandError(f"candidate {k} was drawn by a pooled run: keep one this model drew")
        self.kept = self.zs[k - 1]
        words = f"{self.opts.method} search gives one reply per turn; /temperature T for variants" \
            if self.opts.method != "sample" else "replies differ only by their sampled words"
        self.note(f"(keeping the z of candidate {k} for the next turns: {words}; /release to let go)")

    def _cmd_release(self, arg):
        self._need_latent()
        if self.kept is None:
            self.note("(no z is kept: each candidate already draws its own; /keep K keeps one)")
            return
        self.kept = None
        self.note("(a new z from the prior for each candidate again)")

    def _cmd_prior(self, arg):
        """p(z | history) for the next reply: how far its mean is from 0 and how wide it is."""
        self._need_latent()
        from .latent import prior
        turns = self.history or [""]
        mean, logvar = (t[0] for t in prior(self.model, [encode_turns(self.sp, turns, self.cfg.max_utt_len,
                                                                        self.cfg.max_context)]))
        sigma = torch.exp(0.5 * logvar)
        top = torch.argsort(mean.abs(), descending=True)[:5].tolist()
        dims = ", ".join(f"z{i} {float(mean[i]):+.2f}±{float(sigma[i]):.2f}" for i in top)
        self.out(f"prior for the next reply: |mean| {float(mean.norm()):.2f}, sigma from {float(sigma.min()):.2f} "
                 f"to {float(sigma.max()):.2f} (mean {float(sigma.mean()):.2f}); furthest from 0: {dims}"
                 + (" [a z is kept: /release to sample from it]" if self.kept is not None else ""))

    def _cmd_help(self, arg):
        self.note(HELP.format(beam=self.opts.beam))

    def _candidate(self, arg) -> int:
        if not self.last:
            raise CommandError("no candidates yet: say something first")
        return _bounded(int(arg), 1, len(self.last), "the candidate")

    def _need_latent(self):
        if not self.model.latent:
            raise CommandError("this is an HRED model: it has no latent z")


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _bounded(value, lo, hi, name):
    if not lo <= value <= hi:   # NaN fails this too
        raise CommandError(f"{name} must be between {lo} and {hi}")
    return value


def read_lines(interactive: bool, prompt_on_stdout: bool = True):
    """User turns: from the terminal with a prompt and line editing, or from a pipe. The prompt
    goes to stderr when stdout must hold only replies (stdout sent to a file or a pipe)."""
    if hasattr(sys.stdin, "reconfigure"):   # bytes that are not UTF-8 read as U+FFFD: no crash, no raw bytes echoed
        sys.stdin.reconfigure(errors="replace")
    if interactive:
        try:
            import readline  # noqa: F401  (arrow keys and history in input())
        except ImportError:
            pass
        while True:
            if prompt_on_stdout:
                yield input("you> ")
            else:
                print("you> ", end="", file=sys.stderr, flush=True)
                yield input()
    else:
        for line in sys.stdin:
            yield line.rstrip("\n")


@command
def main(argv=None):
    p = Parser(prog=program("python -m vhred.chat"),
               description="Chat with a trained model (VHRED, HRED, CVAE, VHCR or DialogWAE).")
    add_decode_args(p)
    p.add_argument("--json", action="store_true", help="one JSON line per turn on stdout (/history and /prior on stderr)")
    args = p.parse_args(argv)
    if not 1 <= args.num_samples <= MAX_SAMPLES:   # the same cap as /samples, said before the general one
        raise InputError(f"--num-samples must be between 1 and {MAX_SAMPLES} in the chat, got {args.num_samples}")
    opts = options_from_args(args)
    path = checkpoint.resolve(chosen_checkpoint(args.checkpoint))
    model, cfg, sp = loading.load_model(path, pick_device(args.device), args.pool_with)
    ranking(model, opts)   # refuse a ranking this model cannot do before the first turn
    interactive = sys.stdin.isatty()
    told = (lambda msg: print(msg, file=sys.stderr)) if args.json else print   # --json: stdout holds turns only
    chat = Chat(model, cfg, sp, opts, out=told)
    if interactive:
        print(banner(path, cfg, opts, ranking(model, opts), args.pool_with, model.answers is not None,
                     readers_order_applies(model, opts)), file=sys.stderr)
    try:
        # the prompt goes where readline can redraw it while a line is edited: the terminal, when
        # stdout is one (--json included: a person reads it there); else stderr, so a file gets replies only
        for line in read_lines(interactive, prompt_on_stdout=sys.stdout.isatty()):
            if not chat_turn(chat, line.strip(), args.json, interactive):
                break
    except EOFError:
        if interactive:
            print(file=sys.stderr)
    except KeyboardInterrupt as e:   # Ctrl-C, or SIGTERM (cli.command)
        if interactive:
            print(file=sys.stderr)
        sys.exit(interrupted_code(e))


def banner(path: str, cfg, opts, ranked_by: str = "mmi", pooled=(), answers: bool = False,
           readers: bool = False) -> str:
    """The first line of an interactive chat: which model it is, where it was loaded from, what
    else draws candidates and what orders them (answers: with the run's answer score after a
    wh-question, vhred/answers.py; readers: the chosen ones shown in the readers' order, vhred/kept.py)."""
    by = ranked_words(ranked_by, opts, answers)
    shared = f" (drawn with {', '.join(pooled)}, whose rankings join)" if pooled else ""
    n = opts.num_samples
    shown = "shown in the order readers kept such replies before" if readers else "best first"
    return (f"vhred chat: {cfg.arch.model} from {path}, {n} candidate{'s' if n != 1 else ''} per turn{shared}, "
            f"ranked by {by}, {shown}: the first joins the conversation (/pick K for another). "
            f"/help for commands, Ctrl-D to leave.")


def ranked_words(ranked_by: str, opts, answers: bool) -> str:
    """What orders the candidates, in words (the banner and /rank): the ranking, and the answer
    score beside it when the run has one and it counts (candidates.plus_answers)."""
    by = RANKED_BY.get(ranked_by, ranked_by)
    if answers and ranked_by in ("critic", "mmi") and opts.answer_weight:
        by += " and what answers a wh-question"
    return by


# what each --rank orders the candidates by, in the words the banner and /rank use
RANKED_BY = {"critic": "its reply critic", "none": "decoding order", "mmi": "the MMI score",
             "pmi": "PMI (log p(r | c) - log p(r))", "ll": "likelihood"}


def chat_turn(chat: Chat, line: str, as_json: bool, interactive: bool) -> bool:
    """Answer one line of input (a turn or a /command); False ends the chat."""
    if not line:
        return True
    if line.startswith("/"):
        return chat.command(line)
    responses = chat.respond(line)
    if as_json:
        row = {"user": line, "responses": responses, "scores": [round(s, 4) for s in chat.scores],
               "score": ranking(chat.model, chat.opts) if chat.opts.rank != "none" else "ll_decode"}
        print(json_line(row), flush=True)   # never a bare NaN: any JSON parser reads it
        return True
    if chat.opts.num_samples == 1 and responses:   # numbered by what was asked: a pipe reads one format
        print(responses[0] if not interactive else f"bot> {responses[0]}", flush=True)
    else:
        for i, r in enumerate(responses, 1):
            print(f"{'bot ' if interactive else ''}{i}. {r}", flush=True)
    if not interactive:
        print(flush=True)   # a blank line ends each turn's answer: turns stay apart in a pipe
    return True


if __name__ == "__main__":
    main()
