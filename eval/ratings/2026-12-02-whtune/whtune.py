"""The sixty-fifth round's system w: a trained run fine-tuned with its replies to wh-questions weighted W times.

    PYTHONPATH=$PWD python eval/ratings/2026-12-02-whtune/whtune.py SRC_RUN OUT_FOLDER W STEPS LR

STEPS batches of the training split (batch_size of the run's config, one fixed order), Adam at LR,
the negative ELBO with each target's NLL and KL weighted W when the turn before it asks a
wh-question (vhred.rate.turn_kind), 1 otherwise. OUT_FOLDER gets best.pt and the run's critic,
answer table and tokenizer, so it ranks as SRC_RUN does.
"""
import os, sys, time, shutil
import torch
from vhred import checkpoint, loading
from vhred.dataset import DialogueData, prepare
from vhred.rate import turn_kind
from vhred.models.layers import positions

SRC, OUT = sys.argv[1], sys.argv[2]
W, STEPS, LR = float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
torch.set_num_threads(2)
torch.manual_seed(0)
model, cfg, sp = loading.load_model(SRC)
state = checkpoint.load(checkpoint.resolve(SRC))
folder = prepare(cfg)
data = DialogueData(folder, "train")
model.train()
opt = torch.optim.Adam(model.parameters(), lr=LR)
batches = data.batches(cfg.batch_size, seed=123, epoch=0)
cache = {}
def is_wh(ids):
    key = tuple(ids)
    if key not in cache:
        cache[key] = turn_kind([sp.decode(list(ids))]) == "wh"
    return cache[key]
t0, nwh, ntg = time.time(), 0, 0
for step in range(STEPS):
    b = data.batch(batches[step % len(batches)])
    dlg, pos = positions(b.turns)
    tgt = (pos > 0).nonzero().squeeze(1)
    prev = [[t for t in b.tokens[u - 1, 1:b.lens[u - 1]].tolist() if t > 3] for u in tgt.tolist()]
    w = torch.tensor([W if is_wh(p) else 1.0 for p in prev])
    nwh += int((w > 1).sum()); ntg += len(w)
    out = model(b.tokens, b.lens, b.turns)
    kl = (w[:, None] * out["kl"]).sum(0) / w.sum()
    kl = kl.clamp(min=cfg.free_bits) * w.sum()
    loss = ((w * out["nll"]).sum() + kl.sum()) / max(int((w * (b.lens[tgt] - 1).float()).sum()), 1)
    opt.zero_grad(); loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip); opt.step()
    if step % 50 == 0:
        print(step, round(loss.item(), 3), f"{time.time()-t0:.0f}s wh share {nwh/max(ntg,1):.3f}", flush=True)
os.makedirs(OUT, exist_ok=True)
for f in ("critic.safetensors", "critic.json", "answers.json", "tokenizer.model", "config.json"):
    p = os.path.join(os.path.dirname(checkpoint.resolve(SRC)), f)
    if os.path.exists(p):
        shutil.copy(p, OUT)
state["model"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
checkpoint.save({k: v for k, v in state.items() if k not in ("checksum", "format")}, os.path.join(OUT, "best.pt"))
print("saved", OUT, f"{time.time()-t0:.0f}s")
