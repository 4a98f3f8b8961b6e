"""How good can the shown list get from what a model draws? (docs/rating-rounds.md, sixth round)

    python -m eval.candidate_ceiling pool --checkpoint RUN --contexts contexts.jsonl --method greedy|beam \\
        [--draws 40] --out sys-X.jsonl
    python -m eval.candidate_ceiling ceiling --key key.json --answers rater1.txt [--answers rater2.txt ...] \\
        --system X=sys-X.jsonl [--system ...]
    python -m eval.candidate_ceiling replay --pool sys-X.jsonl [--pool ...] --rounds DIR... --critic RUN [--precedents 1,2,4]

`pool` writes every distinct reply among the chat's draws for each context (the --draws it makes
for five shown replies, decoded with the shipped seeds; repeats by the words a reader sees
dropped), with the numbers ranking uses: log p(r | c), log p(r | neutral), tokens and whether the
shown-list filter finds a fault. `vhred rate pack --per-context 1000` then packs all of them for
blind readers. `ceiling` reads the readers' labels and says, per system and reader:
- how many of the drawn replies are good,
- the ceiling: the good share of the top-1 and of the five shown that a perfect ranking of these
  draws would reach (a context with G good replies gives min(G, 5) of 5),
- what the shipped ranking (MMI, faulty last) and other scores reach from the same draws.
No ranking or decoding choice on these draws can beat the ceiling: it is what the model offers.
"""
import contextlib
import json
import os
import statistics
import sys

from vhred import loading
from vhred.cli import command, Parser
from vhred.errors import InputError
from vhred.generate import read_contexts
from vhred.candidates import reply_key, shown_filter
from vhred.decoding import DecodeOptions
from vhred.render import response_text
from vhred.rate import read_answers, read_key

from eval import rated_ranking
from eval.rated_ranking import GAMMAS, LAMBDAS, draws

SHOWN = 5


@contextlib.contextmanager
def scaled_prior_noise(scale: float):
    """Decode from z = mu + scale * sigma * eps instead of a full draw of the prior (a
    temperature on the latent, as the truncation of Kingma & Dhariwal's Glow or BigGAN): every
    row's normals eps are multiplied by scale while inside. An experiment knob (docs/rating-rounds.md,
    fifteenth round), not a decoding option: it did not lift the shown five. The ranking numbers
    (log p by vhred/scoring.py) keep the prior's own noise."""
    import vhred.decoding as g
    drawn = g.keyed_noise
    g.keyed_noise = lambda *a, **k: (lambda eps, u: (eps * scale, u))(*drawn(*a, **k))
    try:
        yield
    finally:
        g.keyed_noise = drawn


def pool(args):
    with scaled_prior_noise(args.z_scale):
        write_pool(args)


def write_pool(args):
    model, cfg, sp = loading.load_model(args.checkpoint)
    keep = shown_filter(sp, cfg, DecodeOptions())
    contexts = read_contexts(args.contexts)[0]   # a malformed line named and skipped
    with open(args.out, "w", encoding="utf-8") as out:
        for ctx, rows in zip(contexts, draws(model, cfg, sp, contexts, args.draws, args.method)):
            seen = {}
            for r in rows:
                text = response_text(sp, r["ids"], cfg.max_utt_len)
                seen.setdefault(reply_key(text), dict(r, text=text, faulty=not keep(r["ids"])))
            kept = list(seen.values())
            out.write(json.dumps({"context": ctx, "samples": [r["text"] for r in kept],
                                  **{f: [r[f] for r in kept] for f in ("lpc", "lpn", "n", "faulty")}}) + "\n")


def mmi(lam: float, gamma: float):
    """The ranking's MMI score (vhred/scoring.py score_ids), faulty replies last (the shown list's order)."""
    score = rated_ranking.mmi(lam, gamma)
    return lambda r: (not r["faulty"], score(r))


SHIPPED = DecodeOptions()
SCORES = {
    f"shipped: mmi lambda {SHIPPED.mmi_lambda} gamma {SHIPPED.length_bonus}": mmi(SHIPPED.mmi_lambda, SHIPPED.length_bonus),
    "ll (lambda 0, gamma 0)": mmi(0.0, 0.0),
    "pmi (lambda 1, gamma 0)": mmi(1.0, 0.0),
    "shortest first": lambda r: (not r["faulty"], -r["n"]),
}


CRITIC = {
    "critic (vhred/critic.py)": lambda r: (not r["faulty"], r["crit"]),
    "critic, shipped mmi to break ties": lambda r: (not r["faulty"], r["crit"] + 0.1 * SCORES[next(iter(SCORES))](r)[1]),
}


