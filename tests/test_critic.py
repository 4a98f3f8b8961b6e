"""The reply critic (vhred/critic.py, vhred/critic_train.py): its start from the model, its
scores, its file, its training, and ranking by it in the commands."""
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT
from vhred import answers, critic, kept, loading
from vhred.candidates import critic_scores, generate, ranking
from vhred.critic_train import pair_loss
from vhred.errors import CheckpointError
from vhred.decoding import DecodeOptions
from vhred.render import encode_turns, pretty
from vhred.scoring import RANK_SAMPLES, score_ids


def contexts(sp, cfg):
    turns = [["Hello , how are you ?"], ["Can I help you ?", "Yes , I want a ticket to London .", "Which day ?"]]
    return [encode_turns(sp, t, cfg.max_utt_len, cfg.max_context) for t in turns]


def test_the_critic_starts_from_the_models_encoders(vhred_model):
    model, cfg, _ = vhred_model
    judge = critic.from_model(model, cfg.arch)
    for name, value in judge.encoder.state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name
    assert not any(n.startswith(("dec_", "lm_head", "prior", "posterior")) for n in judge.encoder.state_dict())


def test_the_critic_reads_the_reply_after_the_context(vhred_model):
    """The logit is the head on [h_before, e_reply, h_after], h_after one context-RNN step from
    h_before over the reply's encoding: computed here by hand from the model's own pieces."""
    model, cfg, sp = vhred_model
    judge = critic.from_model(model, cfg.arch).eval()
    ctx = contexts(sp, cfg)[1]
    reply = sp.encode("Tomorrow , please .")
    with torch.no_grad():
        h = model.final_states(*_dialogue([ctx]))                                    # (1, Hc): the model's own
        full = model.final_states(*_dialogue([ctx + [reply]]))                       # context read with the reply
        e = model.encode_utterances(*_utterance(reply))                              # (1, 2*Hu)
        want = judge.head(torch.cat([h, e, full], dim=-1)).item()
    assert critic.scores(judge, [ctx], [reply])[0] == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize("turns", [1, 3])
def test_with_the_floor_the_critic_reads_the_reply_as_the_next_speakers_turn(vhred_model, turns):
    """With floor on, h_after is the context RNN's step over the reply marked as the speaker
    whose turn comes next: the state the model reaches reading the context with the reply."""
    import dataclasses
    from vhred.models import build
    _, cfg, sp = vhred_model
    torch.manual_seed(0)
    model = build(dataclasses.replace(cfg.arch, floor=True), sp.get_piece_size()).eval()
    judge = critic.from_model(model, model.cfg).eval()
    ctx = contexts(sp, cfg)[1][-turns:]
    reply = sp.encode("Tomorrow , please .")
    with torch.no_grad():
        h = model.final_states(*_dialogue([ctx]))
        full = model.final_states(*_dialogue([ctx + [reply]]))
        e = model.encode_utterances(*_utterance(reply))
        want = judge.head(torch.cat([h, e, full], dim=-1)).item()
    assert judge.encoder.ctx_rnn.input_size == 2 * cfg.arch.utt_hidden + 2
    assert critic.scores(judge, [ctx], [reply])[0] == pytest.approx(want, abs=1e-5)


