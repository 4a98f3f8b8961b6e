"""The readers' table (vhred/kept.py): its counts against a hand count of readers' labels, its
smoothing, the order of the replies the chat shows, and its replay on a rated round."""
import json
import shutil
from dataclasses import replace

import pytest

import vhred
from vhred import kept, loading, rate
from vhred.candidates import readers_order
from vhred.decoding import DecodeOptions, Response
from vhred.errors import CheckpointError, InputError

CONTEXTS = [["Hi .", "Where is the bank ?"],   # wh
            ["Is it far ?"],                   # yes-no
            ["Here is your tea ."]]            # other
REPLIES = ["Yes.", "OK.", "It’s on the left."]


def rated_round(folder, readers):
    """A pointwise round that `vhred rate pack` writes for two systems that both say "Yes." (one
    item per context, the pack shows a reply once), answered by readers: each a function
    (context index, reply text) -> kept."""
    folder.mkdir()
    for name, replies in (("a", REPLIES), ("b", ["Yes.", "Sure."])):
        (folder / f"sys-{name}.jsonl").write_text("".join(
            json.dumps({"context": c, "samples": replies, "scores": [0.0] * len(replies)}) + "\n" for c in CONTEXTS))
    rate.main(["pack", "--system", f"a={folder / 'sys-a.jsonl'}", "--system", f"b={folder / 'sys-b.jsonl'}",
               "--out", str(folder / "pack.txt"), "--key", str(folder / "key.json"), "--per-context", "3"])
    key = json.loads((folder / "key.json").read_text())
    for n, keeps in enumerate(readers):
        (folder / f"rater{n}.txt").write_text("".join(
            f"{i} {'good' if keeps(items[0]['context'], items[0]['text']) else 'bad'}\n" for i, items in key["items"].items()))
    return str(folder)


def test_the_table_counts_each_readers_label_once_by_the_kind_of_last_turn(tmp_path):
    yes_anywhere = lambda c, t: t == "Yes."
    after_questions = lambda c, t: c < 2 and t != "Sure."
    table = kept.build([rated_round(tmp_path / "r", [yes_anywhere, after_questions])])
    assert table["kept"]["wh"]["yes."] == [2, 2]   # said by both systems, read once by each reader
    assert table["kept"]["yes-no"]["it's on the left."] == [1, 2]   # lowercased, the ’ an apostrophe
    assert table["kept"]["other"] == {"yes.": [1, 2], "ok.": [0, 2], "it's on the left.": [0, 2], "sure.": [0, 2]}
    # each kind's base share: kept over rated, every label of that kind (4 replies, 2 readers)
    assert table["base"] == {"wh": 4 / 8, "yes-no": 4 / 8, "other": 1 / 8}


def test_a_replys_share_is_smoothed_toward_its_kinds_and_ties_keep_the_ranking():
    table = {"smooth": 5, "base": {"wh": 0.2, "yes-no": 0.5, "other": 0.4},
             "kept": {"wh": {}, "yes-no": {"yes.": [9, 10]}, "other": {"i see.": [30, 40], "yes.": [1, 10]}}}
    assert kept.share(table, "yes-no", "Yes.") == pytest.approx((9 + 5 * 0.5) / 15)
    assert kept.share(table, "other", "I  SEE.") == pytest.approx((30 + 5 * 0.4) / 45)
    assert kept.share(table, "wh", "Yes.") == pytest.approx(0.2)   # no reader saw it there: the kind's share
    assert kept.order(table, "It is here .", ["Yes.", "Fine.", "I see.", "Good."]) == [2, 1, 3, 0]
    assert kept.order(table, "Is it here ?", ["Fine.", "Yes."]) == [1, 0]


class Pieces:
    """A tokenizer stand-in: ids are indexes into a list of texts."""
    def __init__(self, texts):
        self.texts = texts

    def decode(self, ids):
        return self.texts[ids[0]]


def test_faulty_replies_stay_last_whatever_readers_kept():
    table = {"smooth": 1, "base": {"wh": 0.5, "yes-no": 0.5, "other": 0.5},
             "kept": {"wh": {}, "yes-no": {}, "other": {"thanks.": [99, 100], "ok.": [50, 100], "i see.": [90, 100]}}}
    sp = Pieces(["OK.", "I see.", "Thanks."])
    row = [Response([0], -1.0, None), Response([1], -2.0, None), Response([2], -3.0, None)]
    faulty = lambda ids: ids != [2]   # "Thanks." has a fault: it stays behind the good ones
    assert [r[0] for r in readers_order(table, sp, "Here you are .", row, keep=faulty)] == [[1], [0], [2]]
    assert [r[0] for r in readers_order(table, sp, "Here you are .", row)] == [[2], [1], [0]]


