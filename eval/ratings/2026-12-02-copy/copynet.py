"""The seventieth round's experiment: retrieve-and-refine VHRED with a copy mechanism (a pointer-generator,
See et al. 2017) on the CPU config, by patching the package in this process only.

The model is the sixty-ninth round's (../2026-12-02-retnref/retnref.py: the decoder attends over the
first N pieces of the turn it answers and the first N of a retrieved reply), and each decoder step
may also copy one of those 2N pieces:

    a_t         = softmax_j(s_t . m_j / sqrt(Hd))                  the attention weights it already has
    p_gen       = sigmoid(w . [s_t ; c_t] + b)                      how much it generates, c_t = sum_j a_tj m_j
    p(w_t = v)  = p_gen * softmax(W o_t)_v + (1 - p_gen) * sum_{j: x_j = v} a_tj

b starts at 2 (p_gen about 0.88), so training starts from generation and learns where to copy.

The package now has this model as options of its own (`attention=20 retrieve=true copy=true`,
vhred/models/layers.py and retrieval.py; ../2026-12-02-copy-option/ checks that they give this
script's replies). The script stays to reproduce the seventieth to seventy-second rounds.

    python eval/ratings/2026-12-02-copy/copynet.py train --config configs/dailydialog-cpu.yaml name=dailydialog-cpu-copy attention=20 epochs=8
    python eval/ratings/2026-12-02-copy/copynet.py generate --checkpoint runs/dailydialog-cpu-copy --input C --output O
    python eval/ratings/2026-12-02-copy/copynet.py generate --checkpoint runs/dailydialog-cpu-vhred --pool-with runs/dailydialog-cpu-copy --input C --output O
    python eval/ratings/2026-12-02-copy/copynet.py retrieved --run runs/dailydialog-cpu-copy --input C --output O
"""
import importlib.util
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_packed_sequence

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", ".."))   # the repository root
from vhred import models  # noqa: E402
from vhred.models.layers import Packing, run_rnn, to_device  # noqa: E402
from vhred.tokenizer import EOS, PAD  # noqa: E402

_spec = importlib.util.spec_from_file_location("retnref", os.path.join(HERE, "..", "2026-12-02-retnref", "retnref.py"))
retnref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(retnref)

EPS = 1e-10