def test_a_critic_that_reads_the_turn_matches_the_replys_words_with_its_words(vhred_model):
    """turn = N: the head also reads [mean ; max] over the reply's words of r_i * a_i, r_i the
    projected word state and a_i its softmax read of the answered turn's first N projected word
    states. Computed here by hand from the utterance GRU run on each turn alone."""
    model, cfg, sp = vhred_model
    torch.manual_seed(0)
    judge = critic.from_model(model, cfg.arch, turn=4).eval()
    ctx = contexts(sp, cfg)[1]                                   # answers "Which day ?": its first 4 pieces
    reply = sp.encode("Tomorrow , please .")
    with torch.no_grad():
        h = model.final_states(*_dialogue([ctx]))
        full = model.final_states(*_dialogue([ctx + [reply]]))
        e = model.encode_utterances(*_utterance(reply))
        t = judge.word_proj(_word_states(model, ctx[-1]))[:4]                        # (<=4, M) the turn's words
        r = judge.word_proj(_word_states(model, reply))                              # (Lr, M)
        a = torch.softmax(r @ t.T / math.sqrt(critic.MATCH), dim=-1) @ t              # (Lr, M)
        both = r * a
        want = judge.head(torch.cat([h, e, full, both.mean(0, keepdim=True), both.amax(0, keepdim=True)], dim=-1)).item()
    assert critic.scores(judge, [ctx], [reply])[0] == pytest.approx(want, abs=1e-5)
    # and in a batch with longer and shorter contexts and replies, padding is never read
    ctxs = contexts(sp, cfg)
    replies = [sp.encode("I'm fine , thanks , and you ?"), reply, sp.encode("Yes .")]
    pairs = [(ctxs[0], replies[0]), (ctx, reply), (ctxs[0], replies[2])]
    together = critic.scores(judge, [c for c, _ in pairs], [r for _, r in pairs])
    assert together == pytest.approx([critic.scores(judge, [c], [r])[0] for c, r in pairs], abs=1e-5)
    assert together[1] == pytest.approx(want, abs=1e-5)


def test_the_matching_projection_learns_at_its_own_rate(vhred_model):
    """It starts random where the encoders start from the model: MATCH_LR_SCALE x lr for it alone."""
    model, cfg, _ = vhred_model
    judge = critic.from_model(model, cfg.arch, turn=4)
    groups = judge.param_groups(1e-3)
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 1e-3 * critic.MATCH_LR_SCALE])
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in judge.word_proj.parameters()}
    assert sum(len(g["params"]) for g in groups) == len(list(judge.parameters()))
    assert [g["lr"] for g in critic.from_model(model, cfg.arch).param_groups(1e-3)] == [1e-3]


def _word_states(model, ids):
    """The utterance GRU's state at each word of one utterance, read alone: (L, 2*Hu)."""
    from torch.nn.utils.rnn import pad_packed_sequence
    tokens, lens = _utterance(ids)
    _, words = model.encode_words(tokens, lens)
    return pad_packed_sequence(words, batch_first=True)[0][0]


def test_the_critics_file_keeps_how_many_turn_words_it_reads(vhred_model, tmp_path):
    import dataclasses
    model, cfg, sp = vhred_model
    torch.manual_seed(1)
    judge = critic.from_model(model, cfg.arch, turn=6).eval()
    critic.save({"weights": judge.state_dict(), "arch": dataclasses.asdict(cfg.arch),
                 "vocab_size": judge.encoder.vocab_size, "turn": 6}, str(tmp_path))
    back = critic.load(str(tmp_path))
    ctx, reply = contexts(sp, cfg)[1], sp.encode("On Monday .")
    assert back.turn == 6 and critic.scores(back, [ctx], [reply]) == critic.scores(judge, [ctx], [reply])
    # a file of the critics before --turn (no "turn" in its record) reads h alone, as it was trained
    old = critic.from_model(model, cfg.arch).eval()
    critic.save({"weights": old.state_dict(), "arch": dataclasses.asdict(cfg.arch),
                 "vocab_size": old.encoder.vocab_size}, str(tmp_path))
    back = critic.load(str(tmp_path))
    assert back.turn == 0 and critic.scores(back, [ctx], [reply]) == critic.scores(old, [ctx], [reply])


def _dialogue(dialogues):
    from vhred.dataset import collate
    b = collate(dialogues)
    return b.tokens, b.lens, b.turns


def _utterance(ids):
    tokens, lens, _ = _dialogue([[ids]])
    return tokens[:, 1:], lens - 1


def test_scores_do_not_depend_on_the_batch(vhred_model):
    model, cfg, sp = vhred_model
    judge = critic.from_model(model, cfg.arch)
    ctxs = contexts(sp, cfg)
    replies = [sp.encode("I'm fine , thanks ."), sp.encode("On Monday ."), sp.encode("Yes .")]
    pairs = [(ctxs[0], replies[0]), (ctxs[1], replies[1]), (ctxs[1], replies[2])]
    together = critic.scores(judge, [c for c, _ in pairs], [r for _, r in pairs])
    alone = [critic.scores(judge, [c], [r])[0] for c, r in pairs]
    assert together == pytest.approx(alone, abs=1e-5)


