"""Blind rating (vhred/rate.py), the surface-fault proxies (vhred/metrics/surface.py) and the
text the model's pieces become (render.pretty)."""
import collections
import json
import math
import os
import re
import shutil

import pytest

from tests.conftest import ROOT
from vhred import rate
from vhred.render import pretty
from vhred.metrics import stock, surface


# --- the interval ---------------------------------------------------------------------------

def test_wilson_matches_a_hand_computation():
    # 8 of 10, z = 1.96: centre (0.8 + 3.8415/20) / 1.38415 = 0.71674,
    # half 1.96 / 1.38415 * sqrt(0.8*0.2/10 + 3.8415/400) = 0.22658
    low, high = rate.wilson(8, 10)
    assert low == pytest.approx(0.4902, abs=2e-4) and high == pytest.approx(0.9433, abs=2e-4)
    # 0 of 10: the interval is (0, z^2 / (n + z^2)) = (0, 3.8415 / 13.8415)
    low, high = rate.wilson(0, 10)
    assert low == 0 and high == pytest.approx(3.8415 / 13.8415, abs=1e-4)
    assert rate.wilson(0, 0) == (0.0, 1.0)


def test_the_share_of_all_shown_replies_widens_for_replies_that_come_in_contexts():
    """A context's five replies are not independent: when each context is all good or all bad,
    200 labels say what 40 contexts say, and the interval is Wilson's over C - 1 = 39 (the ratio
    estimator's variance, p(1-p)/(C-1), by hand). It agrees with a bootstrap over contexts;
    one label a context, or every context at one share, is plain Wilson."""
    import random
    whole = {c: [5 if c < 16 else 0, 5] for c in range(40)}                # 16 of 40 contexts all good
    got = rate.clustered_share(whole)
    assert (got["good"], got["of"], got["share"]) == (80, 200, 0.4)
    assert (got["low"], got["high"]) == pytest.approx(rate.wilson(0.4 * 39, 39))
    assert got["high"] - got["low"] > 1.9 * (rate.wilson(80, 200)[1] - rate.wilson(80, 200)[0])
    rng = random.Random(3)   # replies of a context alike, not identical
    mixed = {c: [sum(rng.random() < q for _ in range(5)), 5] for c, q in enumerate(rng.choice([0.1, 0.5, 0.9]) for _ in range(60))}
    draws = sorted(sum(mixed[c][0] for c in pick) / sum(mixed[c][1] for c in pick)
                   for pick in ([rng.randrange(60) for _ in range(60)] for _ in range(4000)))
    got = rate.clustered_share(mixed)
    assert got["low"] == pytest.approx(draws[100], abs=0.025) and got["high"] == pytest.approx(draws[3899], abs=0.025)
    one = {c: [int(c < 7), 1] for c in range(20)}
    assert (rate.clustered_share(one)["low"], rate.clustered_share(one)["high"]) == pytest.approx(rate.wilson(7, 20))
    even = {c: [2, 5] for c in range(10)}
    assert (rate.clustered_share(even)["low"], rate.clustered_share(even)["high"]) == pytest.approx(rate.wilson(20, 50))


def test_score_gives_the_clustered_interval_for_all_shown_and_wilson_for_the_first(capsys):
    """A committed round (81st, pack 1, reader r291): 103 of 200 shown replies good, 28 of 40
    first ones. Bootstrapped over contexts the five's interval is about [41.5, 61.5]; Wilson's
    over the 200 labels as if independent, [44.6, 58.3], was too narrow."""
    folder = os.path.join(ROOT, "eval", "ratings", "2026-12-03-critic-read", "p1")
    rate.main(["score", "--key", os.path.join(folder, "key.json"), "--answers", os.path.join(folder, "rater291.txt"), "--json"])
    m = json.loads(capsys.readouterr().out)["scores"]["m"]
    assert (m["all"]["good"], m["all"]["of"], m["top1"]["good"], m["top1"]["of"]) == (103, 200, 28, 40)
    assert m["all"]["low"] == pytest.approx(0.41, abs=0.01) and m["all"]["high"] == pytest.approx(0.61, abs=0.01)
    assert (m["top1"]["low"], m["top1"]["high"]) == pytest.approx(rate.wilson(28, 40))


# --- packs, keys and scores -----------------------------------------------------------------

CONTEXTS = [["Hi , how are you ?"], ["Can I help you ?", "Yes , I want a coat ."], ["Is it far ?"]]


def write_system(path, replies):
    with open(path, "w") as f:
        for ctx, samples in zip(CONTEXTS, replies):
            f.write(json.dumps({"context": ctx, "samples": samples}) + "\n")
    return str(path)


@pytest.fixture
def systems(tmp_path):
    old = write_system(tmp_path / "old.jsonl", [["Fine.", "I'm goodest."], ["Here is the produceer.", "Sure."],
                                                ["No.", "25.How"]])
    new = write_system(tmp_path / "new.jsonl", [["Fine.", "Great, thanks."], ["What size?", "Sure, come in."],
                                                ["Ten minutes' walk.", "Not far."]])
    return old, new


def pack(tmp_path, systems, *extra):
    out, key = tmp_path / "pack.txt", tmp_path / "key.json"
    rate.main(["pack", "--system", f"old={systems[0]}", "--system", f"new={systems[1]}",
               "--out", str(out), "--key", str(key), "--per-context", "2", *extra])
    return out.read_text(), json.loads(key.read_text())


def test_pack_hides_the_key_and_rates_a_shared_reply_once(tmp_path, systems):
    text, key = pack(tmp_path, systems)
    assert "old" not in text and "new" not in text and "rank" not in text
    ids = re.findall(r"^\[([0-9a-f]{6})\] ", text, re.M)
    assert sorted(ids) == sorted(key["items"]) and len(ids) == 11   # 12 replies, "Fine." shared
    shared = [e for e in key["items"].values() if len(e) == 2]
    assert [sorted(x["system"] for x in shared[0])] == [["new", "old"]] and shared[0][0]["text"] == "Fine."
    assert text.index("how are you") < text.index("Fine.") or text.index("coat") < text.index("Fine.")


