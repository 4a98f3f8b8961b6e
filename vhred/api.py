"""The Python API: load a checkpoint, answer a conversation, score candidate replies.

    import vhred
    bot = vhred.load("runs/dailydialog-cpu-vhred")           # a run folder, a .pt file or an exported folder
    for c in bot.respond(["Hi! Where is the station?"], n=3):
        print(f"{c.score:6.2f}  {c.text}")

It is a thin layer over what the commands use: DecodeOptions for every decoding default,
vhred.candidates for drawing, ranking and scoring replies, and the same one-line UserErrors
(vhred.errors) for anything a caller can get wrong. Public: load, Bot, Candidate.
"""
import os
from dataclasses import asdict, dataclass, field, fields
from types import SimpleNamespace

from . import checkpoint, loading
from .device import pick_device
from .errors import ConfigError, InputError
from .candidates import candidates, ranking, same_reply, shown_filter
from .decoding import DecodeOptions
from .decoding import NEUTRAL_SHAPING, options_from_args, z_matrix
from .render import encode_turns, history_read, response_text

__all__ = ["Bot", "Candidate", "load"]

# keyword options respond() takes: DecodeOptions' fields but num_samples (respond's n)
DECODING = {f.name: f.type for f in fields(DecodeOptions) if f.name != "num_samples"}


@dataclass(frozen=True)
class Candidate:
    """One reply: its text, its score (higher is better; from respond, see Bot.score) and, for VHRED, the
    latent z it was decoded from (a list of floats: pass it back as respond(..., z=...) to keep
    that "style" for another context; None for HRED). faulty: the text has a surface fault
    (a non-word, glued or repeated text); such replies come last, only when the draws (16n by
    default) held fewer than n good ones; not checked (False) under clean=False. A printed
    Candidate leaves z out: its 64 or more floats would bury the text."""
    text: str
    score: float
    z: list[float] | None = field(default=None, repr=False)
    faulty: bool = False


class Bot:
    """A trained model with its tokenizer and config, ready to answer; made by vhred.load.

    Attributes: config (the run's Config; config.arch.model names its family: "vhred", "hred", "cvae", "vhcr" or "dialogwae"),
    checkpoint (the .pt file or exported folder it came from), device ("cpu", "cuda:0", ...)."""

    def __init__(self, model, cfg, sp, path: str):
        self._model, self._sp = model, sp
        self.config = cfg
        self.checkpoint = path
        self.device = str(next(model.parameters()).device)

    def respond(self, history: list[str], n: int = 5, z: list[float] | None = None, **decoding) -> list[Candidate]:
        """Up to n replies to the conversation so far: the n best by the ranking, in the readers'
        order when the run has kept.json (order="score": best first; vhred/kept.py).

        history: the turns so far, oldest first; the last is the one to answer.
        decoding: DecodeOptions fields (method, temperature, top_k, top_p, max_len, min_len,
        beam, dedup, clean, rank, mmi_lambda, length_bonus, answer_weight, order, draws, seed), with the commands' defaults.
        Repeated replies are dropped and faulty ones (non-words, glued or repeated text) put last,
        more being drawn first: a faulty one comes back only when the draws (draws x n, 16n by
        default, at least 8n) hold fewer than n good ones, and fewer than n replies only when they
        hold fewer distinct ones; HRED's greedy decoding gives one; its beam search (the default)
        or method="sample" gives it more. With clean=False nothing is checked: faulty is False.
        The same seed and history give the same replies. A reply cut at max_len ends in " …";
        passed back as the model's turn (every second one before the last), it is read without it.
        z: decode every reply from this latent (a Candidate's .z, z_dim floats; VHRED only)
        instead of drawing one from the prior: with beam search or greedy words that gives one
        reply, the one the candidate had for its own context."""
        return self._respond_many([history], self._options(n, decoding), [z])[0]

    def interpolate(self, history: list[str], z0: list[float], z1: list[float], steps: int = 7,
                    spherical: bool = True, max_len: int = DecodeOptions.max_len) -> list[Candidate]:
        """Replies to history decoded as respond() decodes each z (beam search) from `steps` evenly
        spaced z's between z0 and z1 (two Candidates' .z, say), both ends included, in order:
        what moving through the latent space does to the reply. spherical: along the great circle
        (slerp) of the ends' offsets from the prior mean of this history in units of its spread,
        which keeps the points as far out as the prior's samples are (DialogWAE, whose prior is
        implicit: of z around 0); else a straight line. Each
        Candidate's score is its decoding's log-likelihood per token given its z, not a ranking score."""
        from .latent import decode, interpolate, prior_spread
        if not isinstance(steps, int) or isinstance(steps, bool) or not 2 <= steps <= 1000:
            raise InputError(f"steps must be an integer between 2 and 1000, got {steps!r}")
        if z0 is None or z1 is None:   # respond's None (draw from the prior) is no end of a path
            raise InputError("interpolate needs two z's, each z_dim numbers (a Candidate's .z), got None")
        _check_type("spherical", spherical, bool)
        ends = z_matrix(self._model, [z0, z1])   # both checked: z_dim finite numbers, a latent model
        context = self._context(history)
        centre = prior_spread(self._model, context) if spherical else (None, None)
        path = interpolate(ends[0], ends[1], steps, spherical, *centre)
        max_len = self._options(1, {"max_len": max_len}).max_len   # checked as respond's is
        replies = decode(self._model, context, path, max_len)
        return [Candidate(response_text(self._sp, ids, max_len), float(s), z.tolist())
                for (ids, s), z in zip(replies, path)]

    def score(self, history: list[str], candidates: list[str]) -> list[float]:
        """The score of each candidate as the reply to history (higher is better), as respond()
        ranks by default (vhred/candidates.py score): the run's reply critic + 2 x the MMI score, or
        the MMI score alone without a critic, plus the answer score after a wh-question when the
        run has an answer table (vhred/answers.py); z samples with seed 0."""
        self._context(history)
        _check_strings(candidates, "candidates", allow_empty=True)
        from .candidates import score   # the ranking's own scores: one implementation, not two
        return [float(s) for s in score(self._model, self._sp, self.config, list(history), list(candidates))]

    def _options(self, n: int, decoding: dict, base: DecodeOptions | None = None) -> DecodeOptions:
        """DecodeOptions for n replies: keyword options over base (default: DecodeOptions()),
        checked like the commands' flags."""
        for key, value in decoding.items():
            if key not in DECODING:
                raise InputError(f"unknown decoding option '{key}'; known: {', '.join(DECODING)}")
            _check_type(key, value, DECODING[key])
        _check_type("n", n, int)
        if n < 1:
            raise InputError(f"n must be at least 1, got {n}")
        base = base or DecodeOptions()
        given = {**asdict(base), **decoding, "num_samples": n}
        shaping = {"temperature", "top_k", "top_p"} & set(decoding)
        if "method" not in decoding and shaping:
            given["method"] = None   # words shaped or not by the request: sampling, or the base's method
        elif decoding.get("method", "sample") != "sample":   # the base's shaping is for its sampling
            given.update({k: v for k, v in NEUTRAL_SHAPING.items() if k not in decoding})
        try:
            opts = options_from_args(SimpleNamespace(**given), keywords=True,   # the flags' rules, word for word
                                     default_method=base.method)
        except InputError as e:   # the rules name the flags' num_samples, which is respond's n here
            raise InputError(str(e).replace("num_samples", "n")) from None
        ranking(self._model, opts)   # a ranking this model cannot do is refused before any decoding
        return opts

    def _respond_many(self, histories: list[list[str]], opts: DecodeOptions, zs=None) -> list[list[Candidate]]:
        """Replies to several conversations with the same options, decoded as one batch; zs: a
        given z (or None) per conversation."""
        contexts = [self._context(h) for h in histories]
        z = z_matrix(self._model, zs or [None] * len(contexts))
        keep = shown_filter(self._sp, self.config, opts)
        results = candidates(self._model, contexts, opts, same=same_reply(self._sp), z=z, keep=keep,   # as the chat
                             last_turns=[history_read(h)[-1] for h in histories])
        return [[Candidate(response_text(self._sp, x[0], opts.max_len), float(x[1]),
                           None if x.z is None else x.z.tolist(), bool(keep and not keep(x[0]))) for x in r]
                for r in results]

    def _context(self, history: list[str]) -> list[list[int]]:
        """Token ids of the turns the model reads (the last max_context), written as the corpus is."""
        _check_strings(history, "history", allow_empty=False)
        cfg = self.config
        return encode_turns(self._sp, history_read(history), cfg.max_utt_len, cfg.max_context)


