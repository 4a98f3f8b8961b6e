"""The Python API: vhred.load, Bot.respond, Bot.score, and its errors."""
import os
import shutil
import re
import subprocess
import sys

import pytest

import vhred
from tests.conftest import ROOT
from vhred.errors import CheckpointError, InputError, UserError

HISTORY = ["Hello, how are you?", "Fine, thanks. And you?", "Can I help you?"]


@pytest.fixture(scope="module")
def bot(trained):
    return vhred.load(trained["vhred"], device="cpu")


def test_load_takes_a_run_folder_or_a_file(trained, bot):
    assert bot.checkpoint.endswith("best.pt") and bot.device == "cpu" and bot.config.arch.model == "vhred"
    again = vhred.load(os.path.join(trained["vhred"], "best.pt"))
    assert again.checkpoint == bot.checkpoint


def test_respond_gives_ranked_candidates_with_text_and_score(bot):
    candidates = bot.respond(HISTORY, n=4)
    assert 1 <= len(candidates) <= 4
    assert all(isinstance(c, vhred.Candidate) and isinstance(c.text, str) for c in candidates)
    scores = [c.score for c in candidates]
    assert scores == sorted(scores, reverse=True)
    assert len({c.text for c in candidates}) == len(candidates)   # repeats dropped


def test_a_printed_candidate_shows_its_text_and_score_not_its_z(bot):
    c = bot.respond(HISTORY, n=1)[0]
    assert len(c.z) == bot.config.arch.z_dim   # the z is there for the caller
    printed = repr(c)
    assert repr(c.text) in printed and "score=" in printed and "faulty=" in printed
    assert "z=" not in printed and str(c.z[0]) not in printed


def test_same_seed_same_replies_other_seed_other_replies(bot):
    a = bot.respond(HISTORY, n=5, method="sample", seed=3)
    assert a == bot.respond(HISTORY, n=5, method="sample", seed=3)
    assert a != bot.respond(HISTORY, n=5, method="sample", seed=4)


def test_a_cut_reply_passed_back_is_read_without_its_mark(bot):
    """The chat page (and an API caller) appends a reply as shown, " …" included when max_len cut
    it: the model reads its own turns and score()'s candidates without the mark, which it did not
    write; a user's turn (the last, and every second one before it) is read as typed."""
    from vhred.render import CUT
    said = ["Hello , how are you ?", "Fine , thanks .", "What do you do ?"]
    shown = [said[0], said[1] + CUT, said[2]]
    assert bot._context(shown) == bot._context(said)
    assert bot.respond(shown, n=3, seed=2) == bot.respond(said, n=3, seed=2)
    assert bot._context([said[0] + CUT] + said[1:]) != bot._context(said)   # the user's own
    assert bot._context(said[:2] + [said[2] + CUT]) != bot._context(said)
    assert bot.score(said, ["I work here ." + CUT]) == bot.score(said, ["I work here ."])


def test_decoding_options_reach_the_decoder(bot, trained):
    short = bot.respond(["Hello!"], n=5, method="sample", max_len=2, seed=1)
    full = bot.respond(["Hello!"], n=5, method="sample", seed=1)
    assert any(c.text.endswith(" …") for c in short)   # cut at two pieces, and marked so
    assert all(c.text.endswith(" …") or len(bot._sp.encode(c.text)) <= 2 for c in short)
    assert max(len(c.text) for c in full) > max(len(c.text) for c in short)
    same = bot.respond(["Hello!"], n=8, method="greedy", z=full[0].z, rank="none", dedup=False)   # one z: one reply
    assert len(same) == 8 and len({c.text for c in same}) == 1
    assert len(bot.respond(["Hello!"], n=8, method="greedy", z=full[0].z, rank="none")) == 1
    hred = vhred.load(trained["hred"])
    assert len(hred.respond(HISTORY, n=3, method="beam")) == 3   # HRED's n best beams