def test_score_round_trip(tmp_path, systems, capsys):
    _, key = pack(tmp_path, systems)
    good = {"Fine.", "Sure.", "Great, thanks.", "What size?", "Sure, come in.", "Ten minutes' walk.", "Not far."}
    answers = tmp_path / "rater.txt"
    answers.write_text("".join(f"{i} {'good' if e[0]['text'] in good else 'bad'}\n" for i, e in key["items"].items()))
    rate.main(["score", "--key", str(tmp_path / "key.json"), "--answers", str(answers), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["rater"] == "rater" and result["answered"] == 11
    old, new = result["scores"]["old"], result["scores"]["new"]
    assert (old["all"]["good"], old["all"]["of"], old["top1"]["good"], old["top1"]["of"]) == (2, 6, 1, 3)
    assert (new["all"]["good"], new["all"]["of"], new["top1"]["good"], new["top1"]["of"]) == (6, 6, 3, 3)
    assert (old["all"]["low"], old["all"]["high"]) == pytest.approx(rate.wilson(2, 6))
    # split by the last turn: "how are you ?" asks (wh), "I want a coat ." does not, "Is it far ?" is yes-no
    split = {k: (v["all"]["good"], v["all"]["of"], v["top1"]["good"], v["top1"]["of"]) for k, v in old["by_last_turn"].items()}
    assert split == {"wh": (1, 2, 1, 1), "other": (1, 2, 0, 1), "yes-no": (0, 2, 0, 1)}
    rate.main(["score", "--key", str(tmp_path / "key.json"), "--answers", str(answers), "--rater", "reader 1"])
    table = capsys.readouterr().out
    assert "rater: reader 1" in table and "| new | 100% [61, 100] (6/6) | 100% [44, 100] (3/3) |" in table
    assert "| system | wh (1): all shown | top-1 | yes-no (1): all shown | top-1 | other (1): all shown | top-1 |" in table
    assert "| old | 50% [9, 91] (1/2) | 100% [21, 100] (1/1) | 0% [0, 66] (0/2) | 0% [0, 79] (0/1) |" in table
    with pytest.raises(SystemExit) as refused:
        rate.main(["score", "--key", str(tmp_path / "key.json"), "--answers", str(answers), "--rater", "a\nb"])
    assert refused.value.code == 2 and "--rater must be one line of text" in capsys.readouterr().err


@pytest.mark.parametrize("turn, kind", [
    ("Where is the toilet ?", "wh"),
    ("Can you tell me where it is ?", "wh"),               # asks where, politely
    ("Why ? anything special there ?", "wh"),              # one of two questions asks why
    ("Not bad.It really is great to see you again.Where have you been ?", "wh"),
    ("Is it far ?", "yes-no"),
    ("Why don ’ t you sit down and relax ?", "yes-no"),    # a suggestion, in DailyDialog's spelling
    ("How about a cup of tea ?", "yes-no"),
    ("What a bummer ! You set me up ?", "yes-no"),         # the wh-word is in the exclamation
    ("Did he leave when you left ?", "yes-no"),            # "when" opens no clause of the question
    ("Aside from yourself , who else plays ?", "wh"),
    ("I see . What time is it", "other"),                  # no question mark: not asked
    ("Thanks .", "other"),
])
def test_turn_kind_of_hand_made_turns(turn, kind):
    assert rate.turn_kind(["Hello .", turn]) == kind


def test_score_refuses_unknown_ids_and_bad_labels(tmp_path, systems, capsys):
    _, key = pack(tmp_path, systems)
    answers = tmp_path / "rater.txt"
    for line, why in (("abcdefg good\n", "not in the key"), (f"{next(iter(key['items']))} fine\n", "expected")):
        answers.write_text(line)
        with pytest.raises(SystemExit) as e:
            rate.main(["score", "--key", str(tmp_path / "key.json"), "--answers", str(answers)])
        assert e.value.code == 2 and why in capsys.readouterr().err


def test_answers_to_one_pack_are_refused_by_the_key_of_another_of_the_same_shape(tmp_path, systems, capsys):
    """Two packs of other replies to the same contexts, same seed: their ids were the same, so a
    rater's answers to one scored against the other's key credited the wrong systems."""
    _, first = pack(tmp_path, systems)
    other = tmp_path / "other"
    other.mkdir()
    swapped = [write_system(other / f"{n}.jsonl", [[r + " ." for r in rows] for rows in replies])
               for n, replies in (("c", [["Yes."], ["No."], ["Maybe."]]), ("d", [["Hi."], ["Ok."], ["Bye."]]))]
    _, second = pack(other, swapped, "--per-context", "1")
    assert not set(first["items"]) & set(second["items"])
    answers = tmp_path / "rater.txt"
    answers.write_text("".join(f"{i} good\n" for i in first["items"]))
    with pytest.raises(SystemExit) as e:
        rate.main(["score", "--key", str(other / "key.json"), "--answers", str(answers)])
    assert e.value.code == 2 and "is not in the key; is it the key of this pack?" in capsys.readouterr().err


@pytest.mark.parametrize("mend", [lambda k: k.update(systems=["a"]), lambda k: k.update(kind="pairwise"),
                                  lambda k: k.update(items={"abcdef": 3}),
                                  lambda k: next(iter(k["items"].values()))[0].update(context=99),
                                  lambda k: next(iter(k["items"].values()))[0].update(system="nobody")])
def test_a_key_broken_inside_is_one_line(tmp_path, systems, capsys, mend):
    _, key = pack(tmp_path, systems)
    mend(key)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(key))
    (tmp_path / "rater.txt").write_text("")
    capsys.readouterr()   # the pack's own line
    with pytest.raises(SystemExit) as e:
        rate.main(["score", "--key", str(broken), "--answers", str(tmp_path / "rater.txt")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "is not a key written by `vhred rate pack`" in err and err.count("\n") == 1


def test_pack_refuses_systems_of_other_contexts(tmp_path, systems, capsys):
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"context": ["Something else"], "samples": ["x"]}) + "\n"
                     + "".join(open(systems[0]).readlines()[1:]))   # as many contexts, the first another
    with pytest.raises(SystemExit):
        rate.main(["pack", "--system", f"a={systems[0]}", "--system", f"b={other}",
                   "--out", str(tmp_path / "p"), "--key", str(tmp_path / "k")])
    assert "another context" in capsys.readouterr().err


def test_pack_refuses_an_empty_checkpoint_and_writes_nothing(tmp_path, systems, capsys):
    with pytest.raises(SystemExit):
        rate.main(["pack", "--system", f"a={systems[0]}", "--checkpoint", "",
                   "--out", str(tmp_path / "p"), "--key", str(tmp_path / "k")])
    assert "--checkpoint is empty" in capsys.readouterr().err
    assert not (tmp_path / "p").exists() and not (tmp_path / "k").exists()


def test_pack_never_writes_over_its_key_its_inputs_or_another_packs_key(tmp_path, systems, capsys):
    before = pack(tmp_path, systems)
    assert pack(tmp_path, systems) == before   # the same command again: the same pack and key
    refused = {"--seed 7": "holds the key of another pack", "--out KEY": "--out and --key are both",
               "--out OLD": "is a --system file", "--key NEW": "is a --system file"}
    for extra, message in refused.items():
        flag, value = extra.split()
        value = {"KEY": tmp_path / "key.json", "OLD": systems[0], "NEW": systems[1]}.get(value, value)
        with pytest.raises(SystemExit):
            pack(tmp_path, systems, flag, str(value))
        assert message in capsys.readouterr().err
    assert (tmp_path / "pack.txt").read_text() == before[0] and json.loads((tmp_path / "key.json").read_text()) == before[1]
    assert (tmp_path / "old.jsonl").read_text().startswith('{"context"')   # the inputs untouched
    with pytest.raises(SystemExit):
        rate.main(["score", "--key", str(tmp_path / "nokey.json"), "--answers", str(tmp_path / "pack.txt")])
    assert "key " + str(tmp_path / "nokey.json") + " not found" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text('{"kind": "pointwise", "items": {"x": [{"system": "a"}]}}')
    with pytest.raises(SystemExit):
        rate.main(["score", "--key", str(tmp_path / "bad.json"), "--answers", str(tmp_path / "pack.txt")])
    assert "is not a key written by `vhred rate pack`" in capsys.readouterr().err


def test_pairwise_round_trip(tmp_path, systems, capsys):
    text, key = pack(tmp_path, systems, "--pairwise")
    assert key["kind"] == "pairwise" and len(key["items"]) == 5   # 6 rank-matched pairs, one identical
    assert "old" not in text and "new" not in text
    assert {i["A"] for i in key["items"].values()} == {"old", "new"}   # both orders occur (seed 0)
    answers = tmp_path / "ab.txt"
    answers.write_text("".join(f"{i} {'A' if item['A'] == 'new' else 'B'}\n" for i, item in key["items"].items()))
    rate.main(["score", "--key", str(tmp_path / "key.json"), "--answers", str(answers), "--json"])
    result = json.loads(capsys.readouterr().out)["scores"]["new vs old"]
    assert (result["new"]["good"], result["new"]["of"], result["old"]["good"]) == (5, 5, 0)
    assert result["new"]["low"] == pytest.approx(rate.wilson(5, 5)[0])


def test_pack_reports_proxies_from_the_training_text(trained, tmp_path, systems):
    _, key = pack(tmp_path, systems, "--checkpoint", trained["vhred"])
    old = key["proxies"]["old"]
    assert old["glued_share"] == pytest.approx(1 / 6) and old["non_word_share"] >= 2 / 6   # goodest, produceer
    assert key["proxies"]["new"]["glued_share"] == 0


# --- surface faults -------------------------------------------------------------------------

KNOWN = surface.lexicon(["I ' m fine , thanks .", "Here is the producer .", "How about you ? Good !",
                         "It is 25 dollars at 9 a.m. on Stars.com", "Visit www.amazon.com , she has a Ph.D",
                         "That is it . Then go . It costs $ 10"])


