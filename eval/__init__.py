"""Evaluation commands (thin front ends over vhred.metrics): BLEU (eval.bleu), distinct-n
(eval.distinct), and the full multi-sample report for a checkpoint (eval.evaluate)."""
