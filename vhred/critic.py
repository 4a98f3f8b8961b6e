"""The reply critic: would a reader keep this reply to this context?

    vhred critic --checkpoint RUN --ratings $(cat eval/critic_rounds.txt)     (trains one: vhred/critic_train.py)

A hierarchical encoder with the model's shapes reads the context, then the reply as one more
turn, as the discriminator of Li et al. (2017, "Adversarial learning for neural dialogue
generation") does; a small head turns [the context state, the reply's encoding, the context
state after the reply] into a score. It starts from the model's own embeddings and encoders, is
pretrained to pick people's replies out of the training split's turns, and is trained on blind
readers' good/bad labels of the model's replies (vhred rate): a reward model of what readers
keep, used to rank the candidates the model draws.

Why: the model's draws hold good replies (readers kept 15-20% of every distinct draw, and a
perfect ranking would show 75-80% good in the five; docs/rating-rounds.md, sixth round), but
log p(r | c), the MMI family and a backward model could not find them. Trained as Li et al.'s
discriminator instead (people's replies against the model's own draws), the critic put the
readers' bad replies first (docs/rating.md, "The reply critic"; eval/discriminator_critic.py):
what tells a person's reply from the model's is not what makes a reader keep it.

critic.safetensors sits in the run (or exported model) folder; loading.load_model attaches it
to the model as model.reply_critic, and rank "auto", the default, orders candidates by it.
"""
import hashlib
import json
import os
from dataclasses import replace

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pad_packed_sequence

from .config import ModelConfig
from .dataset import collate, once_per_context
from .errors import CheckpointError
from .files import write_bytes
from .models.layers import Hierarchical, first_words
from .sources import spaced

FILE = "critic.safetensors"   # weights, and the arch and training record as metadata (no pickle)
# Rank "critic" orders by the critic's logit + MMI_WEIGHT x the MMI score (candidates.critic_scores).
# The critic alone puts short safe replies first everywhere: in 40 held-out contexts (ninth round)
# "Of course." was its first reply to 12, and 68% of its shown replies had one or two words; with
# the MMI score weighted 3, 6 and 57% (MMI alone: 2 and 42%). Weights 1, 2, 3, 5 and 8 were
# replayed on 120 rated contexts of full draws (thirteenth and fifteenth rounds): 2 and 3 lead,
# 2 with gamma -0.2 on all three sets (43-47% good in the five against 40-42% for 3 with gamma
# -0.1); on 80 contexts no critic had seen (fourteenth and sixteenth rounds, 80 draws) 52% of the
# five and 62% first against 47% and 64% with critics of 600 steps, 52-54% and 68% against 50% and
# 66-68% with critics of 1,200 (docs/rating.md). With the critic of 38 rounds, weight 1 rated the
# same as 2 on 240 validation contexts (seventy-ninth round: -0.6 [-3.8, +2.3] points first).
MMI_WEIGHT = 2.0
# The critic matches the reply with the first TURN words of the turn it answers (`vhred critic
# --turn`; 0: it reads h alone, as critics before 2026-12-01 and their files do). Rated blind
# against the same critic without it on 120 new contexts (thirtieth to thirty-second rounds, six
# readers): +3 [+1, +5] points more good replies of the five shown, +2 [-3, +7.5] first (docs/rating.md).
TURN = 32
MATCH = 128   # width of the word matching
# The matching projection starts random, unlike the encoders it reads (the model's): at their
# learning rate it barely moves in 1,200 steps. At 10 times it, the test set's replay put a good
# reply first in 63-66% of contexts (two seeds) against 61-63% at 1 times and 60-61% without the
# turn's words (docs/rating.md).
MATCH_LR_SCALE = 10.0