@pytest.mark.parametrize("text, faults", [
    ("I'm fine, thanks.", set()),
    ("Here is the produceer.", {"non_word"}),
    ("25.How about you?", {"glued"}),
    ("It is 25 dollars at 9 a.m. on Stars.com", set()),
    ("It is 3.5 dollars.", set()),
    ("", {"empty"}),
    (" …", {"empty"}),
    ("I'd like to go to the C-in-in-in-in-int.", {"non_word", "repeated"}),
    ("Good good good !", {"repeated"}),
    ("It is at 9::30.", {"mangled"}),
    ("$12:00.", {"mangled"}),
    ("It is $10.50, at 10:30... Good?!", set()),
    ("25:30.", {"mangled"}),                 # no clock shows it
    ("It is 9:75.", {"mangled"}),
    ("About 3:", {"mangled"}),                # stops on a colon
    ("How about you?:", {"mangled"}),
    ("It is 24:00, at 0:59.", set()),
    ("It is at 12:05.", set()),
    ("Visit www.amazon.com", set()),         # a web address, its first dot too
    ("She has a Ph.D", set()),
    ("It is Stars.com.Then it is", set()),   # read as a web address: not counted
    ("That is it.Then go", {"glued"}),
    ("It costs $$10", {"mangled"}),
    ("Good) good) good)", {"repeated"}),     # a mark glued to each of the words
    ("Good, good, good.", set()),            # the last one differs: said so, not stuck
    ("It is good)))", {"mangled"}),          # a bracket run
    ("It is (good)", set()),
    ("I'm.Then go.", {"glued"}),          # after a contraction
    ("That is it...Then go", {"glued"}),
])
def test_faults_of_hand_made_replies(text, faults):
    found = {k for k, v in surface.faults(text, KNOWN).items() if v}
    assert found == faults


def test_words_of_any_script_are_checked_whole():
    known = surface.lexicon(["I live in Zürich .", "Москва"])
    assert surface.non_words("I live in Zürich.", known) == []
    assert surface.non_words("I live in Zürichöö, Москвуфыва.", known) == ["zürichöö", "москвуфыва"]


def test_surface_metrics_are_shares():
    m = surface.surface_metrics(["I'm fine.", "25.How", "", "the produceer"], KNOWN)
    assert (m["glued_share"], m["empty_share"], m["non_word_share"], m["any_fault_share"]) == (0.25, 0.25, 0.25, 0.75)
    assert "non_word_share" not in surface.surface_metrics(["x"], None)


# --- stock replies ---------------------------------------------------------------------------

def test_stock_turns_are_the_turns_said_whole_ten_times():
    said = ["Thank you ."] * 6 + ["thank you!"] * 4 + ["OK ."] * 9 + ["?"] * 12 + ["Thank you very much ."]
    stock_set = stock.stock_turns(said)
    assert stock_set == {"thank you"}                  # "OK ." 9 times is not; "?" has no word
    assert stock.is_stock("Thank you.", stock_set) and stock.is_stock("THANK YOU !", stock_set)
    assert not stock.is_stock("Thank you very much.", stock_set) and not stock.is_stock("?", stock_set)
    m = stock.stock_metrics(["Thank you.", "It is on Main Street, $10.", "OK.", "thank you"], stock_set)
    assert m == {"stock_share": 0.5, "words_per_reply": (2 + 6 + 1 + 2) / 4}
    assert stock.stock_metrics(["OK."], None) == {"words_per_reply": 1.0} and stock.stock_metrics([], stock_set) == {}


def test_pack_reports_the_stock_share_of_the_training_text(trained, tmp_path, monkeypatch):
    from vhred import checkpoint, lexicon
    from vhred.lexicon import training_text
    monkeypatch.setattr(lexicon, "_CACHE", {})
    monkeypatch.setattr(stock, "MIN_COUNT", 3)   # the tiny slice's 120 dialogues say no turn ten times
    path = checkpoint.resolve(trained["vhred"])
    said = collections.Counter(" ".join(re.findall(r"[a-z]+", u.lower()))
                               for u in training_text(checkpoint.config_of(checkpoint.load(path), path)))
    common = [t for t, n in said.most_common(3) if n >= 3 and t]
    assert common, "the tiny training text says no turn three times"
    replies = [[common[0].capitalize() + ".", "Would you like the blue coat with the hood?"], [common[-1] + "!", "No."],
               ["Ten minutes' walk from here.", "Not far."]]
    mixed = write_system(tmp_path / "mixed.jsonl", replies)
    _, key = pack(tmp_path, (mixed, mixed), "--checkpoint", trained["vhred"])
    shown = [r for row in replies for r in row]
    expected = sum(said[" ".join(re.findall(r"[a-z]+", r.lower()))] >= 3 for r in shown) / len(shown)
    assert key["proxies"]["old"]["stock_share"] == pytest.approx(expected) and expected >= 2 / 6
    assert key["proxies"]["old"]["words_per_reply"] == pytest.approx(sum(len(r.split()) for r in shown) / 6)


def test_pooled_rating_counts_a_kept_stock_reply_as_not_content(tmp_path, capsys):
    from eval import pooled_rating
    folder = tmp_path / "round"
    folder.mkdir()
    texts = [["OK.", "It is on Main Street."], ["Thank you.", "I see."]]
    items = {f"i{c}{r}": [{"system": "n", "context": c, "rank": r + 1, "text": t}]
             for c, row in enumerate(texts) for r, t in enumerate(row)}
    (folder / "key.json").write_text(json.dumps({"kind": "pointwise", "items": items,
                                                 "contexts": [["Where is it ?"], ["Here you are ."]]}))
    (folder / "rater1.txt").write_text("i00 good\ni01 good\ni10 good\ni11 bad\n")
    kept = pooled_rating.context_labels(str(folder), "n")
    content = pooled_rating.context_labels(str(folder), "n", stock=frozenset({"ok", "thank you", "i see"}))
    assert kept == {0: [[True, True]], 1: [[True, False]]}
    assert content == {0: [[False, True]], 1: [[False, False]]}
    with pytest.raises(SystemExit) as stop:   # an unset shell variable: not the plain kept share
        pooled_rating.main(["--round", f"{folder}=n", "--content", ""])
    assert stop.value.code == 2 and "--content is empty" in capsys.readouterr().err


# --- text out -------------------------------------------------------------------------------

@pytest.mark.parametrize("pieces, text", [
    ("I 'Ve been working", "I've been working"),
    ("I ’ m fine , don ’ t worry .", "I'm fine, don't worry."),
    ("25.How about you ?", "25. How about you?"),
    ("Mr.Wory , please .", "Mr. Wory, please."),
    ("$ 10.The", "$10. The"),
    ("See you at 9 a.m. on Stars.com .", "See you at 9 a.m. on Stars.com."),
    ("It costs 3.5 dollars .", "It costs 3.5 dollars."),
    ("Let ' s Ill , ll .", "Let's Ill, ll."),   # a mark the detokenizer's joining glued, mended after it
    ("It costs 5,000 dollars .", "It costs 5,000 dollars."),
    ("I'm.But I can't .", "I'm. But I can't."),          # glued after a contraction
    ("He lives in the U . S . now , at 9 a . m . .", "He lives in the U.S. now, at 9 a.m."),
    ("It was named ' New College ' , he says \" hello \" .", "It was named 'New College', he says \"hello\"."),
    ("The ' 90s , 5 o ' clock , my parents ' house .", "The '90s, 5 o'clock, my parents' house."),
    ("It costs £ 500 or ¥ 150 .", "It costs £500 or ¥150."),
    ("He says ' No ' .", "He says 'No'."),                  # one quoted word
    ("I ’ Ve got it , you ' Re right , he didn ' T go .", "I've got it, you're right, he didn't go."),
    ("Let me check ... yes . Wait ...", "Let me check... yes. Wait..."),
    ("Yeah , OK ... !", "Yeah, OK...!"), ("OK ... ?", "OK...?"),   # the detokenizer joined the mark to the dots
    ("Hmm...yes", "Hmm... yes"),
    ("OK ... OK ... Anyway , it.It is", "OK... OK... Anyway, it. It is"),   # each of a run of glued marks
    ('He said " I can ’ t " , " you ’ re " .', 'He said "I can\'t", "you\'re".'),   # a quote ends on a contraction
    ('" He said \' hi \' "', '"He said \'hi\'"'),                          # nested, the marks touching
    ("It is ' yes ' or ' no ' , he was ' fine ' .", "It is 'yes' or 'no', he was 'fine'."),
    ("It costs $ 1,299 . 00 today .", "It costs $1,299.00 today."),
    ("It ’ s 8 : 00 , or at 7 : 30 a.m. , 10: 45 .", "It's 8:00, or at 7:30 a.m., 10:45."),   # a clock time whole
    ("Ratio 3 : 1 , chapter 12 : 345 .", "Ratio 3: 1, chapter 12: 345."),   # not a clock's two digits
    ("Sorry :( it is on sale next week :)", "Sorry :( it is on sale next week :)"),
    ("It said “ fragile ” in red . B : : hi", 'It said "fragile" in red. B:: hi'),
    ("he says \ue000 \" hi \" :) \ue002 ok", 'He says "hi" :) ok'),   # the stand-ins' characters never show
])
def test_pretty_never_glues_words_or_splits_contractions(pieces, text):
    assert pretty(pieces) == text
    assert not surface.glued(pretty(pieces))