def test_a_request_takes_the_servers_method_and_drops_its_shaping_for_another(bot):
    """What a request leaves out comes from the base (a server's flags): its method too, when the
    request's temperature is the neutral 1; a request that picks greedy or beam without shaping
    of its own decodes without the base's temperature, which shapes sampled words only."""
    from vhred.decoding import DecodeOptions
    greedy = DecodeOptions(method="greedy")
    assert bot._options(2, {"temperature": 1.0}, greedy).method == "greedy"
    assert bot._options(2, {"top_k": 0}, greedy).method == "greedy"
    assert bot._options(2, {"temperature": 0.8}, greedy).method == "sample"
    warm = DecodeOptions(method="sample", temperature=0.7)
    opts = bot._options(2, {"method": "greedy"}, warm)
    assert (opts.method, opts.temperature, opts.top_k, opts.top_p) == ("greedy", 1.0, 0, 1.0)
    assert bot._options(2, {}, warm).temperature == 0.7 and bot._options(2, {"method": "sample"}, warm).temperature == 0.7
    with pytest.raises(InputError, match="shape sampled words"):
        bot._options(2, {"method": "greedy", "temperature": 0.5}, warm)
    shaped = DecodeOptions(method="sample", temperature=0.7, top_p=0.9)   # a neutral key of the request's own
    assert (bot._options(2, {"method": "beam", "top_k": 0}, shaped).top_p, bot._options(2, {"method": "greedy", "temperature": 1.0}, shaped).top_p) == (1.0, 1.0)


def test_eval_under_dialogwaes_protocol_samples_when_a_temperature_is_given():
    from vhred.evaluate import parse_args
    from vhred.decoding import options_from_args
    assert options_from_args(parse_args(["--protocol", "dialogwae", "--temperature", "0.8"])).method == "sample"
    assert options_from_args(parse_args(["--protocol", "dialogwae"])).method == "greedy"
    assert options_from_args(parse_args(["--protocol", "dialogwae", "--method", "beam"])).method == "beam"
    for neutral in (["--temperature", "1"], ["--top-k", "0"], ["--top-p=1.0"]):   # as if left out: greedy
        assert options_from_args(parse_args(["--protocol", "dialogwae", *neutral])).method == "greedy"


def test_score_scores_each_candidate_on_the_ranking_scale(bot):
    """respond() ranks by the default ranking score (MMI, lambda DecodeOptions.mmi_lambda) with
    K = 3 z samples and seed 0 (scoring.RANK_SAMPLES), and score() gives a text that same score of
    its tokens: the same numbers, not merely numbers."""
    from vhred.candidates import candidates, ranking, same_reply, shown_filter
    from vhred.decoding import DecodeOptions
    from vhred.render import response_text
    from vhred.sources import spaced
    from vhred.scoring import RANK_SAMPLES, score_ids
    model, sp, cfg, opts = bot._model, bot._sp, bot.config, DecodeOptions(num_samples=5, seed=0)
    assert ranking(model, opts) == "mmi"   # rank "auto" of a model without a reply critic
    context = bot._context(HISTORY)
    decoded = candidates(model, [context], opts, same=same_reply(sp), keep=shown_filter(sp, cfg, opts))[0]   # as respond()
    texts = [response_text(sp, r[0], opts.max_len) for r in decoded]
    assert [(c.text, c.score) for c in bot.respond(HISTORY, n=5, seed=0)] == [(t, r[1]) for t, r in zip(texts, decoded)]
    ids = [r[0] for r in decoded]
    assert [r[1] for r in decoded] == pytest.approx(score_ids(model, [context] * len(ids), ids, "mmi", RANK_SAMPLES, 0,
                                                                  opts.mmi_lambda, opts.length_bonus),
                                                    rel=1e-4, abs=1e-5)
    long = "Tell me more about the weather, the trains, the hotel, the museum and the restaurant near the station."
    texts = texts + ["Tell me more about the weather.", long]
    text_ids = [sp.encode(spaced(t)) for t in texts]   # whole, as respond() scores its replies
    assert len(text_ids[-1]) > cfg.max_utt_len
    scores = bot.score(HISTORY, texts)
    assert all(isinstance(s, float) for s in scores)
    assert scores == pytest.approx(score_ids(model, [context] * len(texts), text_ids, "mmi", RANK_SAMPLES, 0,
                                                             opts.mmi_lambda, opts.length_bonus),
                                   rel=1e-4, abs=1e-5)
    for t, r in zip(texts, decoded):   # a reply whose text reads back as its tokens: respond's own score
        if sp.encode(spaced(t)) == r[0]:
            assert bot.score(HISTORY, [t])[0] == pytest.approx(r[1], rel=1e-4, abs=1e-5)