class Critic(nn.Module):
    """Hierarchical encoder (the model's shapes) + a head on [h_before, e_reply, h_after]: the
    context state, the reply's encoding and the context state after reading the reply.

    With turn = N > 0 it also reads the words of the turn the reply answers: each reply word
    attends over the first N words of that turn (both projected to MATCH dimensions), and the
    head reads the mean and the max over the reply's words of word * what it read, the matching
    features of Wang and Jiang's (2017) compare-aggregate models. h is one vector for the whole
    context; whether "9:00." answers "What time ...?" is a question of two turns' words."""

    def __init__(self, arch, vocab_size: int, hidden: int = 256, turn: int = 0):
        super().__init__()
        # embeddings, utterance and context RNNs only: its context rows are h, never attended words
        self.encoder = Hierarchical(replace(arch, attention=0, retrieve=False, copy=False), vocab_size)
        self.turn = turn
        hc, hu = arch.ctx_hidden, 2 * arch.utt_hidden
        if turn:
            self.word_proj = nn.Linear(hu, MATCH)
        self.head = nn.Sequential(nn.Linear(2 * hc + hu + (2 * MATCH if turn else 0), hidden), nn.Tanh(),
                                  nn.Linear(hidden, 1))

    def param_groups(self, lr: float) -> list[dict]:
        """The optimiser's groups: everything at lr, the matching projection at MATCH_LR_SCALE x lr."""
        fresh = list(self.word_proj.parameters()) if self.turn else []
        rest = [p for n, p in self.named_parameters() if not n.startswith("word_proj.")]
        return [{"params": rest, "lr": lr}] + ([{"params": fresh, "lr": lr * MATCH_LR_SCALE}] if fresh else [])

    def context(self, contexts: list[list[list[int]]]) -> torch.Tensor:
        """The context RNN's state after each context's last turn: (C, Hc); with turn = N, the
        last turn's first N words after it, projected, and their mask: (C, Hc + N*MATCH + N)."""
        b = collate(contexts).to(self.device)
        h, words, last = self.encoder.last_turns(b.tokens, b.lens, b.turns)  # (C, Hc)
        if not self.turn:
            return h
        states, mask = first_words(words, last, self.turn)                  # (C, N, 2*Hu), (C, N)
        return torch.cat([h, self.word_proj(states).flatten(1), mask.to(h.dtype)], dim=-1)

    def forward(self, ctx: torch.Tensor, replies: list[list[int]], before: list[int]) -> torch.Tensor:
        """Logits (P,) that a reader keeps each reply, ctx (P, ...) its context's row of
        context() and before (P,) its turns (the reply is the next, spoken by whoever's turn it is)."""
        hc = self.encoder.cfg.ctx_hidden
        h = ctx[:, :hc]                                                     # (P, Hc)
        b = collate([[r] for r in replies]).to(self.device)
        e, words = self.encoder.encode_words(b.tokens[:, 1:], b.lens - 1)   # (P, 2*Hu)
        x = self.encoder.with_floor(e, torch.tensor(before, device=e.device))  # (P, 2*Hu [+ 2])
        _, after = self.encoder.ctx_rnn(x.unsqueeze(1), h.unsqueeze(0).contiguous())  # (1, P, Hc)
        parts = [h, e, after[0]]
        if self.turn:
            parts.append(self.match(ctx[:, hc:], words))
        return self.head(torch.cat(parts, dim=-1)).squeeze(-1)             # (P,)

    def match(self, turn: torch.Tensor, words) -> torch.Tensor:
        """[mean ; max] over each reply's words of r_i * a_i, r_i the projected word and a_i its
        attention read of the answered turn's words: turn (P, N*MATCH + N) -> (P, 2*MATCH)."""
        N = self.turn
        mem, mask = turn[:, :N * MATCH].unflatten(1, (N, MATCH)), turn[:, N * MATCH:] > 0.5  # (P, N, M), (P, N)
        r, lens = pad_packed_sequence(words, batch_first=True)              # (P, Lr, 2*Hu), (P,) host
        rmask = (torch.arange(r.shape[1]) < lens.unsqueeze(1)).to(r.device)  # (P, Lr) words that exist
        r = self.word_proj(r)                                               # (P, Lr, M)
        both = r * self.encoder.read(r, mem, mask)                          # (P, Lr, M)
        keep = rmask.unsqueeze(-1)
        mean = (both * keep).sum(1) / rmask.sum(1, keepdim=True).clamp(min=1)
        return torch.cat([mean, both.masked_fill(~keep, float("-inf")).amax(1)], dim=-1)

    @property
    def device(self):
        return self.head[0].weight.device


def from_model(model, arch, turn: int = 0) -> Critic:
    """A critic whose encoder starts as the model's (each tensor whose shape fits)."""
    critic = Critic(arch, model.vocab_size, turn=turn)
    own = critic.encoder.state_dict()
    own.update({k: v for k, v in model.state_dict().items() if k in own and v.shape == own[k].shape})
    critic.encoder.load_state_dict(own)
    return critic


def reply_ids(sp, text: str) -> list[int]:
    """A reply as the critic reads it: the text readers saw and rated, written as the corpus writes
    it. critic_train reads a rated reply so, and the ranking a decoded one once rendered
    (candidates.critic_scores): the decoder's own spelling ("I ’ m", "bye .") is not what the
    readers' labels taught, and the critic scored it 0.28 higher on average (247 of 2,118 draws)."""
    return sp.encode(spaced(text))


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
    from safetensors.torch import save as to_bytes
    path = os.path.join(folder, FILE)
    meta = {k: json.dumps(v) for k, v in state.items() if k != "weights"}
    # written by Python, whole or not at all: a full disk is an OSError naming the file
    write_bytes(path, to_bytes({k: v.contiguous() for k, v in state["weights"].items()}, metadata=meta))
    return path


def record(folder: str) -> dict | None:
    """What critic.safetensors says of its training (history, contexts, steps...), None without one."""
    from safetensors import safe_open
    path = os.path.join(folder, FILE)
    if not os.path.isfile(path):
        return None
    with safe_open(path, "pt") as f:
        return {k: json.loads(v) for k, v in (f.metadata() or {}).items()}


def tokenizer_sha256(sp) -> str:
    """The SHA-256 of a tokenizer's model: the pieces a critic's ids stand for."""
    return hashlib.sha256(sp.serialized_model_proto()).hexdigest()


def load(run: str, sp=None) -> Critic | None:
    """The critic trained for a run folder, model folder or a checkpoint in one; None when it has
    none. Given the model's tokenizer sp, a critic of another tokenizer is refused: it would read
    the model's ids as other pieces (a ranking silently wrong) or as ids past its own vocabulary."""
    from safetensors.torch import load_file
    folder = run if os.path.isdir(run) else os.path.dirname(run)
    path = os.path.join(folder, FILE)
    if not os.path.isfile(path):
        return None
    again = f"train it again with `vhred critic --checkpoint {folder} --ratings $(cat eval/critic_rounds.txt)`"
    try:
        meta = record(folder)
        ours = tokenizer_sha256(sp) if sp is not None else None
        if sp is not None and (meta["vocab_size"] != sp.get_piece_size()   # critics saved before the hash: the size
                               or meta.get("tokenizer_sha256", ours) != ours):
            raise CheckpointError(f"{path} is the critic of another model (trained with another tokenizer); {again}")
        critic = Critic(ModelConfig(**meta["arch"]), meta["vocab_size"], turn=meta.get("turn", 0))
        critic.load_state_dict(load_file(path))
    except CheckpointError:
        raise
    except Exception as e:   # safetensors raises errors of its own: any fault of the file is one line
        raise CheckpointError(f"{path} is unreadable ({str(e).splitlines()[0][:120]}); {again}") from None
    return critic.eval()