def load(path: str | os.PathLike, device: str = "auto", pool_with=()) -> Bot:
    """A Bot from a run folder (its best.pt, else last.pt), a checkpoint file, or a folder that
    `vhred export` wrote (model.safetensors, config.json, tokenizer.model: read without pickle).

    device: "auto" (a CUDA GPU when there is one), "cpu" or "cuda". A missing, corrupt or
    foreign checkpoint raises vhred.errors.CheckpointError, a UserError whose message is one
    line saying what to do.

    pool_with: other run folders (made with the same tokenizer) that draw an equal share of
    respond()'s candidates, all ranked by the sum of every run's own ranking score
    (docs/decoding.md#pooled-draws)."""
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"load() takes the path of a run folder or .pt file, got {type(path).__name__}")
    if not isinstance(device, str):
        raise InputError(f"device must be auto, cpu or cuda, got {device!r}")
    try:
        where = pick_device(device)
    except ConfigError as e:   # the API's promise: a caller's wrong value is an InputError
        raise InputError(str(e)) from None
    path = checkpoint.resolve(os.fspath(path))
    if not isinstance(pool_with, (list, tuple)) or not all(isinstance(p, (str, os.PathLike)) for p in pool_with):
        raise InputError(f"pool_with takes a list of run folders, got {pool_with!r}")
    model, cfg, sp = loading.load_model(path, where, [os.fspath(p) for p in pool_with])
    return Bot(model, cfg, sp, path)


def _check_strings(items, name: str, allow_empty: bool) -> None:
    if isinstance(items, str) or not isinstance(items, (list, tuple)) \
            or not all(isinstance(t, str) for t in items):
        raise InputError(f"{name} must be a list of strings")
    if not items and not allow_empty:
        raise InputError(f"{name} must hold at least one turn")


def _check_type(key: str, value, kind: type) -> None:
    """Refuse a value of the wrong type before it reaches a comparison (True is not a number)."""
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True   # 1 for 1.0
    if not ok:
        raise InputError(f"{key} must be {'a ' if kind is not int else 'an '}{kind.__name__}, got {value!r}")
