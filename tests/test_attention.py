"""Attention over the turn a reply answers (arch `attention`, vhred/models/layers.py): the
attended words are that turn's, the read is Luong et al.'s computed by hand, padding is never
read, step-by-step decoding (generation) scores as teacher forcing (training, ranking) does,
and a model with it trains, resumes bit for bit, loads, answers and scores."""
import math

import pytest
import torch

import vhred
from vhred import critic
from vhred.config import ConfigError, ModelConfig
from vhred.models import build

from .test_families import TINY, _batch, resumes_bit_for_bit

N = 5   # attended pieces: fewer than the longest test turn, so the cut is exercised too


def _model(family="vhred", seed=0):
    torch.manual_seed(seed)
    return build(ModelConfig(model=family, attention=N, **TINY), 40).eval()


def test_each_context_row_carries_the_words_of_the_turn_its_target_answers():
    """targets() and final_states() put h first, then the first N word states of the turn
    before (the utterance GRU run on that turn alone, projected), then their mask."""
    model, b = _model(), _batch()
    Hc, Hd = TINY["ctx_hidden"], TINY["dec_hidden"]
    with torch.no_grad():
        _, ctx, _, _ = model.targets(b.tokens, b.lens, b.turns)
        last = model.final_states(b.tokens, b.lens, b.turns)
        utterances = [(b.tokens[u, 1:int(b.lens[u])]) for u in range(len(b.lens))]   # w <eos>
        start = (torch.cumsum(b.turns, 0) - b.turns).tolist()
        answered = [u - 1 for u in range(len(b.lens)) if u not in start]   # each target's previous turn
        finals = (torch.cumsum(b.turns, 0) - 1).tolist()
        for rows, owners in ((ctx, answered), (last, finals)):
            assert rows.shape == (len(owners), Hc + N * Hd + N)
            for row, u in zip(rows, owners):
                words, _ = model.utt_rnn(model.embed(utterances[u]).unsqueeze(0))   # (1, n, 2*Hu)
                n = min(N, len(utterances[u]))
                mem = row[Hc:Hc + N * Hd].view(N, Hd)
                assert torch.allclose(mem[:n], model.mem_proj(words[0, :n]), atol=1e-5)
                assert row[Hc + N * Hd:].tolist() == [1.0] * n + [0.0] * (N - n)
        assert torch.equal(model.summary(last), last[:, :Hc])


def test_the_read_is_luongs_global_attention_computed_by_hand():
    """tanh(W_c [sum_j a_j m_j ; s]) with a = softmax over the real words of s . m_j / sqrt(Hd)."""
    model = _model()
    g = torch.Generator().manual_seed(1)
    T, S, Hd = 3, 4, TINY["dec_hidden"]
    out, mem = torch.randn(T, S, Hd, generator=g), torch.randn(T, N, Hd, generator=g)
    mask = torch.arange(N) < torch.tensor([[1], [3], [5]])                 # (T, N)
    with torch.no_grad():
        got = model.attended(out, model.attention_weights(out, mem, mask) @ mem)
        for t in range(T):
            n = int(mask[t].sum())
            for s in range(S):
                scores = [float(out[t, s] @ mem[t, j]) / math.sqrt(Hd) for j in range(n)]
                a = torch.softmax(torch.tensor(scores), 0)
                read = sum(a[j] * mem[t, j] for j in range(n))
                want = torch.tanh(model.attn_out.weight @ torch.cat([read, out[t, s]]) + model.attn_out.bias)
                assert torch.allclose(got[t, s], want, atol=1e-5)


def test_padding_past_a_turns_end_is_never_read():
    """Changing the memory where the mask is 0 leaves every logit as it was."""
    model, b = _model(), _batch()
    Hc, Hd = TINY["ctx_hidden"], TINY["dec_hidden"]
    with torch.no_grad():
        ctx = model.final_states(b.tokens, b.lens, b.turns)
        mask = ctx[:, Hc + N * Hd:] > 0.5
        assert not mask.all()                                              # a short last turn pads
        noisy = ctx.clone()
        noise = torch.randn(len(ctx), N, Hd) * (~mask).unsqueeze(-1)
        noisy[:, Hc:Hc + N * Hd] += noise.flatten(1)
        z = torch.zeros(len(ctx), model.z_dim)
        words = torch.tensor([[1, 7, 9]] * len(ctx))
        for c in (ctx, noisy):
            cond = model.condition(c, z)
            logits, _ = model.decode(words, cond, model.decoder_state(cond))
            if c is ctx:
                first = logits
        assert torch.allclose(first, logits, atol=1e-6)


@pytest.mark.parametrize("family,opts", [("vhred", {}), ("hred", {}), ("cvae", {}),
                                         ("vhred", {"retrieve": True, "copy": True}), ("hred", {"copy": True}),
                                         ("cvae", {"retrieve": True})])
def test_decoding_step_by_step_scores_a_reply_as_teacher_forcing_does(family, opts):
    """Generation (decode one step at a time) and training/ranking (reconstruction_nll over the
    packed reply) give the same log-likelihood, also with a retrieved reply and copying."""
    torch.manual_seed(0)
    model, b = build(ModelConfig(model=family, attention=N, **opts, **TINY), 40).eval(), _batch()
    model.index_training_split([[[20, 21, 5], [8, 9, 30]], [[6, 7], [22, 23]]])
    with torch.no_grad():
        ctx = model.final_states(b.tokens, b.lens, b.turns)               # (3, ...)
        z = torch.randn(len(ctx), model.z_dim) if model.latent else None
        cond = model.condition(ctx, z)
        reply = torch.tensor([[1, 20, 21, 22, 23, 24, 25, 2], [1, 30, 2, 0, 0, 0, 0, 0], [1, 8, 9, 2, 0, 0, 0, 0]])
        lens = torch.tensor([7, 2, 3])
        nll = model.reconstruction_nll(reply, lens, cond)
        state, total = model.decoder_state(cond), torch.zeros(3)
        for t in range(7):
            logits, state = model.decode(reply[:, t:t + 1], cond, state)
            step = -torch.log_softmax(logits[:, 0], -1).gather(1, reply[:, t + 1:t + 2]).squeeze(1)
            total += step * (t < lens)
    assert torch.allclose(nll, total, atol=1e-4)


def test_a_model_with_attention_trains_resumes_bit_for_bit_loads_answers_and_scores(tiny_cfg):
    full = resumes_bit_for_bit(tiny_cfg, ["attention=8"], 8)
    bot = vhred.load(full.dir, device="cpu")
    assert bot.config.arch.attention == 8 and hasattr(bot._model, "mem_proj")
    replies = bot.respond(["where is the station ?"], n=3)
    assert 1 <= len(replies) <= 3 and all(r.text for r in replies)
    assert len(bot.respond(["where is the station ?"], n=2, method="beam")) >= 1
    scores = bot.score(["where is the station ?"], ["turn left .", "i like apples ."])
    assert len(scores) == 2 and all(math.isfinite(s) for s in scores)
    judge = critic.from_model(bot._model, bot.config.arch)                 # reads h alone
    assert judge.context([[[5, 6, 2]]]).shape == (1, bot.config.arch.ctx_hidden)


@pytest.mark.parametrize("model", ["vhcr", "dialogwae"])
def test_attention_is_refused_in_one_line_for_families_without_it(model, tiny_cfg):
    with pytest.raises(ConfigError, match="attention is built for vhred, hred, cvae; set attention=0"):
        tiny_cfg(f"model={model}", "attention=8")
    with pytest.raises(ConfigError, match="attention must not be negative"):
        tiny_cfg("attention=-1")
