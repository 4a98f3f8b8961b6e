"""Metrics, importable without the commands:

- likelihood: negative ELBO, reconstruction NLL, KL, perplexity, the importance-weighted bound,
  active units (validation during training and the evaluation command both use these);
- bleu, distinct: response-overlap and diversity scores on token lists;
- protocol: the multi-sample protocol of the latent-variable dialogue literature over a split;
- text: the one tokenisation every system is scored with.
"""
