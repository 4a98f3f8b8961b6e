"""Retrieve-and-refine and the copy mechanism (arch `retrieve`, `copy`; vhred/models/retrieval.py and
layers.py): the search is TF-IDF cosine computed independently, training never retrieves the
exchange it learns, the context rows carry the retrieved reply's words and every attended piece's
id, each step's mixture is a distribution and equals p_gen softmax + (1 - p_gen) copy by hand,
step-by-step decoding scores as teacher forcing does, and a model with both options trains,
resumes bit for bit, saves its index, loads from a run or model folder, answers and scores."""
import math
from collections import Counter

import pytest
import torch

import vhred
from vhred import checkpoint, export
from vhred.config import ConfigError, ModelConfig
from vhred.errors import CheckpointError
from vhred.models import build
from vhred.models.retrieval import RetrievalIndex
from vhred.tokenizer import EOS, PAD

from .test_families import TINY, _batch, resumes_bit_for_bit

N = 4
WINDOWS = [[[5, 6, 7], [8, 9]], [[5, 6, 7], [10, 11, 12], [13]], [[20, 21], [22, 23]], [[6, 20, 30], [31]]]


def _model(seed=0, **opts):
    torch.manual_seed(seed)
    model = build(ModelConfig(model="vhred", attention=N, **{**TINY, "retrieve": True, "copy": True, **opts}), 40)
    model.index_training_split(WINDOWS)
    return model.eval()


def _cosine_scores(index_turns, query, vocab=40):
    """Each turn's TF-IDF cosine with the query, computed here without the index's code."""
    P = len(index_turns)
    df = Counter(t for turn in index_turns for t in set(turn))
    idf = {t: math.log(P / n) for t, n in df.items()}
    def vec(turn):
        v = torch.zeros(vocab)
        for t, c in Counter(turn).items():
            v[t] = c * idf.get(t, 0.0)
        return v / (v.norm() or 1.0)
    return [float(vec(query) @ vec(turn)) for turn in index_turns]


def test_the_index_holds_each_exchange_once_and_finds_the_tf_idf_nearest_turn():
    index = RetrievalIndex(40)
    assert index.replies([[5, 6]]) == [[]]                                 # empty: nothing retrieved
    assert index.fill(WINDOWS) == 5                                        # ([5,6,7], [8,9]) twice in the windows
    pairs = index.pairs()
    assert pairs[0] == ((5, 6, 7), (8, 9)) and pairs[1] == ((5, 6, 7), (10, 11, 12))
    for query in ([20, 30], [6, 7, 7], [22], [10, 11, 12], [31, 20]):
        scores = _cosine_scores([list(turn) for turn, _ in pairs], query)
        got = index.replies([query])[0]
        if max(scores) == 0:   # no turn shares a piece with it: nothing to read
            assert got == []
            continue
        assert max(scores[i] for i, (_, reply) in enumerate(pairs) if list(reply) == got) == pytest.approx(max(scores))
    assert index.replies([[21], [30, 6]]) == [[22, 23], [31]]                # unambiguous ones, in a batch


def test_training_never_retrieves_the_exchange_it_learns():
    index = RetrievalIndex(40)
    index.fill(WINDOWS)
    assert index.replies([[20, 21]]) == [[22, 23]]
    assert index.replies([[20, 21]], learned=[[22, 23]]) != [[22, 23]]     # the next best instead
    assert index.replies([[5, 6, 7]], learned=[[8, 9]]) == [[10, 11, 12]]  # the turn's other exchange
    assert index.replies([[5, 6, 7]], learned=[[10, 11, 12]]) == [[8, 9]]


def test_no_copy_of_the_learned_reply_is_retrieved_and_a_turn_without_a_match_retrieves_none():
    """DailyDialog holds dialogues twice, differing in spacing or a name: the learned reply after
    another turn is skipped too. An empty turn, or one sharing no piece with any exchange's, gets
    no reply (topk's tie order would pick an arbitrary one)."""
    index = RetrievalIndex(40)
    index.fill([[[5, 6, 7], [8, 9]], [[5, 6, 17], [8, 9]], [[5, 6, 18], [14]], [[30, 31], [32]]])
    assert index.replies([[5, 6, 7]]) == [[8, 9]]
    assert index.replies([[5, 6, 7]], learned=[[8, 9]]) == [[14]]       # not the copy after [5, 6, 17]
    assert index.replies([[5, 6, 18]], learned=[[14]]) == [[8, 9]]
    assert index.replies([[], [33, 34]]) == [[], []]
    assert index.replies([[5, 6, 7]], learned=[[8, 9]]) == [[14]]