def test_dialogwaes_wasserstein_critic_is_not_taken_for_a_reply_critic(tiny_cfg):
    """DialogWAE's own critic (a submodule judging codes) was read as the run's reply critic by a
    model not loaded through load_model: rank "auto" chose "critic" and the ranking then failed."""
    from vhred.models import build
    from vhred.train import train
    cfg = tiny_cfg("model=dialogwae", "max_steps=2", "name=wae")
    built = build(cfg.arch, 300).eval()
    assert built.critic is not None and built.reply_critic is None
    assert ranking(built, DecodeOptions()) == "mmi"
    model, _, _ = loading.load_model(train(cfg, log=lambda *_: None).dir)   # its Wasserstein critic stays its own
    assert ranking(model, DecodeOptions()) == "mmi" and isinstance(model.critic, torch.nn.Sequential)
    with pytest.raises(Exception, match="this model has no reply critic"):
        ranking(model, DecodeOptions(rank="critic"))


def test_the_ranking_reads_a_reply_as_the_critic_learned_it_as_a_reader_sees_it(vhred_model, monkeypatch):
    """critic_train reads a rated reply from the text readers saw ("Bye."); the ranking renders
    the decoder's spelling ("bye .") the same way first, so one reply gets one critic score."""
    import vhred.candidates
    model, cfg, sp = vhred_model
    monkeypatch.setitem(model.__dict__, "reply_critic", critic.from_model(model, cfg.arch, turn=4).eval())
    monkeypatch.setattr(vhred.candidates, "score_ids", lambda model, c, r, *a: [0.0] * len(r))   # the critic's part alone
    ctx = encode_turns(sp, ["Hello , how are you ?", "Fine . I have to go now ."], cfg.max_utt_len, cfg.max_context)
    decoded, rated = sp.encode("bye ."), critic.reply_ids(sp, "Bye.")   # the decoder's spelling, the readers'
    assert decoded != rated
    assert critic_scores(model, [ctx] * 2, [decoded, rated], DecodeOptions()) == pytest.approx(
        critic.scores(model.reply_critic, [ctx] * 2, [rated, rated]))
    assert critic.scores(model.reply_critic, [ctx], [decoded]) != pytest.approx(critic.scores(model.reply_critic, [ctx], [rated]))


def test_the_loss_is_ranknets_over_pairs_the_readers_told_apart(vhred_model):
    model, cfg, sp = vhred_model
    judge = critic.from_model(model, cfg.arch).eval()
    ctxs = contexts(sp, cfg)
    rows = [[(sp.encode("Fine ."), 1.0), (sp.encode("No ."), 0.5), (sp.encode("Yes ."), 0.5)],
            [(sp.encode("Friday ."), 0.0), (sp.encode("Hello ."), 1.0)]]
    with torch.no_grad():
        loss = pair_loss(judge, list(zip(ctxs, rows)))
    num = den = 0.0
    for ctx, row in zip(ctxs, rows):
        s = critic.scores(judge, [ctx] * len(row), [ids for ids, _ in row])
        for i, (_, ki) in enumerate(row):
            for j, (_, kj) in enumerate(row):
                if ki > kj:   # the better first; equal shares (0.5, 0.5) are no pair
                    num += (ki - kj) * math.log1p(math.exp(-(s[i] - s[j])))
                    den += ki - kj
    assert loss.item() == pytest.approx(num / den, abs=1e-5)


GOOD = ["Thank you very much .", "Thanks a lot .", "Thank you , I will ."]
BAD = ["Monday bank the the .", "Ticket ticket London .", "The bank is a ticket ."]