def test_a_pooled_bot_scores_as_it_ranks(bot, trained):
    """With pool_with, score() is the sum of every run's own score, the number respond() ranks by."""
    from vhred.candidates import candidates, same_reply, shown_filter
    from vhred.decoding import DecodeOptions
    from vhred.scoring import RANK_SAMPLES, score_ids
    hred = vhred.load(trained["hred"], device="cpu")
    pooled = vhred.load(trained["vhred"], device="cpu", pool_with=[trained["hred"]])
    texts = ["I am fine, thank you.", "Turn left at the bank."]
    both = [a + b for a, b in zip(bot.score(HISTORY, texts), hred.score(HISTORY, texts))]
    assert pooled.score(HISTORY, texts) == pytest.approx(both, rel=1e-5, abs=1e-5)
    model, sp, cfg, opts = pooled._model, pooled._sp, pooled.config, DecodeOptions(num_samples=5, seed=0)
    decoded = candidates(model, [pooled._context(HISTORY)], opts, same=same_reply(sp), keep=shown_filter(sp, cfg, opts))[0]
    ids, ctx = [r[0] for r in decoded], [pooled._context(HISTORY)] * len(decoded)
    each = [score_ids(m._model, ctx, ids, "mmi", RANK_SAMPLES, 0, opts.mmi_lambda, opts.length_bonus) for m in (bot, hred)]
    assert [r[1] for r in decoded] == pytest.approx([a + b for a, b in zip(*each)], rel=1e-4, abs=1e-5)


def test_a_pooled_bot_given_z_ranks_by_the_whole_pool(trained, bot):
    """A given z draws from the first run alone, but every run of the pool still judges the draws:
    each reply's score is the first run's plus the other run's (test_a_pooled_bot_scores_as_it_ranks),
    ranked by that sum."""
    pooled = vhred.load(trained["vhred"], device="cpu", pool_with=[trained["hred"]])
    z = next(c.z for c in pooled.respond(HISTORY, n=5) if c.z is not None)   # a draw of its own
    ask = dict(n=3, z=z, method="sample", temperature=1.0, clean=False)   # clean=False: in ranked order
    alone, got = bot.respond(HISTORY, **ask), pooled.respond(HISTORY, **ask)
    assert sorted(c.text for c in got) == sorted(c.text for c in alone) and len(got) >= 2
    assert [c.score for c in got] == sorted((c.score for c in got), reverse=True)
    own = {c.text: c.score for c in alone}
    for c in got:   # the other run's judgement is there: not the first run's score alone
        assert c.score != pytest.approx(own[c.text], abs=1e-3)


@pytest.mark.parametrize("call, message", [
    (lambda b: b.respond("just a string"), "history must be a list of strings"),
    (lambda b: b.respond([]), "history must hold at least one turn"),
    (lambda b: b.respond(["hi", 3]), "history must be a list of strings"),
    (lambda b: b.respond(["hi"], n=0), "n must be at least 1"),
    (lambda b: b.respond(["hi"], n=2.5), "n must be an int"),
    (lambda b: b.respond(["hi"], n=1001), "n must be between 1 and 1,000, got 1001"),   # respond has no num_samples
    (lambda b: b.respond(["hi"], n=401), "n x beam may be at most 2,000 (rows of one beam search), got 401 x 5"),
    (lambda b: b.respond(["hi"], temperature=10 ** 400, method="sample"),
     "temperature must be a positive finite number up to 1e6, got 1000000000000000000000000000000000000..."),
    (lambda b: b.respond(["hi"], answer_weight=10 ** 45), "answer_weight must be in [0, 10], got 1000000000000000000000000000000000000..."),
    (lambda b: b.respond(["hi"], temprature=0.5), "unknown decoding option 'temprature'"),
    (lambda b: b.respond(["hi"], temperature="hot"), "temperature must be a float"),
    (lambda b: b.respond(["hi"], temperature=0.5, method="beam"), 'shape sampled words: add method="sample"'),
    (lambda b: b.respond(["hi"], top_p=0.0, method="sample"), "top_p must be in (0, 1]"),
    (lambda b: b.respond(["hi"], max_len=-1), "max_len must be between 1"),
    (lambda b: b.respond(["hi"], dedup=1), "dedup must be a bool"),
    (lambda b: b.score(["hi"], "one string"), "candidates must be a list of strings"),
])
def test_bad_calls_are_one_line_input_errors(bot, call, message):
    with pytest.raises(InputError) as e:
        call(bot)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_z_of_numpy_or_torch_numbers_decodes_as_the_list_does(bot):
    """A notebook's z: numpy float32s, a numpy array, a tensor: the same reply as the list."""
    import numpy as np
    import torch
    c = bot.respond(HISTORY, n=1)[0]
    for z in ([np.float32(x) for x in c.z], np.array(c.z), torch.tensor(c.z), list(torch.tensor(c.z))):
        assert [r.text for r in bot.respond(HISTORY, n=1, z=z)] == [c.text]
    assert [r.text for r in bot.interpolate(HISTORY, np.array(c.z), torch.tensor(c.z), steps=2)] == [c.text] * 2
    with pytest.raises(InputError, match="method must be sample, greedy or beam, got ''"):   # not read as "not given"
        bot.respond(HISTORY, n=1, method="")