def test_the_chat_shows_the_ranked_replies_in_the_readers_order(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained["vhred"], run)
    history = ["Hi !", "Here is your coffee ."]
    ranked = [c.text for c in vhred.load(str(run)).respond(history, n=4, clean=False, method="sample")]   # no kept.json: as ranked
    assert len(set(ranked)) == 4
    last = ranked[-1]   # readers kept the ranking's last one most after a statement
    table = {"smooth": 5, "base": {"wh": 0.3, "yes-no": 0.4, "other": 0.4},
             "kept": {"wh": {}, "yes-no": {}, "other": {kept.reply_key(last): [20, 20], kept.reply_key(ranked[0]): [0, 20]}}}
    kept.save(table, str(run))
    bot = vhred.load(str(run))
    shown = [c.text for c in bot.respond(history, n=4, clean=False, method="sample")]
    assert shown == [last, *ranked[1:3], ranked[0]]   # the middle two: the kind's share, tied, as ranked
    assert [c.text for c in bot.respond(history, n=4, clean=False, method="sample", order="score")] == ranked
    with pytest.raises(InputError, match="order must be readers or score"):
        bot.respond(history, order="best")

    from vhred.export import export   # the table travels with an exported model
    export(str(run), str(tmp_path / "folder"))
    assert kept.load(str(tmp_path / "folder")) == table

    (run / kept.FILE).write_text('{"smooth": 5}')
    with pytest.raises(CheckpointError, match="kept.json is not a table of vhred.kept: rebuild it with `vhred kept"):
        loading.load_model(str(run))


def test_the_banner_says_the_replies_are_shown_in_the_readers_order(vhred_model):
    from vhred.chat import banner
    cfg = vhred_model[1]
    assert "ranked by its reply critic, shown in the order readers kept such replies before: the first joins" in banner(
        "run", cfg, DecodeOptions(), "critic", (), False, True)
    assert "ranked by its reply critic, best first" in banner("run", cfg, DecodeOptions(), "critic", (), False, False)


def test_the_command_writes_the_table_and_names_a_folder_without_a_round(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained["vhred"], run)
    taught = rated_round(tmp_path / "r", [lambda c, t: t == "Yes."])
    kept.main(["--checkpoint", str(run), "--ratings", taught])
    assert "12 labels of 12 replies" in capsys.readouterr().out
    assert kept.load(str(run)) == kept.build([taught])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as e:
        kept.main(["--checkpoint", str(run), "--ratings", str(tmp_path / "empty")])
    assert e.value.code == 2 and "holds no rating round" in capsys.readouterr().err


def test_the_replay_moves_the_first_reply_to_the_one_readers_kept_before(trained, tmp_path, capsys):
    """eval.first_order --readers scores the readers' order on a round's labels: the system showed
    "OK." first, readers of the round kept "It’s on the left." after the questions and "Yes." after
    the statement, and the run's table (of another round) favours those."""
    from eval import first_order
    run = tmp_path / "run"
    shutil.copytree(trained["vhred"], run)
    labels = lambda c, t: t == ("Yes." if c == 2 else "It’s on the left.")
    kept.save(kept.build([rated_round(tmp_path / "before", [labels])]), str(run))
    now = rated_round(tmp_path / "now", [labels, labels])
    first_order.main(["--checkpoint", str(run), "--readers", "--round", f"{now}=a", "--boot", "100"])
    row = json.loads(capsys.readouterr().out)
    # shown: "Yes." first everywhere, kept only after the statement (1 of 3); reordered: every first kept
    assert row["contexts"] == 3 and row["first"] == 1.0 and row["minus_shown"] == pytest.approx(2 / 3, abs=1e-4)


def test_generate_and_the_chat_read_the_kind_of_turn_from_the_text_typed(trained, tmp_path, monkeypatch):
    """A question longer than the model reads (max_utt_len pieces) is still a question: the order
    reads the kind from the whole turn, as the readers saw it, not from the ids cut short."""
    from vhred import generate
    from vhred.chat import Chat
    from vhred.render import pretty
    run = tmp_path / "run"
    shutil.copytree(trained["vhred"], run)
    model, cfg, sp = loading.load_model(str(run))
    question = "Well , " + "that is really very nice of you , " * 8 + "but is it far ?"
    assert len(sp.encode(question)) > cfg.max_utt_len
    opts = DecodeOptions(num_samples=3, method="sample", clean=False)
    by_score = Chat(model, cfg, sp, replace(opts, order="score"), out=lambda m: None, note=lambda m: None)
    ranked = by_score.respond(question)
    last = pretty(by_score.last[-1])   # the text the order looks up: the reply as a reader sees it
    # readers kept the ranking's last reply after yes-no questions only: first after the question
    table = {"smooth": 1, "base": {"wh": 0.3, "yes-no": 0.3, "other": 0.3},
             "kept": {"wh": {}, "yes-no": {kept.reply_key(last): [10, 10]}, "other": {}}}
    kept.save(table, str(run))
    model, cfg, sp = loading.load_model(str(run))
    shown = Chat(model, cfg, sp, opts, out=lambda m: None, note=lambda m: None).respond(question)
    assert shown[0] == ranked[-1] and sorted(shown) == sorted(ranked)
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(json.dumps({"context": [question]}) + "\n")
    monkeypatch.chdir(tmp_path)
    generate.main(["--checkpoint", str(run), "--input", str(src), "--output", str(out), "--num-samples", "3",
                   "--method", "sample", "--no-clean"])
    assert json.loads(out.read_text())["samples"][0] == ranked[-1]


def test_a_table_nested_too_deep_is_one_line_not_a_recursion_error(tmp_path):
    (tmp_path / kept.FILE).write_text("[" * 100_000)
    with pytest.raises(CheckpointError, match="kept.json is unreadable .*: rebuild it with `vhred kept --checkpoint"):
        kept.load(str(tmp_path))
