"""The answer score after a wh-question (vhred/answers.py): its trigger pairs counted by hand, and
its place in the ranking."""
import json
import math
import os
import shutil
import subprocess
import sys

import pytest

from vhred import answers, loading
from vhred.errors import CheckpointError
from vhred.candidates import _scores, generate
from vhred.decoding import DecodeOptions
from vhred.render import encode_turns

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("text, words", [
    ("It ’ s at 7:30 .", {"it's", "at", "<time>"}),
    ("$ 25 , or 3.50 a day .", {"$", "<num>", "or", "a", "day"}),
    ("Don't WORRY", {"don't", "worry"}),
])
def test_answer_words(text, words):
    assert answers.answer_words(text) == words


@pytest.mark.parametrize("turn, phrases", [
    ("How long will it take ?", ("how", "how long")),
    ("Fine , thanks . And where are you going ?", ("where", "where are")),
    ("Can you tell me when it opens ?", ("when", "when it")),
    ("Why ?", ("why", "why")),
    ("Is it far ?", None),
    ("How about tea ?", None),                         # a suggestion
    ("Did he leave when you left ?", None),            # asks yes or no
    ("What a day . I see .", None),                    # no question
])
def test_wh_phrases(turn, phrases):
    assert answers.wh_phrases(turn) == phrases


# 30 replies: 20 after "How long ...?" (10 with "minutes", 4 with "weeks", 8 "Yes ."), 10 after
# statements ("OK ." 4, "Yes ." 4, "Five minutes ." 2)
PAIRS = ([(["How long is it ?"], "Ten minutes .")] * 8 + [(["How long does it take ?"], "Two weeks and minutes .")] * 2
         + [(["How long is it ?"], "Yes .")] * 8 + [(["How long is it ?"], "About two weeks .")] * 2
         + [(["I see ."], "OK .")] * 4 + [(["I see ."], "Yes .")] * 4 + [(["Good ."], "Five minutes .")] * 2)


def pmi(k: int, asked: int, with_word: int, replies: int = 30) -> float:
    """log p(w | f) / p(w), p(w | f) smoothed by SMOOTH pseudo-answers of p(w) = (count + 1) / (n + 2)."""
    p = (with_word + 1) / (replies + 2)
    return math.log((k + answers.SMOOTH * p) / (asked + answers.SMOOTH) / p)


def test_pairs_counted_by_hand():
    table = answers.build(PAIRS)
    assert table["asked"] == {"how": 20, "how long": 20}
    # "minutes": 10 of the 20 answers to "how long", 12 of all 30 replies
    assert table["pmi"]["how long"]["minutes"] == pytest.approx(pmi(10, 20, 12), abs=1e-4)
    assert table["pmi"]["how long"]["weeks"] == pytest.approx(pmi(4, 20, 4), abs=1e-4)
    assert "ok" not in table["pmi"]["how long"]                     # never in an answer to it
    assert pmi(8, 20, 12) < 0 and "yes" not in table["pmi"]["how long"]   # 8 of 20 there, 12 of 30 anywhere
    assert set(table["pmi"]["how long"]) == {"minutes", "weeks", "two", "ten", "about", "and"}
    assert table["pmi"]["how"] == table["pmi"]["how long"]


def test_score_is_the_best_word_for_the_phrase_asked():
    table = answers.build(PAIRS)
    asked = ["Hi .", "How long will you stay ?"]
    assert answers.score(table, asked, "Two weeks , maybe minutes .") == pytest.approx(
        max(table["pmi"]["how long"]["weeks"], table["pmi"]["how long"]["minutes"]))
    assert answers.score(table, asked, "OK .") == 0.0
    assert answers.score(table, ["Is it far ?"], "Ten minutes .") == 0.0                 # not a wh-question
    assert answers.score(table, ["Where is it ?"], "Ten minutes .") == 0.0               # never asked
    # a phrase asked fewer than MIN_ASKED times falls back to its wh-word's pairs
    few = {"asked": {"how": 50, "how long": answers.MIN_ASKED - 1}, "pmi": {"how": {"years": 1.5}, "how long": {"minutes": 2.0}}}
    assert answers.score(few, asked, "Ten minutes , two years .") == 1.5
    few["asked"]["how long"] = answers.MIN_ASKED
    assert answers.score(few, asked, "Ten minutes , two years .") == 2.0


