"""Talk to a trained model: python -m vhred.chat [--checkpoint runs/x/best.pt] [--num-samples 5]

Each turn shows N candidate responses; the first (or the one chosen with /pick K) joins the
history, which is the model's context. Piped input works too: one user turn per line, the
candidates on stdout (numbered when N > 1, or one JSON line per turn with --json); notes go to
stderr.
"""
import argparse
import json
import re
import sys
from dataclasses import replace

from . import checkpoint
from .cli import command
from .device import pick_device
from .generate import DecodeOptions, add_decode_args, encode_turns, generate, newest_checkpoint, options_from_args

HELP = """commands:
  /reset           forget the conversation
  /history         show the conversation so far
  /samples N       show N candidates per turn
  /pick K          put candidate K of the last turn into the history instead of the first
  /temperature T   sample words at temperature T (default: greedy words)
  /top_p P         sample words from the nucleus of probability P
  /greedy          back to greedy words
  /seed S          seed for the next turns
  /help            this text
  /quit            leave (Ctrl-D and Ctrl-C leave too)"""


def spaced(text: str) -> str:
    """Space punctuation off as the training text has it ("Hi, you?" -> "Hi , you ?")."""
    return re.sub(r"(?<=\w)([,!?;:]|\.(?=\s|$))", r" \1", text)


def pretty(text: str) -> str:
    """Undo that spacing for display ("Hi , you ?" -> "Hi, you?", "I ’ m" -> "I'm")."""
    text = re.sub(r"(\w) ?[’'] ?(m|s|t|re|ve|ll|d)\b", r"\1'\2", text)
    return re.sub(r" ([,.!?;:%])(?=\s|$)", r"\1", text)


class CommandError(ValueError):
    """A /command the chat cannot run; its message is shown in brackets and the chat goes on."""


class Chat:
    """The conversation state and the commands that change it."""

    def __init__(self, model, cfg, sp, opts: DecodeOptions, out=print, note=None):
        self.model, self.cfg, self.sp, self.opts = model, cfg, sp, opts
        self.out = out
        self.note = note or (lambda msg: print(msg, file=sys.stderr))
        self.history: list[str] = []
        self.last: list[str] = []
        self.turn = 0

    def respond(self, text: str) -> list[str]:
        """Add the user's turn, return the candidates; the first joins the history."""
        text = text.replace("’", "'")   # typographic apostrophes as the corpus writes them
        pieces = self.sp.encode(spaced(text))
        if len(pieces) > self.cfg.max_utt_len:
            self.note(f"(your turn was {len(pieces)} tokens; the model reads the first {self.cfg.max_utt_len})")
        self.history.append(spaced(text))
        context = encode_turns(self.sp, self.history, self.cfg.max_utt_len, self.cfg.max_context)
        n = self.opts.num_samples
        # draw twice as many when repeats are dropped, so N distinct ones usually remain
        opts = replace(self.opts, seed=self.opts.seed + self.turn,
                       num_samples=2 * n if self.opts.dedup else n)
        self.turn += 1
        [responses] = generate(self.model, [context], opts)
        self.last = [self.sp.decode(ids) for ids, _ in responses[:n]]
        self.history.append(self.last[0] if self.last else "")
        self.history = self.history[-self.cfg.max_context:]
        return [pretty(r) for r in self.last]

    def command(self, line: str) -> bool:
        """Run a /command; False means quit."""
        name, _, arg = line[1:].strip().partition(" ")
        arg = arg.strip()
        try:
            if name in ("quit", "exit", "q"):
                return False
            elif name == "reset":
                self.history, self.last = [], []
                self.note("(conversation reset)")
            elif name == "history":
                for i, turn in enumerate(self.history):
                    self.out(f"{'you' if (len(self.history) - i) % 2 == 0 else 'bot'}: {pretty(turn)}")
            elif name == "samples":
                self.opts.num_samples = _bounded(int(arg), 1, 100, "samples")
                self.note(f"(showing {self.opts.num_samples} candidates per turn)")
            elif name == "pick":
                if not self.last:
                    raise CommandError("nothing to pick yet")
                k = _bounded(int(arg), 1, len(self.last), "pick")
                self.history[-1] = self.last[k - 1]
                self.note(f"(candidate {k} is now the reply in the history)")
            elif name == "temperature":
                self.opts.temperature = _bounded(float(arg), 1e-3, 100.0, "temperature")
                self.opts.method = "sample"
                self.note(f"(sampling words at temperature {self.opts.temperature})")
            elif name == "top_p":
                self.opts.top_p = _bounded(float(arg), 1e-3, 1.0, "top_p")
                self.opts.method = "sample"
                self.note(f"(sampling words with top_p {self.opts.top_p})")
            elif name == "greedy":
                self.opts.method = "greedy"
                self.note("(greedy words; VHRED candidates still differ through z)")
            elif name == "seed":
                self.opts.seed, self.turn = _bounded(int(arg), 0, 2 ** 63 - 1, "seed"), 0
                self.note(f"(seed {self.opts.seed})")
            elif name == "help":
                self.note(HELP)
            else:
                self.note(f"(unknown command /{name}; /help lists them)")
        except CommandError as e:
            self.note(f"({e})")
        except (ValueError, OverflowError):   # int() / float() of the argument
            self.note(f"(/{name} needs a number)")
        return True


def _bounded(value, lo, hi, name):
    if not lo <= value <= hi:   # NaN fails this too
        raise CommandError(f"{name} must be between {lo} and {hi}")
    return value


def read_lines(interactive: bool):
    """User turns: from the terminal with a prompt and line editing, or from a pipe."""
    if interactive:
        try:
            import readline  # noqa: F401  (arrow keys and history in input())
        except ImportError:
            pass
        while True:
            yield input("you> ")
    else:
        for line in sys.stdin:
            yield line.rstrip("\n")


@command
def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m vhred.chat", description="Chat with a trained VHRED / HRED model.")
    add_decode_args(p)
    p.add_argument("--json", action="store_true", help="one JSON line per turn on stdout")
    args = p.parse_args(argv)
    opts = options_from_args(args)
    model, cfg, sp = checkpoint.load_model(args.checkpoint or newest_checkpoint(), pick_device(args.device))
    interactive = sys.stdin.isatty()
    chat = Chat(model, cfg, sp, opts)
    if interactive:
        print(f"vhred chat ({cfg.arch.model}, {opts.num_samples} candidates per turn). /help for commands, "
              "Ctrl-D to leave.", file=sys.stderr)
    try:
        for line in read_lines(interactive):
            if not chat_turn(chat, line.strip(), args.json, interactive):
                break
    except EOFError:
        if interactive:
            print(file=sys.stderr)
    except KeyboardInterrupt:
        if interactive:
            print(file=sys.stderr)
        sys.exit(130)


def chat_turn(chat: Chat, line: str, as_json: bool, interactive: bool) -> bool:
    """Answer one line of input (a turn or a /command); False ends the chat."""
    if not line:
        return True
    if line.startswith("/"):
        return chat.command(line)
    responses = chat.respond(line)
    if as_json:
        print(json.dumps({"user": line, "responses": responses}, ensure_ascii=False), flush=True)
    elif len(responses) == 1:
        print(responses[0] if not interactive else f"bot> {responses[0]}", flush=True)
    else:
        for i, r in enumerate(responses, 1):
            print(f"{'bot ' if interactive else ''}{i}. {r}", flush=True)
    return True


if __name__ == "__main__":
    main()