def test_ranking_holds_the_true_exchanges_out_of_the_index(monkeypatch):
    """Ranking scores the true reply of a split among others: it must not be handed back as the
    retrieved reply, to be copied (the split's exchanges may be in the training split)."""
    from vhred.metrics.ranking import rank_scores
    model = _model()
    seen, real = [], model.retrieval.replies
    monkeypatch.setattr(model.retrieval, "replies", lambda turns, learned=None: seen.extend(real(turns, learned)) or seen[-len(turns):])
    rank_scores(model, [[[5, 6, 7], [20, 21]]], [[[22, 23], [31], [13]]], ["ll", "pmi"], 2, 0)
    assert [31] in seen and [22, 23] not in seen                     # the next best match instead
    assert model.retrieval.replies([[20, 21]]) == [[22, 23]]         # held out only while ranking


def test_the_matches_kept_are_bounded_and_forgetting_them_changes_no_answer(monkeypatch):
    from vhred.models import retrieval
    index = RetrievalIndex(40)
    index.fill(WINDOWS)
    want = index.replies([[21], [30, 6], [22]])
    monkeypatch.setattr(retrieval, "CACHE_LIMIT", 2)
    again = RetrievalIndex(40)
    again.fill(WINDOWS)
    assert [again.replies([t])[0] for t in ([21], [30, 6], [22])] == want
    assert len(again._found) <= 2
    monkeypatch.setattr(retrieval, "CACHE_LIMIT", 3)
    again.replies([[21], [30, 6]])                     # two kept
    assert again.replies([[21], [5, 6]]) == index.replies([[21], [5, 6]])   # one known, one new: past the limit


def test_each_row_carries_the_retrieved_replys_words_and_every_attended_pieces_id():
    """After the answered turn's N word states: the retrieved reply's N (the utterance GRU run
    on it alone, projected), both masks, then the 2N piece ids (PAD past each end)."""
    model, b = _model(), _batch()
    Hc, Hd, M = TINY["ctx_hidden"], TINY["dec_hidden"], 2 * N
    with torch.no_grad():
        rows = model.final_states(b.tokens, b.lens, b.turns)
        assert rows.shape == (3, Hc + M * Hd + 2 * M)
        for row, last in zip(rows, (torch.cumsum(b.turns, 0) - 1).tolist()):
            turn = b.tokens[last, 1:int(b.lens[last]) - 1].tolist()
            got = model.retrieval.replies([turn])[0]
            words, _ = model.utt_rnn(model.embed(torch.tensor(got + [EOS])).unsqueeze(0))
            n = min(N, len(got) + 1)
            mem = row[Hc:Hc + M * Hd].view(M, Hd)
            assert torch.allclose(mem[N:N + n], model.mem_proj(words[0, :n]), atol=1e-5)
            mask = row[Hc + M * Hd:Hc + M * Hd + M].tolist()
            assert mask[N:] == [1.0] * n + [0.0] * (N - n)
            ids = row[Hc + M * Hd + M:].long().tolist()
            assert ids[:N] == (turn + [EOS] + [PAD] * N)[:N] and ids[N:] == (got + [EOS] + [PAD] * N)[:N]
        assert torch.equal(model.copy_ids(model.condition(rows, torch.zeros(3, model.z_dim))),
                           rows[:, Hc + M * Hd + M:].long())


