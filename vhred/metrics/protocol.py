"""The multi-sample protocol of the latent-variable dialogue literature (Zhao et al. 2017;
DialogWAE, Gu et al. 2019): N responses per context, scored against the one reference."""
from .bleu import dialogwae_bleu, multi_sample_bleu
from .distinct import intra_inter, response_distinct
from .text import tokenize


def context_pairs(dialogues, max_context: int) -> list[tuple[list[str], str]]:
    """(context, reference) for every utterance that has at least one turn before it."""
    return [(d[max(0, n - max_context):n], d[n]) for d in dialogues for n in range(1, len(d))]


def sample_metrics(samples: list[list[str]], refs: list[str]) -> dict:
    """Multi-sample BLEU-1..4 (and DialogWAE's BLEU), distinct-n three ways, mean length."""
    tok_samples = [[tokenize(s) for s in row] for row in samples]
    tok_refs = [tokenize(r) for r in refs]
    out = {}
    for n in range(1, 5):
        for k, v in multi_sample_bleu(tok_samples, tok_refs, n).items():
            out[f"bleu-{n}-{k}"] = v
    for k, v in multi_sample_bleu(tok_samples, tok_refs, 3, score=dialogwae_bleu).items():
        out[f"dialogwae-bleu-{k}"] = v
    for n in (1, 2):
        out[f"intra-distinct-{n}"], out[f"inter-distinct-{n}"] = intra_inter(tok_samples, n)
        out[f"response-distinct-{n}"] = response_distinct(tok_samples, n)
    lengths = [len(s) for row in tok_samples for s in row]
    out["mean_length"] = sum(lengths) / len(lengths)
    return out