def test_the_ranking_adds_the_weighted_answer_score(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained["vhred"], run)
    model, cfg, sp = loading.load_model(str(run))
    assert model.answers is None
    answers.save(answers.build(PAIRS), str(run))
    model, cfg, sp = loading.load_model(str(run))
    ctx = encode_turns(sp, ["Hi !", "How long is it ?"], cfg.max_utt_len, cfg.max_context)
    replies = [sp.encode(t) for t in ("ten minutes .", "yes .", "two weeks .")]
    plain = _scores(model, [ctx] * 3, replies, DecodeOptions(rank="mmi", answer_weight=0))
    weighted = _scores(model, [ctx] * 3, replies, DecodeOptions(rank="mmi", answer_weight=2.0))
    default = _scores(model, [ctx] * 3, replies, DecodeOptions(rank="mmi"))
    table = answers.load(str(run))
    want = [answers.score(table, ["How long is it ?"], sp.decode(r)) for r in replies]
    assert want[0] > 0 and want[1] == 0 and want[2] > 0
    assert [w - p for w, p in zip(weighted, plain)] == pytest.approx([2.0 * a for a in want], abs=1e-5)
    assert [d - p for d, p in zip(default, plain)] == pytest.approx(want, abs=1e-5)   # weight 1 by default
    assert _scores(model, [ctx] * 3, replies, DecodeOptions(rank="ll", answer_weight=2.0)) == pytest.approx(
        _scores(model, [ctx] * 3, replies, DecodeOptions(rank="ll")))   # an explicit score stays pure
    ranked = generate(model, [ctx], DecodeOptions(num_samples=3, rank="mmi", answer_weight=2.0))[0]
    assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)

    from vhred.export import export   # the table travels with an exported model
    export(str(run), str(tmp_path / "folder"))
    assert answers.load(str(tmp_path / "folder")) == table

    (run / answers.FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="answers.json is unreadable"):
        loading.load_model(str(run))
    for bad in ([], {"asked": {}}, {"asked": {"how": 3}, "pmi": {"how": {"weeks": "1.5"}}},
                {"asked": {"how": "3"}, "pmi": {}}, {"asked": {}, "pmi": {"how": [1.5]}}):
        (run / answers.FILE).write_text(json.dumps(bad))   # would fail mid-ranking: refused on load
        with pytest.raises(CheckpointError, match="is not a table of vhred.answers"):
            loading.load_model(str(run))


def test_the_command_counts_the_runs_training_split(trained, tmp_path, dailydialog_zip):
    run = tmp_path / "run"
    shutil.copytree(trained["vhred"], run)
    env = {**os.environ, "DAILYDIALOG_SRC": dailydialog_zip}
    r = subprocess.run([sys.executable, "-m", "vhred.answers", "--checkpoint", str(run)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    table = json.loads((run / answers.FILE).read_text())
    assert table["asked"]["what"] > 0 and any(table["pmi"].values())
    assert f"{run / answers.FILE}: " in r.stdout

    from vhred.export import export   # an exported model folder: its config.json, and a broken table rebuilt
    export(str(run), str(tmp_path / "folder"))
    (tmp_path / "folder" / answers.FILE).write_text("{not json")
    r = subprocess.run([sys.executable, "-m", "vhred.answers", "--checkpoint", str(tmp_path / "folder")], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "folder" / answers.FILE).read_text()) == table


def test_the_chat_banner_says_when_the_answer_score_ranks(vhred_model):
    from vhred.chat import banner
    _, cfg, _ = vhred_model
    assert "ranked by its reply critic and what answers a wh-question, best first" in banner("run", cfg, DecodeOptions(), "critic", (), True)
    assert "ranked by the MMI score, best first" in banner("run", cfg, DecodeOptions(), "mmi", (), False)
    assert "ranked by the MMI score, best first" in banner("run", cfg, DecodeOptions(answer_weight=0), "mmi", (), True)
    assert "ranked by likelihood, best first" in banner("run", cfg, DecodeOptions(), "ll", (), True)
    assert "1 candidate per turn" in banner("run", cfg, DecodeOptions(num_samples=1), "ll")


def test_the_api_scores_as_the_ranking_ranks(trained, tmp_path):
    import vhred
    run = tmp_path / "run"
    shutil.copytree(trained["vhred"], run)
    answers.save(answers.build(PAIRS), str(run))
    bot = vhred.load(str(run))
    texts = ["Ten minutes .", "Yes ."]
    scored = bot.score(["How long is it ?"], texts)
    model, cfg, sp = loading.load_model(str(run))
    ctx = encode_turns(sp, ["How long is it ?"], cfg.max_utt_len, cfg.max_context)
    ids = [sp.encode(t)[:cfg.max_utt_len] for t in texts]
    assert scored == pytest.approx(_scores(model, [ctx] * 2, ids, DecodeOptions(rank="mmi")), abs=1e-5)
    table = answers.load(str(run))
    without = _scores(model, [ctx] * 2, ids, DecodeOptions(rank="mmi", answer_weight=0))
    assert [s - w for s, w in zip(scored, without)] == pytest.approx([answers.score(table, ["How long is it ?"], t) for t in texts], abs=1e-5)


@pytest.mark.slow   # a server process
def test_the_servers_start_line_says_when_the_answer_score_ranks(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained["vhred"], run)
    answers.save(answers.build(PAIRS), str(run))
    lines = []
    for extra in ([], ["--answer-weight", "0"]):
        proc = subprocess.Popen([sys.executable, "-m", "vhred", "serve", "--checkpoint", str(run), "--port", "0",
                                 "--quiet", *extra], stderr=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            lines.append(proc.stderr.readline())
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    assert "ranked by mmi + the answer score after a wh-question: http://127.0.0.1:" in lines[0]
    assert "ranked by mmi: http://127.0.0.1:" in lines[1]