def test_each_step_is_p_gen_softmax_plus_the_copy_weights_by_hand_and_sums_to_one():
    model, b = _model(), _batch()
    with torch.no_grad():
        model.copy_gate.bias.fill_(0.3)
        model.copy_gate.weight.normal_()                                    # p_gen varies by step
        ctx = model.final_states(b.tokens, b.lens, b.turns)
        cond = model.condition(ctx, torch.randn(len(ctx), model.z_dim))
        words = torch.tensor([[1, 7, 9]] * len(ctx))
        logp, _ = model.decode(words, cond, model.decoder_state(cond))     # (3, 3, V)
        assert torch.allclose(logp.exp().sum(-1), torch.ones(3, 3), atol=1e-5)
        out, _ = model.dec_rnn(model._decoder_input(words, model.split(cond)[0]), model.decoder_state(cond))
        vec, mem, mask = model.split(cond)
        for t in range(3):
            ids = model.copy_ids(cond)[t].tolist()
            for s in range(3):
                a = model.attention_weights(out[t:t + 1, s:s + 1], mem[t:t + 1], mask[t:t + 1])[0, 0]
                read = a @ mem[t]
                p_gen = torch.sigmoid(model.copy_gate.weight @ torch.cat([out[t, s], read]) + model.copy_gate.bias)
                vocab = torch.softmax(model.lm_head(model.out_proj(model.attended(out[t, s], read))), -1)
                copy = torch.zeros(40)
                for j, i in enumerate(ids):
                    copy[i] += a[j]
                assert 0.1 < float(p_gen) < 0.99 or t + s > 0
                assert torch.allclose(logp[t, s].exp(), p_gen * vocab + (1 - p_gen) * copy, atol=1e-5)


def test_a_model_that_only_copies_says_nothing_it_cannot_copy():
    model, b = _model(), _batch()
    with torch.no_grad():
        model.copy_gate.bias.fill_(-30.0)                                   # p_gen = 0
        ctx = model.final_states(b.tokens, b.lens, b.turns)
        cond = model.condition(ctx, torch.zeros(len(ctx), model.z_dim))
        logp, _ = model.decode(torch.tensor([[1]] * len(ctx)), cond, model.decoder_state(cond))
        for t, ids in enumerate(model.copy_ids(cond).tolist()):
            attended = {i for i, m in zip(ids, model.split(cond)[2][t].tolist()) if m}
            likely = set((logp[t, 0] > math.log(1e-6)).nonzero().squeeze(1).tolist())
            assert likely <= attended and likely


def test_copy_starts_from_generating_and_leaves_the_other_weights_as_without_it():
    """p_gen = sigmoid(2) at first, and the copy gate draws no random numbers at initialisation."""
    with_copy = _model(seed=3)
    without = _model(seed=3, copy=False)
    assert with_copy.copy_gate.bias.tolist() == [2.0] and not with_copy.copy_gate.weight.any()
    for name, p in without.state_dict().items():
        assert torch.equal(p, with_copy.state_dict()[name]), name


def test_retrieve_and_copy_need_attention():
    for key in ("retrieve", "copy"):
        with pytest.raises(ConfigError, match=f"{key}=true works through attention: add attention="):
            vhred.config.validate(vhred.config.from_dict({"arch": {key: True}}))


def test_a_model_with_both_trains_resumes_bit_for_bit_and_answers_from_its_run_or_model_folder(tiny_cfg, tmp_path):
    full = resumes_bit_for_bit(tiny_cfg, ["attention=8", "retrieve=true", "copy=true"], 8)
    assert len(full.model.retrieval) > 100                                  # the tiny slice's exchanges
    state = checkpoint.load(f"{full.dir}/best.pt")
    assert torch.equal(state["model"]["retrieval.reply_ids"], full.model.retrieval.reply_ids)
    bot = vhred.load(full.dir, device="cpu")
    assert bot.config.arch.copy and len(bot._model.retrieval) == len(full.model.retrieval)
    context = ["where is the station ?"]
    replies = [r.text for r in bot.respond(context, n=3)]
    assert replies and all(replies)
    scores = bot.score(context, ["turn left .", "i like apples ."])
    assert all(math.isfinite(s) for s in scores)
    folder = str(tmp_path / "model")
    export.main([full.dir, folder])
    again = vhred.load(folder, device="cpu")
    assert [r.text for r in again.respond(context, n=3)] == replies         # the index travelled with it
    state["model"] = {k: v for k, v in state["model"].items() if not k.startswith("retrieval.reply_ids")}
    checkpoint.save(state, str(tmp_path / "broken.pt"))
    with pytest.raises(CheckpointError, match="weights do not fit the model its config describes"):
        vhred.load(str(tmp_path / "broken.pt"), device="cpu")
