"""Evaluation of dialogue responses: BLEU (eval.bleu), distinct-n (eval.distinct), and the
full multi-sample report for a checkpoint (eval.evaluate). The metric functions are importable."""
