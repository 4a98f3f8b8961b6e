"""The seventieth round's copy run (trained by the experiment script copynet.py) as a run of the package's
own `retrieve=true copy=true`: the same weights, its config with the two options set, and the retrieval
index filled from the training split. Generating with it and comparing with the rated replies checks
that the option computes what the experiment did.

    python eval/ratings/2026-12-02-copy-option/port.py runs/dailydialog-cpu-copy runs/dailydialog-cpu-copy-port
"""
import os
import shutil
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))   # the repository root
from vhred import checkpoint, dataset  # noqa: E402
from vhred.config import from_dict  # noqa: E402
from vhred.models import build  # noqa: E402

src, dst = sys.argv[1], sys.argv[2]
state = checkpoint.load(os.path.join(src, "best.pt"))
state["config"]["arch"].update(retrieve=True, copy=True)
cfg = from_dict(state["config"])
model = build(cfg.arch, state["model"]["embed.weight"].shape[0])
print(model.index_training_split(dataset.DialogueData(dataset.prepare(cfg, log=lambda *_: None), "train").ds["ids"]))
state["model"].update({k: v for k, v in model.state_dict().items() if k.startswith("retrieval.")})
os.makedirs(dst, exist_ok=True)
checkpoint.save(state, os.path.join(dst, "best.pt"))
for name in ("tokenizer.model", "critic.safetensors", "answers.json"):
    shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
print(f"{dst}/best.pt: {sum(v.numel() for k, v in state['model'].items() if k.startswith('retrieval.')):,} index values")