# --- ranking and the shown list on a trained tiny model ---------------------------------------

def test_mmi_family_holds_ll_and_pmi(trained):
    import torch
    from vhred import loading
    from vhred.scoring import score_ids
    model, cfg, sp = loading.load_model(trained["vhred"])
    ctx = [[sp.encode("Hi , how are you ?")]] * 2
    replies = [sp.encode("Fine , thanks ."), sp.encode("I want a coat .")]
    torch.manual_seed(0)
    ll, pmi = score_ids(model, ctx, replies, "ll", 3), score_ids(model, ctx, replies, "pmi", 3)
    assert score_ids(model, ctx, replies, "mmi", 3, lam=0.0) == pytest.approx(ll, abs=1e-5)
    assert score_ids(model, ctx, replies, "mmi", 3, lam=1.0) == pytest.approx(pmi, abs=1e-5)
    half = score_ids(model, ctx, replies, "mmi", 3, lam=0.5, gamma=0.1)
    tokens = [len(r) + 1 for r in replies]   # words and <eos>
    assert half == pytest.approx([(a + b) / 2 + 0.1 * n for a, b, n in zip(ll, pmi, tokens)], abs=1e-5)


def test_shown_list_puts_faulty_replies_last_and_says_so(trained):
    from vhred import loading
    from vhred.candidates import candidates, count_note, shown_note
    from vhred.decoding import DecodeOptions
    model, cfg, sp = loading.load_model(trained["vhred"])
    ctx = [[sp.encode("Hi , how are you ?")]]
    opts = DecodeOptions(num_samples=4, method="sample", rank="ll")
    keep = lambda ids: len(ids) % 2 == 0   # "good": an even number of pieces
    [shown] = candidates(model, ctx, opts, same=sp.decode, keep=keep)
    assert len(shown) == 4
    good = [keep(r[0]) for r in shown]
    assert good == sorted(good, reverse=True)   # every good one before every faulty one
    note = shown_note(shown, 4, keep)
    assert (note == "") == all(good) and (all(good) or "faulty" in note)
    assert shown_note(shown[:2], 4) == "2 of 4 shown: the other draws repeated these"
    assert count_note(4, 8, 2, 16) == ("4 of 8 shown: the other draws repeated these; the last 2 shown have "
                                       "faulty text (non-words, glued or repeated): no more good ones in 128 draws")


@pytest.mark.parametrize("family, method", [("vhred", "greedy"), ("vhred", "beam"), ("hred", "greedy"),
                                            ("hred", "beam"), ("hred", "sample")])
def test_the_faulty_note_counts_the_draws_made(trained, monkeypatch, family, method):
    """The note says how many draws candidates() made before it showed a faulty reply: max(D, 8)
    x N where draws differ, 2N for HRED's greedy and beam draws, which are all alike."""
    from vhred import candidates as g, loading
    from vhred.decoding import DecodeOptions
    model, cfg, sp = loading.load_model(trained[family])
    made, real = [], g.drawn
    monkeypatch.setattr(g, "drawn", lambda m, c, opts, z=None: made.append(opts.num_samples) or real(m, c, opts, z))
    opts = DecodeOptions(num_samples=2, method=method, beam=2, draws=2, max_len=4, rank="ll")
    g.candidates(model, [[sp.encode("Hi , how are you ?")]], opts, keep=lambda ids: False)
    per_reply = g.draws_made(model, opts)
    assert made[-1] == per_reply * 2 and per_reply == (2 if (family, method) in (("hred", "greedy"), ("hred", "beam")) else 8)
    assert g.count_note(2, 2, 2, per_reply).endswith(f"no more good ones in {made[-1]} draws")
    assert g.count_note(5, 5, 0, draws=16) == ""


# --- which ranking score the readers' labels favour (eval/rated_ranking.py) -------------------

def test_rated_ranking_accuracy_of_hand_made_pairs():
    from eval.rated_ranking import accuracy, mmi
    short_good = {"lpc": -6.0, "lpn": -8.0, "n": 3}    # ll -2.0 per token
    long_bad = {"lpc": -15.0, "lpn": -30.0, "n": 10}   # ll -1.5: more likely per token, longer
    half = {"lpc": -10.0, "lpn": -10.0, "n": 5}        # ll -2.0, rated good by one reader of two
    ctx = [[(short_good, 1.0), (long_bad, 0.0), (half, 0.5)]]
    # pairs (weight): good/bad (1), good/half (0.5), bad/half (0.5); ll orders bad > good = half > ...
    # ll: good/bad wrong, good/half tied (0.5 credit), half/bad wrong -> 0.25 / 2
    assert accuracy(ctx, mmi(0, 0)) == pytest.approx(0.25 / 2)
    # shorter first: all three in the readers' order
    assert accuracy(ctx, lambda r: -r["n"]) == 1.0
    # pmi: good (2/3 = 0.667) > bad (15/10 = 1.5)? pmi good = (-6 + 8) / 3, bad = (-15 + 30) / 10
    assert mmi(1, 0)(short_good) == pytest.approx(2 / 3) and mmi(1, 0)(long_bad) == pytest.approx(1.5)
    assert mmi(0.5, -0.1)(half) == pytest.approx((-10 + 5) / 5 - 0.5)
    assert accuracy([[(short_good, 1.0), (half, 1.0)]], mmi(0, 0)) != accuracy([[(short_good, 1.0)]], mmi(0, 0))


def test_rated_ranking_end_to_end(trained, tmp_path, monkeypatch, capsys):
    """A round whose readers kept each context's shortest draws: "shorter first" orders every
    differently judged pair as they did."""
    import sys
    from eval import rated_ranking
    from vhred import loading
    from vhred.candidates import generate, reply_key
    from vhred.decoding import DecodeOptions
    from vhred.render import encode_turns, response_text
    from vhred.sources import spaced
    model, cfg, sp = loading.load_model(trained["vhred"])
    contexts = [["Hi , how are you ?"], ["Can I help you ?", "Yes , I want a coat ."]]
    items, answers = {}, []
    for c, ctx in enumerate(contexts):
        ids = encode_turns(sp, [spaced(t) for t in ctx], cfg.max_utt_len, cfg.max_context)
        replies = {}   # one text per reply a reader sees (the words; the script matches by them), the first drawn
        for r in generate(model, [ids], DecodeOptions(num_samples=8, rank="none", dedup=False, method="greedy"))[0]:
            text = response_text(sp, r[0], 30)
            replies.setdefault(reply_key(text), (text, len(r[0])))
        shortest = min(n for _, n in replies.values())
        for i, (text, n) in enumerate(replies.values()):
            items[f"{c}{i:05d}"] = [{"system": "x", "context": c, "rank": i + 1, "text": text}]
            answers.append(f"{c}{i:05d} {'good' if n == shortest else 'bad'}")
    (tmp_path / "contexts.jsonl").write_text("".join(json.dumps({"context": c}) + "\n" for c in contexts))
    (tmp_path / "key.json").write_text(json.dumps({"kind": "pointwise", "contexts": contexts, "items": items}))
    (tmp_path / "rater1.txt").write_text("\n".join(answers) + "\n")
    monkeypatch.setattr(sys, "argv", ["rated_ranking", "--checkpoint", trained["vhred"], "--round", str(tmp_path),
                                      "--systems", "x", "--draws", "8"])
    rated_ranking.main()
    out = capsys.readouterr().out
    assert f"{len(items)} rated replies of 2 contexts, {len(items)} of them among the 8 draws" in out
    assert any(a.endswith("bad") for a in answers)   # pairs judged differently, for the ranking to order
    assert "| shorter first | 1.000 |" in out
    assert out.count("| mmi lambda") == len(rated_ranking.LAMBDAS) * len(rated_ranking.GAMMAS)


