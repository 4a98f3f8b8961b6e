"""Checks copynet.py's mixture on the tiny config, untrained, with the copy gate made to matter:
every decoding step's distribution sums to 1, and the teacher-forced NLL of reconstruction_nll()
equals the sum of -log p(w_t) that decode() gives step by step.
    DAILYDIALOG_SRC=... PYTHONPATH=$PWD python eval/ratings/2026-12-02-copy/check.py
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import copynet  # noqa: E402
from vhred import config, dataset, models  # noqa: E402

overrides = ["attention=5"]
copynet.install("configs/tiny.yaml", overrides)
cfg = config.load("configs/tiny.yaml", overrides)
folder = dataset.prepare(cfg, log=lambda *_: None)
vocab = json.load(open(os.path.join(folder, "meta.json")))["vocab_size"]
torch.manual_seed(0)
model = models.build(cfg.arch, vocab).eval()
with torch.no_grad():   # p_gen well away from 1, so the copy part weighs in
    model.copy_gate.bias.fill_(0.0)
    model.copy_gate.weight.normal_()
batch = dataset.collate(dataset.DialogueData(folder, "train").ds["ids"][:4])

with torch.no_grad():
    _, ctx, tokens, lens = model.targets(batch.tokens, batch.lens, batch.turns)
    cond = model.condition(ctx, torch.randn(len(lens), cfg.arch.z_dim))
    nll = model.reconstruction_nll(tokens, lens, cond)                      # (T,)
    state, stepwise, total = model.decoder_state(cond), torch.zeros(len(lens)), []
    for t in range(int(lens.max())):
        logp, state = model.decode(tokens[:, t:t + 1], cond, state)         # (T, 1, V)
        total.append(torch.logsumexp(logp[:, 0], -1))
        picked = logp[:, 0].gather(1, tokens[:, t + 1:t + 2]).squeeze(1)
        stepwise -= torch.where(t < lens, picked, torch.zeros(()))
sums, gap = torch.stack(total).exp(), (nll - stepwise).abs().max().item()
print(f"{len(lens)} responses; step sums in [{sums.min():.6f}, {sums.max():.6f}]; "
      f"max |NLL - stepwise| = {gap:.2e} (NLL {nll.mean():.2f} nats a response)")
if (sums - 1).abs().max() > 1e-5 or gap > 1e-3:
    sys.exit("FAILED")
