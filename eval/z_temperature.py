"""Does the prior's temperature trade into BLEU? (docs/results.md, "Nor does the latent's temperature")

    python -m eval.z_temperature --checkpoint RUN [--scales 0 0.5 0.7 1 1.5 2] [--max-contexts 1500]

For each scale s, `vhred eval --protocol dialogwae` with every reply's z drawn as the prior's mean
plus s times its noise (eval.candidate_ceiling.scaled_prior_noise: s = 1 is the prior itself,
s = 0 its mean), no likelihood; each writes results-dialogwae-test-zsS.* into the run folder as
the command does. Prints one Markdown table: BLEU R / P / F1, inter-dist-2 and length per s.
"""
import json
import os

from vhred import checkpoint, evaluate
from vhred.cli import command, Parser

from eval.candidate_ceiling import scaled_prior_noise


def one_scale(path: str, scale: float, max_contexts: int) -> dict:
    """The protocol's metrics with the prior's noise times scale."""
    tag = f"zs{scale:g}"
    with scaled_prior_noise(scale):
        evaluate.main(["--checkpoint", path, "--protocol", "dialogwae", "--iw-samples", "0",
                       "--max-contexts", str(max_contexts), "--tag", tag])
    name = os.path.join(checkpoint.results_folder(path), f"results-dialogwae-test-{tag}.json")
    with open(name, encoding="utf-8") as f:
        return json.load(f)["metrics"]


def table(rows: dict[float, dict]) -> str:
    lines = ["| s | BLEU R / P / F1 | inter-dist-2 | L |", "|---|---|---|---|"]
    for s, m in rows.items():
        lines.append(f"| {s:g} | {m['bleu-recall']:.3f} / {m['bleu-precision']:.3f} / {m['bleu-f1']:.3f} "
                     f"| {m['inter-dist-2']:.3f} | {m['length']:.1f} |")
    return "\n".join(lines)


@command
def main(argv=None):
    p = Parser(prog="python -m eval.z_temperature", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a run folder or .pt file")
    p.add_argument("--scales", type=float, nargs="+", default=[0, 0.5, 0.7, 1, 1.5, 2],
                   help="the prior's noise times each of these (default %(default)s)")
    p.add_argument("--max-contexts", type=int, default=1500, help="the protocol's first N contexts, 0 for all (default %(default)s)")
    args = p.parse_args(argv)
    if any(s < 0 for s in args.scales):
        p.error("--scales must be 0 or more (0 decodes from the prior's mean)")
    path = checkpoint.resolve(args.checkpoint)
    print(table({s: one_scale(path, s, args.max_contexts) for s in args.scales}))


if __name__ == "__main__":
    main()