# --- what a perfect ranking of a model's draws could show (eval/candidate_ceiling.py) ----------

def test_candidate_ceiling_of_hand_made_labels():
    from eval.candidate_ceiling import report, shares
    reply = lambda n, good, faulty=False: {"lpc": -2.0 * n, "lpn": -3.0 * n, "n": n, "faulty": faulty, "good": good}
    # context 1: 7 replies, 6 good -> ceiling 5 of 5; context 2: one good of three -> 1 of 5, top-1 yes;
    # context 3: none good -> 0
    ctxs = [[reply(3, True)] * 6 + [reply(9, False)],
            [reply(2, False, faulty=True), reply(4, True), reply(8, False)],
            [reply(5, False), reply(6, False)]]
    lines = report("x", "r", ctxs)
    assert "12 distinct replies (4.0 a context), 7 good (58%)" in lines[0]
    assert "| ceiling (a perfect ranking) | 67% | 40% |" in lines       # (5/5 + 1/5 + 0) / 3
    # shortest first, faulty last: context 2 puts the 4-token good reply first
    assert shares(ctxs, lambda r: (not r["faulty"], -r["n"])) == (pytest.approx(2 / 3), pytest.approx((5 / 5 + 1 / 5) / 3))
    assert "0: 1, 1: 1, 2: 0, 3: 0, 4: 0, 5: 1" in lines[-1]


def test_candidate_ceiling_end_to_end(trained, tmp_path, capsys):
    """pool -> rate pack -> answers -> ceiling: every distinct draw is packed, and a reader who keeps
    only each context's shortest replies without a surface fault (the shortest of all where every
    draw has one) gives a top-1 ceiling of 100% that "shortest first" (faulty last) reaches."""
    from eval import candidate_ceiling
    from vhred.candidates import reply_key
    contexts = [["Hi , how are you ?"], ["Can I help you ?", "Yes , I want a coat ."]]
    (tmp_path / "contexts.jsonl").write_text("".join(json.dumps({"context": c}) + "\n" for c in contexts))
    sys_file = tmp_path / "sys-g.jsonl"
    candidate_ceiling.main(["pool", "--checkpoint", trained["vhred"], "--contexts", str(tmp_path / "contexts.jsonl"),
                            "--draws", "8", "--out", str(sys_file)])
    rows = [json.loads(line) for line in sys_file.read_text().splitlines()]
    assert [r["context"] for r in rows] == contexts
    import vhred.decoding
    drawn = vhred.decoding.keyed_noise
    candidate_ceiling.main(["pool", "--checkpoint", trained["vhred"], "--contexts", str(tmp_path / "contexts.jsonl"),
                            "--draws", "8", "--z-scale", "0", "--out", str(tmp_path / "sys-0.jsonl")])
    at_mean = [json.loads(line) for line in (tmp_path / "sys-0.jsonl").read_text().splitlines()]
    assert [len(r["samples"]) for r in at_mean] == [1, 1]   # every z the prior's mean: one reply a context
    assert vhred.decoding.keyed_noise is drawn             # the noise is the prior's again afterwards
    for r in rows:
        assert 1 <= len(r["samples"]) <= 8 and len(r["samples"]) == len(r["lpc"]) == len(r["n"]) == len(r["faulty"])
        assert len({reply_key(s) for s in r["samples"]}) == len(r["samples"])   # repeats dropped
    rate.main(["pack", "--system", f"g={sys_file}", "--out", str(tmp_path / "pack.txt"),
               "--key", str(tmp_path / "key.json"), "--per-context", "1000"])
    key = json.loads((tmp_path / "key.json").read_text())
    assert len(key["items"]) == sum(len(r["samples"]) for r in rows)
    shortest = [min([n for n, f in zip(r["n"], r["faulty"]) if not f] or r["n"]) for r in rows]
    length = {(c, t): n for c, r in enumerate(rows) for t, n in zip(r["samples"], r["n"])}
    (tmp_path / "rater1.txt").write_text("".join(
        f"{i} {'good' if length[(e[0]['context'], e[0]['text'])] == shortest[e[0]['context']] else 'bad'}\n"
        for i, e in key["items"].items()))
    candidate_ceiling.main(["ceiling", "--key", str(tmp_path / "key.json"), "--answers", str(tmp_path / "rater1.txt"),
                            "--system", f"g={sys_file}"])
    out = capsys.readouterr().out
    assert "| ceiling (a perfect ranking) | 100% |" in out
    assert "| shortest first | 100% |" in out

    # replay: the same labels read as a round folder, rankings by a critic trained on them
    import shutil
    from vhred import critic_train
    run = tmp_path / "run"
    shutil.copytree(trained["vhred"], run)
    critic_train.main(["--checkpoint", str(run), "--ratings", str(tmp_path), "--steps", "2", "--pretrain", "2"])
    capsys.readouterr()
    candidate_ceiling.main(["replay", "--pool", str(sys_file), "--rounds", str(tmp_path), "--critic", str(run),
                            "--weights", "2:-0.2", "--precedents", "0,1000"])
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| pool | contexts |") and "critic + 2 x mmi gamma -0.2" in table[0]
    assert table[0].endswith("critic + 2 x mmi gamma -0.2 + 0 x precedents | critic + 2 x mmi gamma -0.2 + 1000 x precedents |")
    cells = table[2].split(" | ")
    assert cells[-2] == cells[-3]   # no weight on the precedents: the ranking without them
    # the precedents are these very labels: ranked by them alone, the first reply is one the reader kept
    assert cells[-1].startswith("100.0% / ")
    good = [sum(n == shortest[c] for n in r["n"]) for c, r in enumerate(rows)]   # the reader kept the shortest
    assert cells[1] == "2" and cells[4] == f"100% / {sum(min(g, 5) / 5 for g in good) / len(good):.0%}"
    rows[0]["samples"].append("A reply no reader saw .")
    for f in ("lpc", "lpn", "n", "faulty"):
        rows[0][f].append(rows[0][f][0])
    sys_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(SystemExit, match="1 replies carry no label"):
        candidate_ceiling.main(["replay", "--pool", str(sys_file), "--rounds", str(tmp_path), "--critic", str(run)])


def test_backward_ranking_reverses_dialogues_and_adds_the_backward_score(trained, dailydialog_zip, tmp_path,
                                                                         monkeypatch, capsys):
    """`reverse` writes every dialogue with its turns reversed, splits kept; `rank` with mu 0 is the
    shipped score, and mu moves the order by log p(c_last | r) of the backward model."""
    from eval import backward_ranking, candidate_ceiling
    from vhred.sources import read_dailydialog
    monkeypatch.setenv("DAILYDIALOG_SRC", dailydialog_zip)
    backward_ranking.main(["reverse", "--out", str(tmp_path / "rev.jsonl")])
    rows = [json.loads(line) for line in (tmp_path / "rev.jsonl").read_text().splitlines()]
    original = read_dailydialog(dailydialog_zip)
    assert [r["dialog"][::-1] for r in rows if r["split"] == "test"] == original["test"]
    assert len(rows) == sum(len(v) for v in original.values())
    # a scored reply: mu 0 is the shipped MMI score with faulty ones last
    r = {"lpc": -6.0, "lpn": -9.0, "n": 3, "faulty": False, "lbw": -20.0}
    assert backward_ranking.score(0.0, -0.1)(r) == candidate_ceiling.mmi(0.25, -0.1)(r)
    assert backward_ranking.score(0.5, -0.1)(r)[1] == pytest.approx((-6 + 0.25 * 9) / 3 - 0.3 - 10)
    # log p(c_last | r) under a model: the turn to answer read as the target, the reply as context
    pool = [{"context": ["Can I help you ?"], "samples": ["Yes.", "I want a coat."]}]
    (lbw,) = backward_ranking.backward_scores(trained["hred"], pool)
    from vhred import loading
    from vhred.sources import spaced
    from vhred.scoring import log_likelihoods
    model, cfg, sp = loading.load_model(trained["hred"])
    expect, _ = log_likelihoods(model, [[sp.encode(spaced("I want a coat."))]], [sp.encode(spaced("Can I help you ?"))], 1, 0)
    assert lbw[1] == pytest.approx(expect[0]) and lbw[0] != lbw[1]