def test_an_integer_too_long_to_print_is_refused_in_one_line(bot):
    """Python will not repr an int of over 4,300 digits; the error names its size instead."""
    huge = 10 ** 5000
    for keyword in ("n", "temperature", "top_p", "seed", "answer_weight"):
        with pytest.raises(InputError, match="got an integer of about 5,000 digits$"):
            bot.respond(HISTORY, **{keyword: huge})


def test_load_errors_are_the_commands_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        vhred.load(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable vhred checkpoint") as e:
        vhred.load(tmp_path / "junk.pt")
    assert "\n" not in str(e.value) and isinstance(e.value, UserError)
    for device in ("tpu", 5):   # a misspelt string and a wrong type: the same InputError the README promises
        with pytest.raises(InputError, match="device must be auto, cpu or cuda"):
            vhred.load(tmp_path, device=device)
    with pytest.raises(InputError, match="takes the path"):
        vhred.load(42)


def test_only_load_bot_and_candidate_are_public():
    assert sorted(vhred.__all__) == ["Bot", "Candidate", "load"]
    public = [n for n in vars(vhred.Bot) if not n.startswith("_")]
    assert sorted(public) == ["interpolate", "respond", "score"]


def test_the_readme_example_runs_as_written(trained, tmp_path, capsys):
    """The Python API section's example, pointed at the tiny run instead of runs/dailydialog-cpu-vhred."""
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = readme.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 5
    exec(code.replace("runs/dailydialog-cpu-vhred", trained["vhred"]), {})
    assert capsys.readouterr().out.strip()


@pytest.mark.slow   # a subprocess: a fresh interpreter
def test_import_vhred_is_light_until_the_api_is_used():
    r = subprocess.run([sys.executable, "-c", "import sys, vhred, vhred.config; print('torch' in sys.modules)"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.stdout.strip() == "False", r.stderr


def test_load_pools_draws_with_other_runs(trained, bot, tmp_path):
    """pool_with: respond's candidates come from both runs' draws, the other run's without a z,
    and a copy of the run pooled with it answers as the run alone at half the draws; the run
    itself is refused (its replies twice)."""
    pooled = vhred.load(trained["vhred"], device="cpu", pool_with=[trained["hred"]])
    candidates = pooled.respond(HISTORY, n=5)
    assert 1 <= len(candidates) <= 5 and any(c.z is None for c in candidates)
    for again in ([trained["vhred"]], [os.path.join(trained["vhred"], "best.pt")], [trained["hred"], trained["hred"] + "/"]):
        with pytest.raises(InputError, match="is the same run as"):
            vhred.load(trained["vhred"], device="cpu", pool_with=again)
    shutil.copytree(trained["vhred"], tmp_path / "copy")
    itself = vhred.load(trained["vhred"], device="cpu", pool_with=[str(tmp_path / "copy")])
    # 16 and 8 draws: neither goes on to more draws when its first ones hold faulty replies
    assert [c.text for c in itself.respond(HISTORY, n=5, draws=16)] == [c.text for c in bot.respond(HISTORY, n=5, draws=8)]
    for wrong in (trained["hred"], [3], None):
        with pytest.raises(InputError, match="pool_with takes a list of run folders"):
            vhred.load(trained["vhred"], pool_with=wrong)
    with pytest.raises(CheckpointError):
        vhred.load(trained["vhred"], pool_with=[os.path.join(trained["hred"], "missing")])