class CopyVHRED(retnref.RetVHRED):
    def __init__(self, cfg, vocab_size: int):
        super().__init__(cfg, vocab_size)
        self.copy_gate = nn.Linear(2 * cfg.dec_hidden, 1)                 # p_gen from [s_t ; c_t]
        nn.init.zeros_(self.copy_gate.weight)
        nn.init.constant_(self.copy_gate.bias, 2.0)

    # condition rows: [h (Hc) | memory (2N*Hd) | mask (2N) | piece ids (2N) | z]
    def split(self, cond):
        Hc, M, Hd = self.cfg.ctx_hidden, 2 * self.cfg.attention, self.cfg.dec_hidden
        end = Hc + M * Hd + M
        vec = torch.cat([cond[:, :Hc], cond[:, end + M:]], dim=-1)
        return vec, cond[:, Hc:Hc + M * Hd].unflatten(1, (M, Hd)), cond[:, Hc + M * Hd:end] > 0.5

    def copy_ids(self, cond):
        """The piece id at each attended position: (T, 2N)."""
        Hc, M, Hd = self.cfg.ctx_hidden, 2 * self.cfg.attention, self.cfg.dec_hidden
        end = Hc + M * Hd + M
        return cond[:, end:end + M].round().long()

    def memory2(self, words, rows, retrieved, tokens):
        """retnref's memory, then the piece each attended state reads: (R, 2N*Hd + 2N) -> (R, 2N*Hd + 4N)."""
        N = self.cfg.attention
        own = self._first_ids(tokens[to_device(rows, tokens.device)], N)   # (R, N): w_1.. <eos>, as the states
        got = torch.tensor([([*r, EOS] + [PAD] * N)[:N] for r in retrieved], device=tokens.device)  # (R, N)
        mem = super().memory2(words, rows, retrieved, tokens)
        return torch.cat([mem, torch.cat([own, got], 1).to(mem.dtype)], dim=-1)

    @staticmethod
    def _first_ids(tok, n):
        """The ids the first n word states read (after <bos>), PAD past the end: (R, L) -> (R, n)."""
        ids = tok[:, 1:1 + n]
        return F.pad(ids, (0, n - ids.shape[1]), value=PAD)

    def mixture(self, out, read):
        """The step's generation logits and p_gen: out, read (..., Hd) -> (..., V), (..., 1)."""
        logits = self.lm_head(self.out_proj(self.drop(self.attended(out, read))))
        return logits, torch.sigmoid(self.copy_gate(torch.cat([out, read], dim=-1)))

    def decode(self, inputs, cond, state):
        """Log-probabilities of the mixture, in place of logits (log_softmax leaves them as they are)."""
        vec, mem, mask = self.split(cond)
        out, state = run_rnn(self.dec_rnn, self._decoder_input(inputs, vec), state)  # (T, S, Hd)
        a = self.attention_weights(out, mem, mask)                          # (T, S, M)
        logits, gen = self.mixture(out, a.to(mem.dtype) @ mem)              # (T, S, V), (T, S, 1)
        ids = self.copy_ids(cond).unsqueeze(1).expand(-1, out.shape[1], -1)
        copy = torch.zeros_like(logits, dtype=torch.float).scatter_add_(2, ids, a)  # (T, S, V)
        p = gen.float() * torch.softmax(logits.float(), -1) + (1 - gen.float()) * copy
        return torch.log(p + EPS), state

    def reconstruction_nll(self, tokens, lens, cond):
        """-log p(w | cond) per utterance under the mixture, teacher-forced (see the base's)."""
        inputs = self.decoder_inputs(tokens)
        vec, mem, mask = self.split(cond)
        x = self._decoder_input(inputs, vec)
        packing = Packing(lens, x.device)
        out, _ = run_rnn(self.dec_rnn, packing(x), self.decoder_state(cond))
        a = self.attention_weights(pad_packed_sequence(out, batch_first=True)[0], mem, mask)  # (T, S, M)
        read = packing(a.to(mem.dtype) @ mem).data                          # (sum lens, Hd)
        a = packing(a).data                                                 # (sum lens, M)
        owner = packing(torch.arange(len(lens), device=tokens.device).unsqueeze(1).expand_as(inputs)).data
        logits, gen = self.mixture(out.data, read)                          # (sum lens, V), (sum lens, 1)
        targets = packing(tokens[:, 1:]).data                               # (sum lens,)
        p_vocab = torch.exp(-F.cross_entropy(logits.float(), targets, reduction="none"))
        p_copy = (a * (self.copy_ids(cond)[owner] == targets.unsqueeze(1))).sum(1)
        gen = gen.squeeze(1).float()
        token_nll = -torch.log(gen * p_vocab + (1 - gen) * p_copy + EPS)
        return torch.zeros(len(lens), device=tokens.device).index_add_(0, owner, token_nll)


class EitherVHRED(retnref.VHRED):
    """The family "vhred" while this script runs: this round's model for a run with attention (the copy
    run), the package's own for one without (the shipped run), so that one process can pool their draws
    (generate --checkpoint runs/dailydialog-cpu-vhred --pool-with runs/dailydialog-cpu-copy)."""
    def __new__(cls, cfg, vocab_size: int):
        return CopyVHRED(cfg, vocab_size) if cfg.attention else retnref.VHRED(cfg, vocab_size)


def install(cfg_path="configs/dailydialog-cpu.yaml", overrides=()):
    retnref.install(cfg_path, overrides)
    models.FAMILIES["vhred"] = EitherVHRED


if __name__ == "__main__":
    what, argv = sys.argv[1], sys.argv[2:]
    if what == "retrieved":   # the reply each context's last turn retrieves: retrieved --run R --input C --output O
        install()
        import json
        import sentencepiece
        opts = dict(zip(argv[::2], argv[1::2]))
        sp = sentencepiece.SentencePieceProcessor(model_file=os.path.join(opts["--run"], "tokenizer.model"))
        cut = json.load(open(os.path.join(opts["--run"], "config.json")))["max_utt_len"]
        rows = [json.loads(line) for line in open(opts["--input"])]
        got = CopyVHRED.retriever.replies([sp.encode(r["context"][-1])[:cut] for r in rows])
        with open(opts["--output"], "w") as f:
            for r, ids in zip(rows, got):
                f.write(json.dumps({"context": r["context"], "retrieved": sp.decode(ids)}) + "\n")
    else:
        retnref.main(what, argv, install)