def test_rating_contexts_says_how_many_are_left_when_asked_for_more(trained, monkeypatch, capsys):
    """Asked for more unused contexts than the test split has left, the command says how many
    remain in one line; asked for that many it writes them."""
    import sys
    from eval import rating_contexts
    monkeypatch.setattr(sys, "argv", ["rating_contexts", "--checkpoint", trained["vhred"], "--contexts", "100000"])
    with pytest.raises(SystemExit) as stop:
        rating_contexts.main()
    err = capsys.readouterr().err
    left = int(re.search(r"only (\d+) test contexts are left", err).group(1))
    assert stop.value.code == 2 and err.count("\n") == 1   # a user's error, as every command's
    assert 0 < left < 100000 and f"--contexts {left} or fewer" in err
    monkeypatch.setattr(sys, "argv", ["rating_contexts", "--checkpoint", trained["vhred"], "--contexts", str(left)])
    rating_contexts.main()
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == left and all(r["context"] and r["reference"] for r in rows)


def test_rating_contexts_refuses_an_exclude_file_that_is_not_contexts_in_one_line(trained, tmp_path, capsys):
    """A key.json or a pack given to --exclude by mistake was a JSONDecodeError or KeyError traceback."""
    from eval import rating_contexts
    for name, text in (("key.json", '{\n "kind": "pointwise"\n}\n'), ("other.jsonl", '{"x": 1}\n'),
                       ("nested.jsonl", '{"context": ["Hi", "Bye"]}\n{"context": [["Hi"]]}\n')):
        (tmp_path / name).write_text(text)
        with pytest.raises(SystemExit) as stop:
            rating_contexts.main(["--checkpoint", trained["vhred"], "--exclude", str(tmp_path / name)])
        err = capsys.readouterr().err
        line = 2 if name == "nested.jsonl" else 1
        assert stop.value.code == 2 and f"{name}: line {line} is not a" in err and err.count("\n") == 1, err


def test_ranking_sweep_draws_again_for_another_count_and_reuses_its_own(trained, tmp_path, capsys):
    """Its candidates.jsonl was read whoever drew it: 2 contexts' rows were scored against the
    references of 3, and printed as such."""
    from eval import ranking_sweep
    out = str(tmp_path / "sweep")
    for n, again in ((2, False), (3, True), (3, False)):
        ranking_sweep.main(["--checkpoint", trained["vhred"], "--contexts", str(n), "--out", out])
        printed = capsys.readouterr().out
        assert f"### greedy ({n} contexts" in printed and ("drawn again" in printed) == again, printed[:300]
    with pytest.raises(SystemExit) as stop:
        ranking_sweep.main(["--checkpoint", trained["vhred"], "--contexts", "0", "--out", out])
    assert stop.value.code == 2 and "--contexts must be at least 1" in capsys.readouterr().err