def critic_scores(run: str, rows: list[dict], with_precedents: bool = False) -> None:
    """Add each reply's critic logit ("crit") to pool rows, text encoded as the API encodes it,
    and with_precedents the logit of its precedents ("prec", eval/precedents.py) in the rounds
    the critic was trained on."""
    from vhred import critic
    from vhred.critic_train import encoded
    from vhred.render import encode_turns
    from vhred.sources import spaced
    from eval import precedents
    model, cfg, sp = loading.load_model(run)   # with the run's critic attached
    if model.reply_critic is None:
        sys.exit(f"{run} has no critic.safetensors; train one with `vhred critic --checkpoint {run} --ratings ...`")
    said = None
    if with_precedents:
        rounds = critic.record(os.path.dirname(run) if run.endswith(".pt") else run)["training"]["rounds"]
        said = precedents.Precedents(encoded(rounds, sp, cfg, ordered_only=False))
    for row in rows:
        ctx = encode_turns(sp, [spaced(t) for t in row["context"]], cfg.max_utt_len, cfg.max_context)
        replies = [sp.encode(spaced(t))[:cfg.max_utt_len] for t in row["samples"]]
        row["crit"] = critic.scores(model.reply_critic, [ctx] * len(replies), replies)
        if said:
            row["prec"] = said.logits([ctx] * len(replies), replies)


def labelled(system_rows: list[dict], key: dict, answers: dict, name: str) -> list[list[dict]]:
    """Each context's replies of one system with the reader's label (good True), unrated left out."""
    by_text = {}
    for item_id, answer in answers.items():
        for it in key["items"][item_id]:
            if it["system"] == name:
                by_text[(it["context"], it["text"])] = answer == "good"
    index = {tuple(c): i for i, c in enumerate(key["contexts"])}
    out = []
    for row in system_rows:
        c = index.get(tuple(row["context"]))
        if c is None:
            continue
        fields = [f for f in ("lpc", "lpn", "n", "faulty", "lbw", "crit") if f in row]   # lbw: eval/backward_ranking.py
        out.append([dict({f: row[f][i] for f in fields}, text=t, good=by_text[(c, t)])
                    for i, t in enumerate(row["samples"]) if (c, t) in by_text])
    return out


def shares(contexts: list[list[dict]], order) -> tuple[float, float]:
    """Good share of the top-1 and of the first five, replies sorted best first by order."""
    top1, top5 = [], []
    for replies in contexts:
        ranked = sorted(replies, key=order, reverse=True)[:SHOWN]
        top1.append(ranked[0]["good"])
        top5.append(sum(r["good"] for r in ranked) / SHOWN)
    return statistics.mean(top1), statistics.mean(top5)


def report(name: str, rater: str, contexts: list[list[dict]], grid: bool = False) -> list[str]:
    good = [sum(r["good"] for r in replies) for replies in contexts]
    drawn = sum(len(replies) for replies in contexts)
    lines = [f"### system {name}, {rater}: {len(contexts)} contexts, {drawn} distinct replies "
             f"({drawn / len(contexts):.1f} a context), {sum(good)} good ({sum(good) / drawn:.0%})"]
    if "lpc" not in contexts[0][0]:   # not written by pool (the human replies): no ranking to replay
        return lines + [""]
    scores = dict(SCORES, **(CRITIC if "crit" in contexts[0][0] else {}), **({f"mmi lambda {lam} gamma {g}": mmi(lam, g) for lam in LAMBDAS for g in GAMMAS}
                             if grid else {}))
    lines += ["", "| ranking | top-1 good | five shown good |", "|---|---|---|",
             f"| ceiling (a perfect ranking) | {statistics.mean(g > 0 for g in good):.0%} | "
             f"{statistics.mean(min(g, SHOWN) / SHOWN for g in good):.0%} |"]
    for label, order in scores.items():
        t1, t5 = shares(contexts, order)
        lines.append(f"| {label} | {t1:.0%} | {t5:.0%} |")
    return lines + ["\ncontexts by good replies among the draws: "
                    + ", ".join(f"{k}: {sum(min(g, SHOWN) == k for g in good)}" for k in range(SHOWN + 1))
                    + " (5 = five or more)\n"]


def ceiling(args):
    key = read_key(args.key)
    bad = [spec for spec in args.system if "=" not in spec]
    if bad:
        raise InputError(f"--system {bad[0]}: give NAME=FILE, NAME the system's name in the key")
    systems = {name: [json.loads(line) for line in open(file, encoding="utf-8")]
               for name, file in (spec.split("=", 1) for spec in args.system)}
    if args.critic:
        for rows in systems.values():
            if "lpc" in rows[0]:
                critic_scores(args.critic, rows)
    for path in args.answers:
        answers = read_answers(path, key)
        for name, rows in systems.items():
            rated = labelled(rows, key, answers, name)
            if not any(rated):
                raise InputError(f"system {name} has no reply rated in {path} under {args.key}: its name or its "
                                 "contexts are not the key's")
            print("\n".join(report(name, path, rated, args.grid)))


