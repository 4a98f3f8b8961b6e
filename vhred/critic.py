"""The reply critic: would a reader keep this reply to this context?

    vhred critic --checkpoint RUN --ratings eval/ratings/*/     (trains one: vhred/critic_train.py)

A hierarchical encoder with the model's shapes reads the context, then the reply as one more
turn, as the discriminator of Li et al. (2017, "Adversarial learning for neural dialogue
generation") does; a small head turns [the context state, the reply's encoding, the context
state after the reply] into a score. It starts from the model's own embeddings and encoders and
is trained on blind readers' good/bad labels of the model's replies (vhred rate): a reward model
of what readers keep, used to rank the candidates the model draws.

Why: the model's draws hold good replies (readers kept 15-20% of every distinct draw, and a
perfect ranking would show 75-80% good in the five; docs/rating.md, sixth round), but
log p(r | c), the MMI family and a backward model could not find them. Trained as Li et al.'s
discriminator instead (people's replies against the model's own draws), the critic put the
readers' bad replies first (docs/rating.md, "The reply critic"; eval/discriminator_critic.py):
what tells a person's reply from the model's is not what makes a reader keep it.

critic.safetensors sits in the run (or exported model) folder; checkpoint.load_model attaches it
to the model as model.critic, and rank "auto", the default, orders candidates by it.
"""
import json
import os
from dataclasses import replace

import torch
import torch.nn as nn

from .dataset import collate, once_per_context
from .errors import CheckpointError
from .models.layers import Hierarchical

FILE = "critic.safetensors"   # weights, and the arch and training record as metadata (no pickle)
# Rank "critic" orders by the critic's logit + MMI_WEIGHT x the MMI score (generate.critic_scores).
# The critic alone puts short safe replies first everywhere: in 40 held-out contexts (ninth round)
# "Of course." was its first reply to 12, and 68% of its shown replies had one or two words; with
# the MMI score weighted 3, 6 and 57% (MMI alone: 2 and 42%). Weights 1, 2, 3, 5 and 8 were
# replayed on 120 rated contexts of full draws (thirteenth and fifteenth rounds): 2 and 3 lead,
# 2 with gamma -0.2 on all three sets (43-47% good in the five against 40-42% for 3 with gamma
# -0.1); on 80 contexts no critic had seen (fourteenth and sixteenth rounds, 80 draws) 52% of the
# five and 62% first against 47% and 64% with critics of 600 steps, 52-54% and 68% against 50% and
# 66-68% with critics of 1,200 (docs/rating.md).
MMI_WEIGHT = 2.0


class Critic(nn.Module):
    """Hierarchical encoder (the model's shapes) + a head on [h_before, e_reply, h_after]: the
    context state, the reply's encoding and the context state after reading the reply."""

    def __init__(self, arch, vocab_size: int, hidden: int = 256):
        super().__init__()
        # embeddings, utterance and context RNNs only: its context rows are h, never attended words
        self.encoder = Hierarchical(replace(arch, attention=0), vocab_size)
        hc, hu = arch.ctx_hidden, 2 * arch.utt_hidden
        self.head = nn.Sequential(nn.Linear(2 * hc + hu, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def context(self, contexts: list[list[list[int]]]) -> torch.Tensor:
        """The context RNN's state after each context's last turn: (C, Hc)."""
        b = collate(contexts).to(self.device)
        return self.encoder.final_states(b.tokens, b.lens, b.turns)

    def forward(self, h: torch.Tensor, replies: list[list[int]], before: list[int]) -> torch.Tensor:
        """Logits (P,) that each reply is a person's, h (P, Hc) the state of its context and
        before (P,) its turns (the reply is the next, spoken by whoever's turn it is)."""
        b = collate([[r] for r in replies]).to(self.device)
        e = self.encoder.encode_utterances(b.tokens[:, 1:], b.lens - 1)     # (P, 2*Hu)
        x = self.encoder.with_floor(e, torch.tensor(before, device=e.device))  # (P, 2*Hu [+ 2])
        _, after = self.encoder.ctx_rnn(x.unsqueeze(1), h.unsqueeze(0).contiguous())  # (1, P, Hc)
        return self.head(torch.cat([h, e, after[0]], dim=-1)).squeeze(-1)  # (P,)

    @property
    def device(self):
        return self.head[0].weight.device


def from_model(model, arch) -> Critic:
    """A critic whose encoder starts as the model's (each tensor whose shape fits)."""
    critic = Critic(arch, model.vocab_size)
    own = critic.encoder.state_dict()
    own.update({k: v for k, v in model.state_dict().items() if k in own and v.shape == own[k].shape})
    critic.encoder.load_state_dict(own)
    return critic


@torch.inference_mode()
def scores(critic: Critic, contexts: list[list[list[int]]], replies: list[list[int]], batch: int = 64) -> list[float]:
    """The critic's logit for each (context, reply) pair, higher is more like a person's reply."""
    critic.eval()
    states = once_per_context(critic.context, contexts, batch)              # (P, Hc)
    out = []
    for s in range(0, len(replies), batch):
        before = [len(c) for c in contexts[s:s + batch]]
        out += critic(states[s:s + batch], replies[s:s + batch], before).float().tolist()
    return out


# --- its file ---------------------------------------------------------------------------------

def save(state: dict, folder: str) -> str:
    """Write critic.safetensors into a run or model folder: the weights, the rest as JSON metadata."""
    from safetensors.torch import save_file
    path = os.path.join(folder, FILE)
    tmp = f"{path}.tmp{os.getpid()}"
    meta = {k: json.dumps(v) for k, v in state.items() if k != "weights"}
    save_file({k: v.contiguous() for k, v in state["weights"].items()}, tmp, metadata=meta)
    os.replace(tmp, path)
    return path


def record(folder: str) -> dict | None:
    """What critic.safetensors says of its training (history, contexts, steps...), None without one."""
    from safetensors import safe_open
    path = os.path.join(folder, FILE)
    if not os.path.isfile(path):
        return None
    with safe_open(path, "pt") as f:
        return {k: json.loads(v) for k, v in (f.metadata() or {}).items()}


def load(run: str) -> Critic | None:
    """The critic trained for a run folder, model folder or a checkpoint in one; None when it has none."""
    from safetensors.torch import load_file
    from .config import ModelConfig
    folder = run if os.path.isdir(run) else os.path.dirname(run)
    path = os.path.join(folder, FILE)
    if not os.path.isfile(path):
        return None
    try:
        meta = record(folder)
        critic = Critic(ModelConfig(**meta["arch"]), meta["vocab_size"])
        critic.load_state_dict(load_file(path))
    except Exception as e:   # safetensors raises errors of its own: any fault of the file is one line
        raise CheckpointError(f"{path} is unreadable ({str(e).splitlines()[0][:120]}); train it again with "
                              f"`vhred critic --checkpoint {folder}`") from None
    return critic.eval()