def test_rating_contexts_draws_from_the_validation_split_when_asked(trained, monkeypatch, capsys):
    import sys
    from eval import rating_contexts
    from vhred import loading
    from vhred.sources import split_dialogues
    from vhred.metrics.protocol import context_pairs
    _, cfg, _ = loading.load_model(trained["vhred"])
    pairs = {split: {(tuple(c), r) for c, r in context_pairs(split_dialogues(cfg, split), cfg.max_context)}
             for split in ("test", "validation")}
    monkeypatch.setattr(sys, "argv", ["rating_contexts", "--checkpoint", trained["vhred"], "--contexts", "5",
                                      "--split", "validation"])
    rating_contexts.main()
    rows = {(tuple(r["context"]), r["reference"]) for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert len(rows) == 5 and rows <= pairs["validation"]
    # the stand-in corpus's splits share some exchanges: most of the test split's are its own, so
    # five drawn from it would not all be the validation split's
    assert len(pairs["test"] - pairs["validation"]) > 0.5 * len(pairs["test"])


def test_rating_contexts_draws_a_mix_of_last_turns_shuffled(trained, monkeypatch, capsys):
    """--mix wh=A,yes-no=B,other=C: exactly so many of each kind of last turn (vhred.rate.turn_kind),
    in an order that is not grouped by kind; asked for more of a kind than are left, one line
    says how many of that kind remain."""
    import sys
    from collections import Counter
    from eval import rating_contexts
    from vhred import loading
    from vhred.sources import split_dialogues
    from vhred.metrics.protocol import context_pairs
    from vhred.rate import turn_kind
    _, cfg, _ = loading.load_model(trained["vhred"])
    pairs = context_pairs(split_dialogues(cfg, "validation"), cfg.max_context)
    have = Counter(turn_kind(c) for c, _ in pairs)
    want = {k: min(3, have[k]) for k in ("wh", "yes-no", "other") if have[k]}
    assert len(want) >= 2   # the tiny data holds at least two kinds, or the mix tests nothing
    mix = ",".join(f"{k}={n}" for k, n in want.items())
    args = ["rating_contexts", "--checkpoint", trained["vhred"], "--split", "validation", "--seed", "3"]
    monkeypatch.setattr(sys, "argv", args + ["--mix", mix])
    rating_contexts.main()
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    kinds = [turn_kind(r["context"]) for r in rows]
    assert Counter(kinds) == Counter(want)
    assert kinds != sorted(kinds, key=list(want).index)   # shuffled: packs cut from the file hold every kind
    assert {(tuple(c), r) for c, r in pairs} >= {(tuple(r["context"]), r["reference"]) for r in rows}
    other = "other" if "other" in want else next(iter(want))
    monkeypatch.setattr(sys, "argv", args + ["--mix", f"{other}={have[other] + 1}"])
    with pytest.raises(SystemExit) as stop:
        rating_contexts.main()
    err = capsys.readouterr().err
    assert f"only {have[other]} validation contexts of kind {other} are left" in err
    assert f"--mix {other}={have[other]} or fewer" in err
    monkeypatch.setattr(sys, "argv", args + ["--mix", "question=2"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        rating_contexts.main()
    assert stop.value.code == 2 and "not 'question=2'" in capsys.readouterr().err


# --- one system over several rounds (eval/pooled_rating.py) ------------------------------------

def test_pooled_rating_of_hand_made_rounds(tmp_path, capsys):
    from eval import pooled_rating

    def round_folder(name, system, labels):
        """labels: per reader, per context, the good/bad of the system's replies by rank."""
        folder = tmp_path / name
        folder.mkdir()
        items = {}
        for c, ranked in enumerate(labels[0]):
            for r in range(len(ranked)):
                items[f"{name}{c}{r}"] = [{"system": system, "context": c, "rank": r + 1, "text": "x"}]
            items[f"{name}{c}h"] = [{"system": "h", "context": c, "rank": 1, "text": "y"}]   # another system
        contexts = [["Hi .", "Where is it ?" if c == 0 else "It is here ."] for c in range(len(labels[0]))]
        (folder / "key.json").write_text(json.dumps({"kind": "pointwise", "items": items, "contexts": contexts}))
        for i, reader in enumerate(labels):
            lines = [f"{name}{c}{r} {'good' if g else 'bad'}" for c, ranked in enumerate(reader) for r, g in enumerate(ranked)]
            (folder / f"rater{i}.txt").write_text("\n".join(lines + [f"{name}{c}h good" for c in range(len(reader))]) + "\n")
        return f"{folder}={system}"

    # round a: 2 readers x 2 contexts of 3 replies; round b: 1 reader, 1 context of 2 replies
    a = round_folder("a", "n", [[[True, False, False], [False, True, True]], [[True, True, False], [False, False, False]]])
    b = round_folder("b", "k", [[[True, True]]])
    pooled_rating.main(["--round", a, "--round", b, "--boot", "200"])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    pairwise = tmp_path / "pairwise"   # `vhred rate pack --pairwise`'s key: a TypeError traceback before
    pairwise.mkdir()
    shutil.copy(os.path.join(ROOT, "eval", "ratings", "2026-11-29", "pairwise-key.json"), pairwise / "key.json")
    shutil.copy(os.path.join(ROOT, "eval", "ratings", "2026-11-29", "ab1.txt"), pairwise / "rater1.txt")
    with pytest.raises(SystemExit) as stop:
        pooled_rating.main(["--round", f"{pairwise}=a"])
    assert stop.value.code == 2 and "is a pairwise round" in capsys.readouterr().err
    assert lines[0]["five"] == pytest.approx(5 / 12, abs=1e-4) and lines[0]["first"] == pytest.approx(2 / 4, abs=1e-4)
    assert lines[1]["five"] == 1.0 and lines[1]["five_95"] == [1.0, 1.0]     # one context: nothing to resample
    everything = lines[2]
    assert (everything["contexts"], everything["ratings"]) == (3, 5)
    assert everything["five"] == pytest.approx(7 / 14, abs=1e-4) and everything["first"] == pytest.approx(3 / 5, abs=1e-4)
    assert everything["five_95"][0] <= everything["five"] <= everything["five_95"][1]
    assert everything["five_95"][0] < everything["five_95"][1]
    with pytest.raises(SystemExit):   # a system the key does not hold: one line, not a traceback
        pooled_rating.main(["--round", a.replace("=n", "=q")])
    assert "no system 'q'" in capsys.readouterr().err

    # paired against the human replies of round a (all good): n - h by context, over a's 2 contexts
    pooled_rating.main(["--round", a, "--boot", "200", "--versus", "h"])
    versus = [json.loads(x) for x in capsys.readouterr().out.splitlines()][-1]
    assert versus["versus"] == "h" and (versus["contexts"], versus["ratings"]) == (2, 4)
    assert versus["five"] == pytest.approx(5 / 12 - 1, abs=1e-4) and versus["first"] == pytest.approx(2 / 4 - 1, abs=1e-4)
    assert versus["first_95"] == [-1.0, 0.0]   # context 0 alone: 0; context 1 alone: -1

    # the contexts after a question (context 0 of each round) and the others (round a's context 1)
    pooled_rating.main(["--round", a, "--round", b, "--boot", "200", "--last-turn", "question"])
    asked = [json.loads(x) for x in capsys.readouterr().out.splitlines()][-1]
    assert (asked["contexts"], asked["five"], asked["first"]) == (2, pytest.approx(5 / 8, abs=1e-4), 1.0)
    pooled_rating.main(["--round", a, "--round", b, "--boot", "200", "--last-turn", "other"])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2 and (lines[-1]["contexts"], lines[-1]["five"]) == (1, pytest.approx(2 / 6, abs=1e-4))
    pooled_rating.main(["--round", a, "--round", b, "--boot", "200", "--last-turn", "wh"])   # "Where is it ?"
    assert [json.loads(x) for x in capsys.readouterr().out.splitlines()][-1] == asked
    pooled_rating.main(["--round", a, "--round", b, "--boot", "200", "--last-turn", "wh", "--last-turn", "other"])
    assert [json.loads(x) for x in capsys.readouterr().out.splitlines()][-1]["contexts"] == 3   # all of them
    with pytest.raises(SystemExit):   # no yes-no question among them: said in one line
        pooled_rating.main(["--round", a, "--round", b, "--boot", "200", "--last-turn", "yes-no"])
    assert "no context of these rounds has a last turn of kind 'yes-no'" in capsys.readouterr().err

    # a reader who stopped after the first context's replies: the count of all the ids left
    folder = a.split("=")[0]
    kept = (tmp_path / "a" / "rater0.txt").read_text().splitlines()[:3]
    (tmp_path / "a" / "rater0.txt").write_text("\n".join(kept) + "\n")
    with pytest.raises(SystemExit):
        pooled_rating.main(["--round", f"{folder}=n"])
    assert "rater0.txt does not answer 3 of the 6 ids of system 'n'" in capsys.readouterr().err


@pytest.mark.parametrize("script, argv", [
    ("rating_contexts", ["--checkpoint", "/no/such/run"]),
    ("rating_contexts", ["--checkpoint", "RUN", "--exclude", "/no/such/contexts.jsonl"]),
    ("rating_contexts", ["--checkpoint", "RUN", "--contexts", "0"]),
    ("rating_contexts", ["--checkpoint", "RUN", "--mix", "wh=40,wh=2"]),
    ("rated_ranking", ["--checkpoint", "/no/such/run", "--round", "/no/such/round"]),
    ("ranking_sweep", ["--checkpoint", "/no/such/run"]),
    ("candidate_ceiling", ["pool", "--checkpoint", "/no/such/run", "--contexts", "/no/such/file", "--out", "/no/such/out.jsonl"]),
    ("serve_compare", ["--checkpoint", "/no/such/run"]),
])
def test_the_rating_scripts_say_a_users_mistake_in_one_line(script, argv, trained, capsys):
    import importlib
    main = importlib.import_module(f"eval.{script}").main
    with pytest.raises(SystemExit) as e:
        main([trained["vhred"] if a == "RUN" else a for a in argv])
    err = capsys.readouterr().err
    assert e.value.code in (1, 2) and err.startswith("error: ") and err.count("\n") == 1, err


def test_precedents_weigh_the_same_replys_labels_by_how_alike_the_turns_are():
    """eval/precedents.py against a hand computation: "OK ." kept after a request, not after a
    question; the estimate for a new turn follows the more similar one, M pseudo-labels at p0."""
    from eval import precedents
    request, question, other = [5, 6, 7], [8, 9, 10], [11]
    bank = precedents.Precedents([([[1], request], [([20, 21], 1.0), ([30], 0.0)]),
                                  ([[2], question], [([20, 21], 0.0), ([30], 0.0)])])
    assert bank.p0 == pytest.approx(0.25)                        # 1 kept of 4
    # the same turn as the request: cos 1 with it, 0 with the question
    assert bank.kept(request, [20, 21]) == pytest.approx((1.0 * 1 + 2 * 0.25) / (1 + 2))
    assert bank.kept(question, [20, 21]) == pytest.approx((0 + 2 * 0.25) / (1 + 2))
    # a turn sharing one of three pieces with the request: cos = 1/sqrt(3) (its pieces weigh alike)
    half = [5, 99, 98]
    w = bank.vector(collections.Counter(half))
    cos = sum(w.get(p, 0) * x for p, x in bank.vectors[0].items())
    assert bank.kept(half, [20, 21]) == pytest.approx((cos ** 2 + 2 * 0.25) / (cos ** 2 + 2))
    assert bank.kept(other, [20, 21]) == pytest.approx(0.25)     # like neither: the prior
    assert bank.kept(request, [40]) == 0.25                       # never rated: the prior
    p = bank.kept(request, [20, 21])
    assert bank.logits([[[3], request]], [[20, 21]]) == pytest.approx([math.log(p / (1 - p))])


def test_packs_of_the_same_draws_in_other_forms_share_no_id(tmp_path, systems):
    """A 1-reply pack of the same systems drew the 2-reply pack's first ids for other replies: a
    rater's answers to one then scored against the other's key, credited to the wrong system."""
    _, two = pack(tmp_path, systems)
    for extra in (["--per-context", "1"], ["--pairwise"]):
        folder = tmp_path / extra[-1]
        folder.mkdir()
        _, other = pack(folder, systems, *extra)
        assert not set(two["items"]) & set(other["items"]), extra


def test_pack_writes_over_no_key_and_rates_all_contexts_only_when_every_system_has_them(tmp_path, systems, capsys):
    """--out over another pack's key lost it silently; --contexts 0 ("all") with a system cut
    short rated the shortest's count and dropped the others' rest without a word."""
    pack(tmp_path, systems)
    key = tmp_path / "key.json"
    kept = key.read_text()
    with pytest.raises(SystemExit):
        rate.main(["pack", "--system", f"old={systems[0]}", "--out", str(key), "--key", str(tmp_path / "k2.json")])
    assert "--out " + str(key) + " holds the key of a pack" in capsys.readouterr().err and key.read_text() == kept
    with pytest.raises(SystemExit):   # a --key over the pack the rater reads: no key, named as such
        rate.main(["pack", "--system", f"old={systems[0]}", "--out", str(tmp_path / "p2.txt"), "--key", str(tmp_path / "pack.txt")])
    assert "pack.txt exists and is not this pack's key (a pack, another file?)" in capsys.readouterr().err
    short = tmp_path / "short.jsonl"
    short.write_text("".join(open(systems[1]).readlines()[:2]))
    argv = ["pack", "--system", f"old={systems[0]}", "--system", f"new={short}", "--out", str(tmp_path / "p3.txt"),
            "--key", str(tmp_path / "k3.json")]
    with pytest.raises(SystemExit):
        rate.main(argv)
    assert "system 'new' answers 2 contexts and the others up to 3" in capsys.readouterr().err
    rate.main([*argv, "--contexts", "2"])
    assert len(json.load(open(tmp_path / "k3.json"))["contexts"]) == 2


# --- the research scripts of eval/ ---------------------------------------------------------------

def test_the_discriminator_critic_trains_a_critic_the_run_loads_and_keeps_an_earlier_folder(trained, tmp_path, capsys):
    """It called the critic without the turns each reply follows (Critic.forward's third argument
    since the answered turn is read) and crashed every time; its --out, "a new folder", replaced
    a run's best.pt and critic when it named one."""
    from eval import discriminator_critic
    from vhred import loading
    args = ["--checkpoint", trained["vhred"], "--out", str(tmp_path / "disc"), "--split", "validation",
            "--contexts", "40", "--steps", "2"]
    discriminator_critic.main(args)
    model, _, _ = loading.load_model(str(tmp_path / "disc"))   # the tokenizer's hash checked
    assert model.reply_critic is not None
    before = (tmp_path / "disc" / "critic.safetensors").read_bytes()
    with pytest.raises(SystemExit) as e:
        discriminator_critic.main(args)
    assert e.value.code == 2 and "exists; give a new folder" in capsys.readouterr().err
    assert (tmp_path / "disc" / "critic.safetensors").read_bytes() == before


def test_research_scripts_refuse_what_they_cannot_read_in_one_line(trained, tmp_path, capsys):
    from eval import candidate_ceiling, exemplar_z
    half = os.path.join(ROOT, "eval", "ratings", "2026-11-30-ceiling", "half1")
    contexts = tmp_path / "c.jsonl"
    contexts.write_text('{"context": ["Hi ."]}\n')
    ceiling = ["ceiling", "--key", os.path.join(half, "key.json"), "--answers", os.path.join(half, "rater11.txt")]
    cases = [   # each a traceback before: AttributeError, ZeroDivisionError, ValueError twice
        (exemplar_z.main, ["--checkpoint", trained["hred"], "--input", str(contexts), "--output", str(tmp_path / "o")],
         "is a hred model; exemplar z's are read by VHRED's or CVAE's posterior"),
        (candidate_ceiling.main, ceiling + ["--system", "x=" + os.path.join(half, "sys-g.jsonl")], "system x has no reply rated"),
        (candidate_ceiling.main, ceiling + ["--system", os.path.join(half, "sys-g.jsonl")], "give NAME=FILE"),
        (candidate_ceiling.main, ["replay", "--pool", os.path.join(half, "sys-g.jsonl"), "--rounds", half,
                                  "--critic", trained["vhred"], "--weights", "2"], "--weights takes W:GAMMA pairs"),
    ]
    for main, argv, said in cases:
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and said in err and err.count("\n") == 1, err


def test_first_order_replays_an_order_of_the_shown_replies_on_their_labels(trained, tmp_path, capsys):
    """eval/first_order.py on a hand-made round: the shown order puts the critic's least liked reply
    first (its rest of the score is -3 x the logit), the reader keeps only the critic's favourite,
    so logit + w x rest finds it first exactly when w < 1/3."""
    import shutil
    from eval import first_order
    from vhred import critic_train, loading
    contexts = [["Hi , how are you ?"], ["Can I help you ?", "Yes , I want a coat ."]]
    replies = [["Fine , thanks .", "I see .", "Where is it ?"], ["Here you are .", "OK .", "What size ?"]]

    def round_folder(name, rows, keep):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "sys-m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        rate.main(["pack", "--system", f"m={folder / 'sys-m.jsonl'}", "--out", str(folder / "pack.txt"),
                   "--key", str(folder / "key.json"), "--per-context", "5"])
        key = json.loads((folder / "key.json").read_text())
        (folder / "rater1.txt").write_text("".join(f"{i} {'good' if keep(e[0]['context'], e[0]['text']) else 'bad'}\n"
                                                   for i, e in key["items"].items()))
        return folder

    plain = [{"context": c, "samples": r, "scores": [0.0] * len(r)} for c, r in zip(contexts, replies)]
    run = tmp_path / "run"
    shutil.copytree(trained["vhred"], run)
    critic_train.main(["--checkpoint", str(run), "--ratings", str(round_folder("a", plain, lambda c, t: "?" in t)),
                       "--steps", "2", "--pretrain", "2"])
    logits = first_order.logits(loading.load_model(str(run)), plain, [0, 1])
    assert all(len(set(v)) == 3 for v in logits.values())   # the three replies of a context are told apart
    rows, favourite = [], {}
    for c, row in enumerate(plain):
        scored = sorted(((-2 * x, t) for x, t in zip(logits[c], row["samples"])), reverse=True)   # logit + rest
        rows.append({"context": row["context"], "samples": [t for _, t in scored], "scores": [s for s, _ in scored]})
        favourite[c] = max(zip(logits[c], row["samples"]))[1]
    b = round_folder("b", rows, lambda c, t: t == favourite[c])
    capsys.readouterr()
    first_order.main(["--checkpoint", str(run), "--round", f"{b}=m", "--weights", "0,0.25,0.5,1", "--boot", "100"])
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(o["weight"], o["first"], o["minus_shown"]) for o in out] == [(0, 1, 1), (0.25, 1, 1), (0.5, 0, 0), (1, 0, 0)]
    assert all(o["contexts"] == 2 for o in out)
    # --readers --critic-weights: a table that knows none of the replies leaves the order shown (c = 0);
    # a large weight of the critic's logit puts its favourite first
    from vhred import kept
    kept.save({"smooth": 5, "base": {k: 0.5 for k in kept.KINDS}, "kept": {k: {} for k in kept.KINDS}}, str(run))
    first_order.main(["--checkpoint", str(run), "--readers", "--critic-weights", "0,1000", "--round", f"{b}=m", "--boot", "100"])
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(o["critic_weight"], o["first"]) for o in out] == [(0, 0), (1000, 1)]
    with pytest.raises(SystemExit):
        first_order.main(["--checkpoint", str(run), "--critic-weights", "1", "--round", f"{b}=m"])
    assert "goes with --readers" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        first_order.main(["--checkpoint", trained["vhred"], "--round", f"{b}=m"])
    assert "has no reply critic" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        first_order.main(["--checkpoint", str(run), "--round", f"{b}=x"])
    assert capsys.readouterr().err.startswith("error: ")
    # a reply the chat cut at the length limit is read as the ranking read it, without the mark
    from vhred.render import CUT
    cut = [{"context": contexts[0], "samples": [replies[0][0] + CUT, replies[0][0]]}]
    read = first_order.logits(loading.load_model(str(run)), cut, [0])[0]
    assert read[0] == pytest.approx(read[1], abs=1e-6)
    for argv, said in ((["--weights", "nan"], "--weights takes numbers"), (["--weights", "0,x"], "--weights takes numbers")):
        with pytest.raises(SystemExit):
            first_order.main(["--checkpoint", str(run), "--round", f"{b}=m", *argv])
        assert said in capsys.readouterr().err
    # a system file without scores (an unranked system), or with fewer rows than the key: one line each
    whole = (b / "sys-m.jsonl").read_text()
    for text, said in ((whole.replace('"scores"', '"unscored"'), "without a score for each reply"),
                       (whole.splitlines()[0] + "\n", "holds 1 contexts and the round's key 2")):
        (b / "sys-m.jsonl").write_text(text)
        with pytest.raises(SystemExit):
            first_order.main(["--checkpoint", str(run), "--round", f"{b}=m"])
        err = capsys.readouterr().err
        assert said in err and err.startswith("error: ") and err.count("\n") == 1, err