def rating_round(folder, contexts):
    """A pointwise round as `vhred rate pack` writes it, answered by a reader who keeps the thanks."""
    folder.mkdir()
    system = folder / "sys-a.jsonl"
    system.write_text("".join(json.dumps({"context": c, "samples": GOOD + BAD}) + "\n" for c in contexts))
    r = subprocess.run([sys.executable, "-m", "vhred", "rate", "pack", "--system", f"a={system}", "--out",
                        str(folder / "pack.txt"), "--key", str(folder / "key.json"), "--per-context", "6"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    key = json.loads((folder / "key.json").read_text())
    (folder / "rater1.txt").write_text("".join(f"{i} {'good' if items[0]['text'] in GOOD else 'bad'}\n"
                                               for i, items in key["items"].items()))
    return str(folder)


@pytest.mark.slow   # subprocesses: the commands as a user runs them
def test_train_a_critic_on_ratings_then_rank_by_it(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained["vhred"], run)
    taught = rating_round(tmp_path / "round1", [["Here is your coffee ."], ["I found your bag ."], ["Happy birthday !"],
                                                ["Can I help you ?", "Yes , a ticket please ."]])
    held = rating_round(tmp_path / "round2", [["Your tea , sir ."], ["I fixed your car ."]])
    r = subprocess.run([sys.executable, "-m", "vhred", "critic", "--checkpoint", str(run), "--ratings", taught,
                        "--held-out", held, "--steps", "150", "--lr", "0.003", "--pretrain", "20"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "pretraining step" not in r.stderr and "held-out pairwise accuracy after pretraining" in r.stderr
    meta = critic.record(str(run))["training"]
    assert meta["contexts"] == 4 and meta["replies"] == 24 and meta["rounds"] == [os.path.normpath(taught)]
    assert meta["pretrain"] == 20
    assert kept.load(str(run)) == kept.build([taught])   # the readers' table of the same rounds, not the held-out
    assert critic.record(str(run))["turn"] == critic.TURN == 32   # the default reads the answered turn's words
    # the readers kept the thanks on other contexts too: the critic orders them first there (on the
    # stand-in corpus the pretraining alone already orders every held-out pair: no worse then)
    start = meta["held_out_pair_accuracy_start"]
    assert meta["held_out_pair_accuracy"] > 0.9 and (meta["held_out_pair_accuracy"] > start or start == 1), meta

    src = tmp_path / "contexts.jsonl"
    src.write_text(json.dumps({"context": ["Hi !", "Hello , what can I do for you ?"]}) + "\n")
    out = tmp_path / "samples.jsonl"
    cmd = [sys.executable, "-m", "vhred.generate", "--checkpoint", str(run), "--input", str(src),
           "--output", str(out), "--num-samples", "4", "--no-clean", "--order", "score"]   # rank auto: the run's critic
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    row = json.loads(out.read_text())
    assert row["scores"] == sorted(row["scores"], reverse=True)
    model, cfg, sp = loading.load_model(str(run))
    ctx = encode_turns(sp, ["Hi !", "Hello , what can I do for you ?"], cfg.max_utt_len, cfg.max_context)
    opts = DecodeOptions(num_samples=4)
    ranked = generate(model, [ctx], opts)[0]
    ids = [list(r[0]) for r in ranked]
    shown = [critic.reply_ids(sp, pretty(sp.decode(i))) for i in ids]   # each reply as a reader sees it
    judged = critic.scores(model.reply_critic, [ctx] * len(ids), shown)   # the critic's logit + MMI_WEIGHT x the MMI score
    mmi = score_ids(model, [ctx] * len(ids), ids, "mmi", RANK_SAMPLES, 0, opts.mmi_lambda, opts.length_bonus)
    # with the pretraining, the command also wrote the answer table of the training split: + its score
    # after this wh-question ("what can I do")
    assert model.answers is not None and os.path.isfile(run / "answers.json")
    told = [answers.score(model.answers.table, ["Hello , what can I do for you ?"], sp.decode(i)) for i in ids]
    assert [s for _, s in ranked] == pytest.approx(
        [c + critic.MMI_WEIGHT * m + opts.answer_weight * a for c, m, a in zip(judged, mmi, told)], abs=1e-4)

    import vhred   # the API's score is the same ranking score, read from text
    from vhred.chat import banner
    from vhred.candidates import ranking
    from vhred.sources import spaced
    texts = ["Thank you very much .", "Monday bank the the ."]
    history = encode_turns(sp, [spaced("Hi !")], cfg.max_utt_len, cfg.max_context)
    text_ids = [sp.encode(spaced(t))[:cfg.max_utt_len] for t in texts]
    want = [c + critic.MMI_WEIGHT * m for c, m in zip(
        critic.scores(model.reply_critic, [history] * 2, [critic.reply_ids(sp, pretty(sp.decode(i))) for i in text_ids]),
        score_ids(model, [history] * 2, text_ids, "mmi", RANK_SAMPLES, 0, opts.mmi_lambda, opts.length_bonus))]
    assert vhred.load(str(run)).score(["Hi !"], texts) == pytest.approx(want, abs=1e-4)
    assert ranking(model, opts) == "critic" and "ranked by its reply critic" in banner(str(run), cfg, opts, "critic")

    from vhred.export import export   # an exported model folder carries the critic, and ranks by it
    export(str(run), str(tmp_path / "folder"))
    folder_model, _, _ = loading.load_model(str(tmp_path / "folder"))
    assert critic.scores(folder_model.reply_critic, [ctx], shown[:1]) == pytest.approx(judged[:1], abs=1e-5)   # float noise of another batch

    (run / critic.FILE).write_bytes(b"not safetensors")
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "critic.safetensors is unreadable" in r.stderr and r.stderr.count("\n") == 1


def test_pretraining_ranks_the_reply_people_gave_above_the_turns_around_it():
    import random
    from vhred.critic_train import selection_batch
    dialogue = [[1], [2], [3], [4], [5]]                     # five turns, each a one-token utterance
    other = [[9], [8], [7]]
    seen = set()
    for ctx, rows in selection_batch([dialogue, other], random.Random(0), max_context=2, n=200):
        (reply, kept), *wrong = rows
        d = dialogue if reply in dialogue else other
        t = d.index(reply)
        assert kept == 1.0 and ctx == d[max(0, t - 2):t] and t >= 1
        assert all(k == 0.0 and r != reply for r, k in wrong)
        wrong = [r for r, _ in wrong]
        assert wrong[0] == d[t - 1]                              # the turn itself, said back
        near = d[t + 1:t + 2] + (d[t - 2:t - 1] if t >= 2 else [])  # the other party's next line, the same party's turn before
        assert wrong[len(wrong) - len(near):] == near
        assert len(wrong) - 1 - len(near) in (0, 1)              # and one random turn, unless it was the reply
        seen.add(tuple(reply))
    assert len(seen) == 6                                        # every turn but the firsts is a target


def test_pretraining_without_the_training_split_is_one_line_that_says_how_to_do_without(vhred_model, monkeypatch):
    from vhred.critic_train import corpus_dialogues
    from vhred.errors import DataError
    _, cfg, sp = vhred_model
    assert len(corpus_dialogues(cfg, sp)) > 10
    monkeypatch.setenv("DAILYDIALOG_SRC", "/nonexistent/ijcnlp_dailydialog.zip")
    with pytest.raises(DataError, match=r"training split: DAILYDIALOG_SRC=/nonexistent.*\(or train without it: --pretrain 0\)$"):
        corpus_dialogues(cfg, sp)


def test_rounds_may_be_packs_of_a_round_and_a_folder_that_holds_none_is_named(tmp_path):
    from vhred.critic_train import parse_args
    from vhred.errors import InputError
    for d in ("r1", "r2/p1", "r2/p2", "r3"):
        (tmp_path / d).mkdir(parents=True)
        (tmp_path / d / "key.json").write_text("{}")
    args = parse_args(["--checkpoint", "x", "--ratings", *(str(tmp_path / d) for d in ("r1", "r2", "r3")),
                       "--held-out", str(tmp_path / "r2")])
    assert args.held_out == [str(tmp_path / "r2" / p) for p in ("p1", "p2")]
    assert args.rounds == [str(tmp_path / "r1"), str(tmp_path / "r3")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="--held-out .*/none: no such folder"):
        parse_args(["--checkpoint", "x", "--ratings", str(tmp_path / "r1"), "--held-out", str(tmp_path / "none")])
    # one misspelt round among good ones: named, not left out of the critic that replaces the run's
    with pytest.raises(InputError, match="--ratings .*/r2-typo: no such folder"):
        parse_args(["--checkpoint", "x", "--ratings", str(tmp_path / "r1"), str(tmp_path / "r2-typo")])
    with pytest.raises(InputError, match="--ratings .*/empty holds no rating round"):
        parse_args(["--checkpoint", "x", "--ratings", str(tmp_path / "empty"), str(tmp_path / "r1")])


def test_a_pairwise_round_is_refused(tmp_path):
    from vhred.critic_train import rated_replies
    from vhred.errors import InputError
    (tmp_path / "key.json").write_text(json.dumps({"kind": "pairwise", "items": {}}))
    with pytest.raises(InputError, match="pairwise"):
        rated_replies(str(tmp_path))


def test_ranking_by_a_critic_a_model_lacks_is_one_line(trained, tmp_path):
    src = tmp_path / "contexts.jsonl"
    src.write_text(json.dumps({"context": ["Hi !"]}) + "\n")
    r = subprocess.run([sys.executable, "-m", "vhred.generate", "--checkpoint", trained["hred"], "--input", str(src),
                        "--output", str(tmp_path / "o.jsonl"), "--rank", "critic"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "vhred critic --checkpoint" in r.stderr and r.stderr.count("\n") == 1


def test_the_api_refuses_a_critic_the_model_lacks_before_decoding(trained):
    import vhred
    from vhred.errors import InputError
    bot = vhred.load(trained["hred"])
    with pytest.raises(InputError, match="vhred critic --checkpoint"):
        bot.respond(["Hi !"], rank="critic")
    assert bot.respond(["Hi !"], n=2)   # rank auto: mmi without a critic


def test_an_unreadable_critic_file_is_a_checkpoint_error(tmp_path):
    (tmp_path / critic.FILE).write_bytes(b"\0" * 16)
    with pytest.raises(CheckpointError, match="train it again"):
        critic.load(str(tmp_path))
    (tmp_path / "other").mkdir()
    assert critic.load(str(tmp_path / "other")) is None and critic.load(str(tmp_path / "other" / "best.pt")) is None


def test_the_chats_rank_command(vhred_model):
    from vhred.chat import Chat
    model, cfg, sp = vhred_model   # the session's tiny VHRED has no critic
    notes = []
    chat = Chat(model, cfg, sp, DecodeOptions(num_samples=2), out=notes.append, note=notes.append)
    chat.command("/rank critic")
    assert "vhred critic --checkpoint" in notes[-1] and chat.opts.rank == "auto"   # refused, unchanged
    chat.command("/rank pmi")
    assert notes[-1] == "(candidates ranked by PMI (log p(r | c) - log p(r)))" and chat.opts.rank == "pmi"
    chat.command("/rank best")
    assert "one of auto, none" in notes[-1] and chat.opts.rank == "pmi"
    chat.command("/rank auto")
    assert notes[-1] == "(candidates ranked by the MMI score)"
    kept, model.answers = model.answers, object()   # a run with an answer table: the banner's words
    try:
        chat.command("/rank mmi")
        assert notes[-1] == "(candidates ranked by the MMI score and what answers a wh-question)"
        chat.opts.answer_weight = 0.0
        chat.command("/rank mmi")
        assert notes[-1] == "(candidates ranked by the MMI score)"
    finally:
        model.answers = kept


def test_the_chats_help_names_the_beam_width_beam_returns_to(vhred_model):
    from vhred.chat import Chat
    model, cfg, sp = vhred_model
    notes = []
    chat = Chat(model, cfg, sp, DecodeOptions(num_samples=2, beam=3), out=notes.append, note=notes.append)
    chat.command("/help")
    assert "/beam            back to beam search (width 3)" in notes[-1]


def test_the_rounds_make_critic_learns_from_are_rated_rounds_of_the_repository():
    """eval/critic_rounds.txt names the 38 rounds the rated critic learned from; `make critic`
    reads it, so every folder must be a pointwise round with its readers' answers."""
    from vhred.critic_train import rated_replies
    from vhred.rate import rating_rounds
    folders = open(os.path.join(ROOT, "eval", "critic_rounds.txt")).read().split()
    assert len(folders) == 38 and all(os.path.isdir(os.path.join(ROOT, f)) for f in folders)
    rounds = rating_rounds([os.path.join(ROOT, f) for f in folders])
    assert len(rounds) == 79 and all(rated_replies(r) for r in rounds)
    assert "$$(cat eval/critic_rounds.txt)" in open(os.path.join(ROOT, "Makefile")).read()


def test_a_held_out_round_is_left_out_however_its_path_is_written(tmp_path, monkeypatch):
    """--held-out given as an absolute path while --ratings reads the same round relatively: it is
    not trained on (a plain normpath comparison kept it, and the held-out figures measured a round
    the critic had learned from)."""
    from vhred import critic_train
    for name in ("a", "b"):
        (tmp_path / "rounds" / name).mkdir(parents=True)
        (tmp_path / "rounds" / name / "key.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    for held in ("rounds/a", "./rounds/a/", str(tmp_path / "rounds" / "a")):
        args = critic_train.parse_args(["--checkpoint", "x", "--ratings", "rounds/", "--held-out", held])
        assert [os.path.basename(r) for r in args.rounds] == ["b"], held


def test_the_discriminator_trial_refuses_too_few_contexts_to_hold_a_tenth_out(trained, tmp_path, capsys):
    """eval.discriminator_critic holds a tenth of its contexts out: below ten it divided by zero."""
    from eval.discriminator_critic import main
    with pytest.raises(SystemExit) as e:
        main(["--checkpoint", trained["vhred"], "--out", str(tmp_path / "out"), "--contexts", "3", "--split", "validation"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err == "error: the validation split gives 3 contexts; give --contexts 10 or more\n"


def test_a_critic_of_another_tokenizer_is_refused_where_it_would_rank(vhred_model, trained, tmp_path, capsys):
    """A critic copied from another run was used as it was: the model's ids read as other pieces
    (a ranking silently wrong), or past its vocabulary (an IndexError from every reply)."""
    import dataclasses
    import shutil
    from vhred import critic_train, loading
    from vhred.tokenizer import train_tokenizer
    model, cfg, sp = vhred_model
    judge = critic.from_model(model, cfg.arch).eval()
    run = tmp_path / "run"
    shutil.copytree(trained["vhred"], run)
    mine = {"weights": judge.state_dict(), "arch": dataclasses.asdict(cfg.arch), "vocab_size": judge.encoder.vocab_size}
    critic.save({**mine, "tokenizer_sha256": critic.tokenizer_sha256(sp)}, str(run))
    assert loading.load_model(str(run))[0].reply_critic is not None   # its own: used
    other = tmp_path / "other.model"   # another run's pieces, as many
    train_tokenizer((f"line {i} of another corpus" for i in range(3000)), sp.get_piece_size(), str(other), 3000,
                    model_type="word")
    from vhred.tokenizer import load_tokenizer
    critic.save({**mine, "tokenizer_sha256": critic.tokenizer_sha256(load_tokenizer(str(other)))}, str(run))
    with pytest.raises(CheckpointError, match="is the critic of another model \\(trained with another tokenizer\\); "
                                              "train it again with `vhred critic --checkpoint"):
        loading.load_model(str(run))
    critic.save({**mine, "vocab_size": sp.get_piece_size() + 100}, str(run))   # saved before the hash: its size
    with pytest.raises(CheckpointError, match="is the critic of another model"):
        loading.load_model(str(run))
    P1 = os.path.join(ROOT, "eval", "ratings", "2026-12-03-critic-read", "p1")
    (run / critic.FILE).write_bytes(b"\0" * 16)   # damaged: the command its message names replaces it
    assert loading.load_model(str(run), critic_file=False)[0].reply_critic is None
    with pytest.raises(SystemExit):   # every round held out: nothing left to train on, said as such
        critic_train.main(["--checkpoint", str(run), "--ratings", P1, "--held-out", P1])
    assert "every --ratings round is also --held-out" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        critic_train.main(["--checkpoint", str(run), "--ratings", P1, "--seed", str(10 ** 26)])
    assert "--seed must be between" in capsys.readouterr().err