def replay(args):
    """Rankings replayed on pools whose replies were rated across several rounds (a pool of 80
    draws: the first 40 rated in one round, the replies only the other 40 found in another).
    Every reply of every pool must carry a label; a reply's label is the share of its readers
    who kept it. Prints the ceiling and, per pool, MMI and critic + w x MMI at each w:gamma."""
    from vhred.critic_train import rated_replies
    labels = {}
    for folder in args.rounds:
        for turns, replies in rated_replies(folder):
            labels.update({(tuple(turns), text): kept for text, kept in replies})
    try:
        weights = [(float(w), float(g)) for w, g in (spec.split(":") for spec in args.weights.split(","))]
    except ValueError:
        raise InputError(f"--weights takes W:GAMMA pairs, e.g. 2:-0.2,1:-0.2; got {args.weights}") from None
    said = [float(x) for x in args.precedents.split(",")] if args.precedents else []
    w0, g0 = weights[-1]
    print("| pool | contexts | replies a context | good | ceiling: top-1 / five | "
          + " | ".join([f"mmi gamma {g}" for _, g in weights] + [f"critic + {w:g} x mmi gamma {g}" for w, g in weights]
                       + [f"critic + {w0:g} x mmi gamma {g0} + {v:g} x precedents" for v in said]) + " |")
    print("|---" * (5 + 2 * len(weights) + len(said)) + "|")
    for path in args.pool:
        rows = [json.loads(line) for line in open(path, encoding="utf-8")]
        missing = sum((tuple(r["context"]), t) not in labels for r in rows for t in r["samples"])
        if missing:
            sys.exit(f"{path}: {missing} replies carry no label in --rounds")
        critic_scores(args.critic, rows, with_precedents=bool(said))
        contexts = [[dict({f: r[f][i] for f in ("lpc", "lpn", "n", "faulty", "crit", "prec") if f in r}, text=t,
                          good=labels[(tuple(r["context"]), t)]) for i, t in enumerate(r["samples"])] for r in rows]
        good = [sum(x["good"] for x in c) for c in contexts]
        cells = [f"{statistics.mean(g > 0 for g in good):.0%} / {statistics.mean(min(g, SHOWN) / SHOWN for g in good):.0%}"]
        for _, g in weights:
            cells.append("{:.1%} / {:.1%}".format(*shares(contexts, mmi(SHIPPED.mmi_lambda, g))))
        for w, g in weights:
            score = rated_ranking.mmi(SHIPPED.mmi_lambda, g)
            cells.append("{:.1%} / {:.1%}".format(*shares(contexts, lambda x: (not x["faulty"], x["crit"] + w * score(x)))))
        score = rated_ranking.mmi(SHIPPED.mmi_lambda, g0)
        for v in said:
            cells.append("{:.1%} / {:.1%}".format(*shares(
                contexts, lambda x: (not x["faulty"], x["crit"] + w0 * score(x) + v * x["prec"]))))
        n = sum(len(c) for c in contexts)
        print(f"| {path} | {len(contexts)} | {n / len(contexts):.1f} | {sum(good) / n:.1%} | " + " | ".join(cells) + " |")
    print("(each cell: top-1 / five shown, good share; lambda %g)" % SHIPPED.mmi_lambda)


@command
def main(argv=None):
    p = Parser(prog="python -m eval.candidate_ceiling", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pool", help="every distinct reply of the chat's draws, with ranking numbers")
    a.add_argument("--checkpoint", required=True)
    a.add_argument("--contexts", required=True, help="contexts.jsonl of eval/rating_contexts.py")
    a.add_argument("--method", choices=["greedy", "beam"], default="greedy")
    a.add_argument("--draws", type=int, default=40, help="draws per context (default %(default)s: the chat's for 5)")
    a.add_argument("--z-scale", type=float, default=1.0, help="the prior's noise times this (default %(default)s: the chat's draws)")
    a.add_argument("--out", required=True)
    b = sub.add_parser("ceiling", help="the readers' good shares: ceiling and rankings")
    b.add_argument("--key", required=True)
    b.add_argument("--answers", action="append", required=True)
    b.add_argument("--system", action="append", required=True, help="NAME=FILE written by pool (or any system file)")
    b.add_argument("--grid", action="store_true", help="also every MMI lambda and gamma of eval/rated_ranking.py")
    b.add_argument("--critic", help="a run folder with critic.safetensors: also rank by the reply critic")
    r = sub.add_parser("replay", help="rankings on pools rated across several rounds")
    r.add_argument("--pool", action="append", required=True, help="a file written by pool, every reply rated in --rounds")
    r.add_argument("--rounds", nargs="+", required=True, metavar="DIR", help="rating rounds (key.json and rater*.txt) that label the pools")
    r.add_argument("--critic", required=True, help="a run folder with critic.safetensors")
    r.add_argument("--weights", default="3:-0.1,2:-0.2", help="w:gamma pairs of critic + w x mmi (default %(default)s)")
    r.add_argument("--precedents", default="", metavar="V,V...",
                   help="also critic + w x mmi (the last --weights pair) + V x the precedents of the critic's rounds (eval/precedents.py), each V")
    args = p.parse_args(argv)
    {"pool": pool, "ceiling": ceiling, "replay": replay}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
