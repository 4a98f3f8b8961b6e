"""Metrics on hand-worked strings, against nltk, and the evaluation command on a tiny model."""
import json
import math
import os
import subprocess
import sys

import pytest
from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu, sentence_bleu

from tests.conftest import ROOT
from vhred import loading
from vhred.dataset import DialogueData
from vhred.errors import InputError
from vhred.metrics import dialogwae as dw
from vhred.metrics.bleu import (
    corpus_bleu_n,
    dialogwae_bleu,
    multi_sample_bleu,
    sentence_bleu_n,
)
from vhred.metrics.distinct import distinct_n, intra_inter, response_distinct
from vhred.metrics.ranking import candidate_sets, rank_of_first, ranking_metrics
from vhred.metrics.text import tokenize


def test_tokenize_is_documented_behaviour():
    assert tokenize("Hi, I'm FINE.  Thanks!") == ["hi", ",", "i'm", "fine", ".", "thanks", "!"]


def test_bleu_matches_nltk_and_a_hand_computed_case():
    hyps = [tokenize("the cat sat on the mat"), tokenize("hello there friend")]
    refs = [[tokenize("the cat is on the mat")], [tokenize("hello there my friend"), tokenize("hi friend")]]
    ours = corpus_bleu_n(hyps, refs)
    for n in range(1, 5):
        w = tuple([1 / n] * n)
        assert ours[f"bleu-{n}"] == pytest.approx(corpus_bleu(refs, hyps, weights=w,
                                                              smoothing_function=SmoothingFunction().method1))
    # hand: unigram matches 5/6 + 3/3 = 8/9; closest reference lengths 6 + 2 (a tie goes to the
    # shorter) = 8 <= 9 hypothesis tokens, so no brevity penalty
    assert ours["bleu-1"] == pytest.approx(8 / 9)
    # "the cat" against "the cat sat down": every unigram matches, brevity penalty exp(1 - 4/2)
    assert corpus_bleu_n([tokenize("the cat")], [[tokenize("the cat sat down")]])["bleu-1"] == pytest.approx(math.exp(-1))
    h, r = tokenize("a b c d"), tokenize("a b c e")
    assert sentence_bleu_n(h, [r], 2) == pytest.approx(sentence_bleu([r], h, weights=(0.5, 0.5),
                                                                     smoothing_function=SmoothingFunction().method1))
    assert dialogwae_bleu(h, [r]) == pytest.approx(sentence_bleu([r], h, weights=(1 / 3, 1 / 3, 1 / 3),
                                                                 smoothing_function=SmoothingFunction().method7))
    same = tokenize("where is the bank ?")
    assert corpus_bleu_n([same], [[same]])["bleu-4"] == pytest.approx(1.0)
    assert sentence_bleu_n(same, [same], 4) == pytest.approx(1.0) and sentence_bleu_n([], [same], 2) == 0.0
    assert dialogwae_bleu(same, [same]) == pytest.approx(1.1539, abs=1e-4)   # the published smoothing overshoots


def test_multi_sample_precision_recall_f1():
    ref = tokenize("a b c d")
    samples = [[tokenize("a b c d"), tokenize("x y z w")], [tokenize("a b c d")]]
    r = multi_sample_bleu(samples, [ref, ref], n=1)
    s0 = sentence_bleu_n(tokenize("x y z w"), [ref], 1)
    assert r["precision"] == pytest.approx(((1 + s0) / 2 + 1) / 2)
    assert r["recall"] == pytest.approx(1.0)
    assert r["f1"] == pytest.approx(2 * r["precision"] / (r["precision"] + 1))


def test_distinct_by_hand():
    sents = [tokenize("a b a"), tokenize("a c")]
    assert distinct_n(sents, 1) == pytest.approx(3 / 5)      # a b c over a b a a c
    assert distinct_n(sents, 2) == pytest.approx(3 / 3)      # ab ba ac
    assert distinct_n([[]], 2) == 0.0
    groups = [[tokenize("a b"), tokenize("a b")], [tokenize("a b"), tokenize("c d")]]
    intra, inter = intra_inter(groups, 1)
    assert intra == pytest.approx((2 / 4 + 4 / 4) / 2) and inter == pytest.approx(4 / 8)
    # within single responses: "a a b" 2/3, "c" 1/1 for unigrams; "c" has no bigram, so 0 (as DialogWAE)
    groups = [[tokenize("a a b"), tokenize("c")]]
    assert response_distinct(groups, 1) == pytest.approx((2 / 3 + 1) / 2)
    assert response_distinct(groups, 2) == pytest.approx((2 / 2 + 0) / 2)


@pytest.mark.slow   # a subprocess: a command as a user runs it
@pytest.mark.parametrize("files,message", [
    ({"h": "", "r": "a\n"}, "is empty"),
    ({"h": "a\nb\n", "r": "a\n"}, "has 1 lines but"),
    ({"h": "a\n\nb\n", "r": "a\nb\nc\n"}, "line 2 is blank"),
])
def test_bad_metric_inputs_are_one_line_errors(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    r = subprocess.run([sys.executable, "-m", "eval.bleu", "--hyps", str(tmp_path / "h"), "--refs", str(tmp_path / "r")],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1


@pytest.mark.slow   # a subprocess: a command as a user runs it
def test_metric_commands_print_json(tmp_path):
    (tmp_path / "h").write_text("the cat sat\nhello\n")
    (tmp_path / "r").write_text("the cat sat\nhello\n")
    r = subprocess.run([sys.executable, "-m", "eval.bleu", "--hyps", str(tmp_path / "h"), "--refs", str(tmp_path / "r")],
                       cwd=ROOT, capture_output=True, text=True)
    assert json.loads(r.stdout)["bleu-1"] == pytest.approx(1.0)
    (tmp_path / "s.jsonl").write_text('{"samples": ["a b", "a b"]}\n{"samples": ["a b", "c d"]}\n')
    r = subprocess.run([sys.executable, "-m", "eval.distinct", "--jsonl", str(tmp_path / "s.jsonl")],
                       cwd=ROOT, capture_output=True, text=True)
    assert json.loads(r.stdout)["intra-distinct-1"] == pytest.approx(0.75)


def test_importance_weighted_nll_is_not_above_the_elbo(trained, dailydialog_zip, monkeypatch):
    monkeypatch.setenv("DAILYDIALOG_SRC", dailydialog_zip)
    from vhred.sources import split_dialogues
    from vhred.metrics.likelihood import elbo_metrics, iw_nll
    model, cfg, sp = loading.load_model(trained["vhred"])
    data = DialogueData.from_dialogues(split_dialogues(cfg, "validation")[:30], sp, cfg.max_utt_len, cfg.max_context)
    elbo = elbo_metrics(model, data, 8)["elbo_per_token"]
    assert iw_nll(model, data, k=20, batch_size=8) <= elbo + 1e-6


def test_importance_weighted_nll_is_minus_log_mean_weight_per_token(monkeypatch):
    """iw_nll = -sum_n log(1/K sum_k w_nk) / tokens, on weights given by hand."""
    import torch
    from vhred.metrics import likelihood
    weights = [torch.tensor([[-2.0, -3.0, -7.0], [-1.0, -1.0, -1.0]]), torch.tensor([[-4.0, -0.5, -9.0]])]

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.calls = iter(weights)

        def log_weights(self, tokens, lens, turns, k):
            assert k == 3
            return next(self.calls), 5

    class Batch:
        tokens = lens = turns = None
        to = lambda self, device: self

    class Data:
        batches = lambda self, batch_size, shuffle: [[0], [1]]
        batch = lambda self, idx: Batch()

    expected = -sum(math.log(sum(math.exp(v) for v in row) / 3) for w in weights for row in w.tolist()) / 10
    assert likelihood.iw_nll(Model(), Data(), k=3, batch_size=2) == pytest.approx(expected, rel=1e-6)


# --- DialogWAE's protocol, rule by rule (vhred/metrics/dialogwae.py) ---

def test_dialogwae_protocol_keeps_the_decoding_flags_given_and_refuses_abbreviated_ones(capsys):
    from vhred.evaluate import legend, parse_args
    args = parse_args(["--protocol", "dialogwae", "--num-samples", "5"])
    assert (args.num_samples, args.method, args.max_len) == (5, "greedy", dw.MAX_TOKENS)
    assert parse_args(["--protocol", "dialogwae"]).num_samples == dw.SAMPLES
    with pytest.raises(SystemExit):   # --num for --num-samples was read, then silently replaced by 10
        parse_args(["--protocol", "dialogwae", "--num", "5"])
    assert "unrecognized arguments: --num 5" in capsys.readouterr().err
    assert "words before </s>" in legend("length")[1] and "in tokens" in legend("mean_length")[1]
    assert "within each response" in legend("intra-dist-1")[1]


def test_dialogwae_tokens_vocabulary_and_end_token():
    assert dw.tokenize("I'm FINE?! $60.") == ["i", "'", "m", "fine", "?!", "$", "60", "."]
    vocab = {"yes", ".", "</s>", "<s>"}
    assert dw.reference_tokens("Yes, sir.", vocab) == ["yes", "<unk>", "<unk>", ".", "</s>"]
    assert dw.reference_tokens(" ".join(["yes"] * 50), vocab) == ["yes"] * 38 + ["</s>"]   # 40 with <s>, </s>
    assert dw.response_tokens("yes .", True, vocab) == ["yes", ".", "</s>"]
    assert dw.response_tokens("yes .", False, vocab) == ["yes", "."]        # cut: no end token
    assert dw.response_tokens(" ".join(["yes"] * 45), True, vocab) == ["yes"] * 40   # 40 steps, no room for </s>
    counts = dw.vocabulary([["a b", "a"], ["b c"]], size=5)
    assert counts == {"<s>", "</s>", "a", "b", "<d>"}   # markers are counted like words, as theirs


def test_dialogwae_targets_include_the_first_and_not_the_last_utterance():
    d = [f"u{i}" for i in range(12)]
    pairs = dw.targets([["hi", "hello", "bye"], d])
    assert pairs[:2] == [([""], "hi"), (["hi"], "hello")]   # "bye" ends its dialogue: no target
    assert len(pairs) == 2 + 11
    assert pairs[2 + 8] == (d[0:8], "u8")       # the start marker still in the window: 8 utterances
    assert pairs[2 + 10] == (d[1:10], "u10")    # then 9


def test_dialogwae_bleu_keeps_the_end_token_and_takes_max_and_mean():
    ref = ["yes", "</s>"]
    assert dw.bleu(["no", "</s>"], ref) > 0 and dw.bleu(["no"], ["yes"]) == 0   # </s> matches
    hit, miss = ["i", "am", "fine", "</s>"], ["no", "way", "out"]
    ref = ["i", "am", "fine", "</s>"]
    s = dw.scores([[hit, miss]], [ref])
    assert s["bleu-recall"] == pytest.approx(dw.bleu(hit, ref))
    assert s["bleu-precision"] == pytest.approx((dw.bleu(hit, ref) + dw.bleu(miss, ref)) / 2)
    p, r = s["bleu-precision"], s["bleu-recall"]
    assert s["bleu-f1"] == pytest.approx(2 * p * r / (p + r))
    assert dw.bleu(hit, ref) == pytest.approx(sentence_bleu([ref], hit, weights=[1 / 3] * 3,
                                                            smoothing_function=SmoothingFunction().method7))


def test_dialogwae_distinct_is_per_response_and_per_context():
    a, b, c = ["a", "b", "</s>"], ["a", "b", "</s>"], ["c", "d", "</s>"]
    s = dw.scores([[a, b], [a, c]], [["x", "</s>"], ["x", "</s>"]])
    # inter-dist-1 per context: 2/4 and 4/4, averaged: 0.75 (pooled over both it would be 4/8)
    assert s["inter-dist-1"] == pytest.approx(0.75, abs=1e-5)
    assert s["inter-dist-2"] == pytest.approx((1 / 2 + 2 / 2) / 2, abs=1e-5)
    assert s["intra-dist-1"] == pytest.approx(1.0, abs=1e-5) and s["length"] == 2   # </s> not counted
    intra, _ = dw.distinct([["a", "a", "b"], ["a"]], 2)
    assert intra == pytest.approx([1.0, 0.0], abs=1e-5)   # "a a", "a b": 2/2; one word has no bigram: 0


def test_ranking_metrics_by_hand():
    assert rank_of_first([0.5, 0.9, 0.1, 0.4]) == 2            # one distractor higher
    assert rank_of_first([0.5, 0.9, 0.1, 0.5]) == 3            # a tie counts against the model
    assert ranking_metrics([rank_of_first([-3.0] * 10)] * 4)["recall@1"] == 0   # scoring all alike finds nothing
    with pytest.raises(InputError, match="not finite"):
        rank_of_first([float("nan"), -1.0, -2.0])               # NaN compares false: it would rank first
    assert ranking_metrics([1, 2, 4, 1]) == {"recall@1": 0.5, "recall@2": 0.75, "mrr": pytest.approx((1 + 0.5 + 0.25 + 1) / 4)}
    triples = [([], f"r{i}", i // 3) for i in range(30)]
    sets = candidate_sets(triples, 9, seed=1)
    assert sets == candidate_sets(triples, 9, seed=1)
    for (_, true, dlg), cands in zip(triples, sets):
        assert cands[0] == true and len(set(cands)) == 10
        assert all(int(c[1:]) // 3 != dlg for c in cands[1:])    # never from the same dialogue
    with pytest.raises(InputError, match="fewer than 9 other dialogues' replies"):   # it drew forever
        candidate_sets([([], f"r{i}", i // 2) for i in range(6)], 9, seed=1)


@pytest.mark.slow   # a subprocess: a command as a user runs it
def test_rank_command(trained, dailydialog_zip, monkeypatch):
    monkeypatch.setenv("DAILYDIALOG_SRC", dailydialog_zip)
    r = subprocess.run([sys.executable, "-m", "eval.rank", "--checkpoint", trained["vhred"], "--max-contexts", "8",
                        "--iw-samples", "2", "--device", "cpu"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["contexts"] == 8 and set(res["metrics"]) == {"pmi", "ll"}
    with open(os.path.join(trained["vhred"], "rank-test-first8.json")) as f:   # never over a split's rank-test.json
        assert json.load(f)["metrics"] == res["metrics"]
    # the same ranks worked out here, pair by pair, from vhred.scoring's scores (K = 2, seed 0)
    from vhred.sources import split_dialogues
    from vhred.render import encode_turns
    from vhred.rank import context_triples
    from vhred.scoring import score_ids
    model, cfg, sp = loading.load_model(trained["vhred"])
    triples = context_triples(split_dialogues(cfg, "test"), cfg.max_context)
    sets = candidate_sets(triples, 9, 0)[:8]
    for kind in ("pmi", "ll"):
        ranks = []
        for (context, _, _), cands in zip(triples, sets):
            ctx = encode_turns(sp, context, cfg.max_utt_len, cfg.max_context)
            scores = score_ids(model, [ctx] * 10, [sp.encode(c)[:cfg.max_utt_len] for c in cands], kind, 2, 0)
            ranks.append(1 + sum(s > scores[0] for s in scores[1:]))
        want = {"recall@1": sum(r == 1 for r in ranks) / 8, "recall@2": sum(r <= 2 for r in ranks) / 8,
                "mrr": sum(1 / r for r in ranks) / 8}
        assert res["metrics"][kind] == pytest.approx(want, abs=1e-9), (kind, ranks)


def test_dialogwae_seen_targets_are_the_training_splits_own_exchanges():
    train = [["Hi!", "Hello, how can I help?", "A table for two."], ["Good morning.", "Morning!"]]
    pairs = dw.targets([["HI !", "hello , how can i help ?", "Two, please.", "Bye."], ["Good evening.", "x"]])
    # compared as their tokens (case and spacing aside); the opening after no turn as well
    assert dw.seen_in_training(train, pairs) == [True, True, False, False]
    assert dw.seen_in_training(train, [(["A table for two."], "Hi!")]) == [False]   # the reply, after another turn


def test_dialogwae_unseen_and_seen_scores_are_the_scores_of_each_part_alone():
    hit, miss, ref = ["i", "am", "fine", "</s>"], ["no", "</s>"], ["i", "am", "fine", "</s>"]
    responses, refs = [[hit, miss], [miss, miss], [hit, hit]], [ref, ref, ref]
    u = dw.overlap_scores(responses, refs, [True, False, False])
    alone = dw.scores(responses[1:], refs[1:])
    assert u["unseen_contexts"] == 2 and u["unseen-bleu-f1"] == pytest.approx(alone["bleu-f1"])
    assert u["unseen-bleu-recall"] == pytest.approx((dw.bleu(miss, ref) + dw.bleu(hit, ref)) / 2)
    assert u["seen_contexts"] == 1 and u["seen-bleu-recall"] == pytest.approx(dw.bleu(hit, ref))
    assert u["seen-bleu-precision"] == pytest.approx((dw.bleu(hit, ref) + dw.bleu(miss, ref)) / 2)
    assert dw.overlap_scores(responses, refs, [True] * 3)["unseen_contexts"] == 0
    assert "unseen-bleu-f1" not in dw.overlap_scores(responses, refs, [True] * 3)
    assert dw.bleu(ref, ref) > 1.0   # method7: an exact copy scores above 1, so recall can too


def test_nearest_neighbour_answers_a_training_turn_with_its_reply():
    from vhred.nearest import Index
    train = [["Hi!", "Hello, how can I help?", "I'd like a table for two."],
             ["Hi!", "Good morning, sir.", "Morning."],
             ["Where is the station?", "Two blocks north.", "Thanks."]]
    index = Index(train, previous_weight=0.5)
    found = index.nearest([["where is the STATION"], ["Hello, how can I help?"], [""], ["nothing alike here"]], 2)
    assert found[0][0] == "Two blocks north." and found[1][0] == "I'd like a table for two."
    assert found[2] == ["Hi!", "Where is the station?"]   # a first utterance: the commonest openings
    assert len(found[3]) == 2 and len(set(found[3])) == 2   # no word in common: still k distinct replies
    # the same last turn after different turns: the turn before decides
    index = Index([["Is it far from here?", "Yes.", "Take a taxi."], ["Do you like tea?", "Yes.", "Me too."]], 0.5)
    assert index.nearest([["Do you like tea?", "Yes."], ["Is it far from here?", "Yes."]], 1) == [["Me too."], ["Take a taxi."]]
    # copies that differ only in case or spacing are one reply as scored: the next one is taken
    index = Index([["Shall we go?", "And then ?", "x"], ["Shall we go now?", "and then ?", "y"],
                   ["Shall we?", "Sure.", "z"]], 0.5)
    assert index.nearest([["Shall we go?"]], 2) == [["And then ?", "Sure."]]
    # as many replies as asked for, past the 200 most similar turns the default 10 read
    index = Index([["Shall we go?", f"Reply {i} ."] for i in range(300)], 0.5)
    assert len(index.nearest([["Shall we go?"]], 250)[0]) == 250


def test_nearest_neighbour_command_refuses_bad_counts_in_one_line():
    r = subprocess.run([sys.executable, "-m", "vhred", "nearest", "--samples", "0"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "--samples must be positive" in r.stderr and "Traceback" not in r.stderr


def test_nearest_neighbour_command_scores_the_tiny_split(dailydialog_zip, data_dir, tmp_path, monkeypatch, capsys):
    from vhred.nearest import main
    monkeypatch.setenv("DAILYDIALOG_SRC", dailydialog_zip)
    main(["--config", f"{ROOT}/configs/tiny.yaml", "--max-contexts", "40", "--out", str(tmp_path), f"data_dir={data_dir}"])
    res = json.load(open(tmp_path / "results-dialogwae-test-first40.json"))
    m = res["metrics"]
    rows = [json.loads(line) for line in open(tmp_path / "samples-dialogwae-test-first40.jsonl")]
    assert m["contexts"] == 40 == len(rows) and all(len(r["samples"]) == 10 for r in rows)
    assert m["unseen_contexts"] == sum(not r["seen_in_training"] for r in rows)
    assert m["seen_contexts"] == sum(r["seen_in_training"] for r in rows) == 40 - m["unseen_contexts"]
    out = capsys.readouterr().out
    assert 0 < m["bleu-precision"] <= m["bleu-recall"] and "unseen-bleu-f1" in out and "| seen_contexts" in out


@pytest.mark.slow   # a subprocess: a command as a user runs it
def test_evaluate_command_writes_its_report(trained, dailydialog_zip, monkeypatch):
    monkeypatch.setenv("DAILYDIALOG_SRC", dailydialog_zip)
    r = subprocess.run([sys.executable, "-m", "eval.evaluate", "--checkpoint", trained["hred"], "--max-contexts", "12",
                        "--num-samples", "3", "--iw-samples", "2", "--device", "cpu", "--method", "greedy"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    res = json.load(open(f"{trained['hred']}/results-ours-test-first12.json"))
    m = res["metrics"]
    assert m["contexts"] == 12
    hred_rows = [json.loads(line) for line in open(f"{trained['hred']}/samples-ours-test-first12.jsonl")]
    # HRED's greedy reply is one per context once repeats are dropped: its mean BLEU (precision)
    # is its max BLEU (recall), and F1 their harmonic mean
    assert len(hred_rows) == 12 and all(len(row["samples"]) == 1 for row in hred_rows)
    for n in (1, 2):
        p, rc = m[f"bleu-{n}-precision"], m[f"bleu-{n}-recall"]
        assert p == pytest.approx(rc) and m[f"bleu-{n}-f1"] == pytest.approx(p if p else 0.0)
    assert res["decoding"]["rank"] == "mmi" and res["decoding"]["method"] == "greedy"   # the chat's ranking, as asked
    assert '"rank": "mmi"' in r.stdout.split("Decoding: ")[1] and '"rank": "auto"' in r.stdout   # the report names it
    r = subprocess.run([sys.executable, "-m", "eval.evaluate", "--checkpoint", trained["vhred"], "--max-contexts", "12",
                        "--protocol", "dialogwae", "--iw-samples", "0", "--device", "cpu"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    dw_res = json.load(open(f"{trained['vhred']}/results-dialogwae-test-first12.json"))
    assert dw_res["decoding"] | {"seed": 0} == {**dw_res["decoding"], "num_samples": 10, "method": "greedy",
                                                "max_len": 40, "dedup": False, "rank": "none"}
    rows = [json.loads(line) for line in open(f"{trained['vhred']}/samples-dialogwae-test-first12.jsonl")]
    assert len(rows) == 12 and rows[0]["context"] == [""] and all(len(x["samples"]) == 10 for x in rows)
    dw = dw_res["metrics"]   # ten replies per context: the mean is below the max unless all tie
    # the surface faults are the shown text's, where glued marks are mended; the model's own are flagged
    flags = [g for x in rows for g in x["glued"]]
    assert len(flags) == 120 and dw["glued_before_text_out_share"] == pytest.approx(sum(flags) / 120)
    assert dw["glued_share"] == 0
    p, rc = dw["bleu-precision"], dw["bleu-recall"]
    assert p <= rc and dw["bleu-f1"] == pytest.approx(2 * p * rc / (p + rc + 1e-11))
    assert set(dw) >= {"intra-dist-1", "intra-dist-2", "inter-dist-1", "inter-dist-2", "length", "unseen_contexts"}
    assert dw["unseen_contexts"] == sum(not x["seen_in_training"] for x in rows)
    # HRED has no latent: the importance-weighted bound is its exact likelihood
    assert res["metrics"]["iw2_nll_per_token"] == pytest.approx(res["metrics"]["elbo_nll_per_token"], rel=1e-5)


def test_z_temperature_zero_decodes_one_reply_per_context_and_one_is_the_prior(trained, capsys):
    """eval.z_temperature: at s = 0 every reply of a context comes from the prior's mean, so the
    ten greedy replies are one (recall = precision); at s = 1 the figures are vhred eval's own."""
    from eval import z_temperature
    z_temperature.main(["--checkpoint", trained["vhred"], "--scales", "0", "1", "--max-contexts", "8"])
    table = capsys.readouterr().out.strip().splitlines()[-4:]
    assert table[0].startswith("| s | BLEU R / P / F1")
    rows = [json.loads(line) for line in open(f"{trained['vhred']}/samples-dialogwae-test-zs0.jsonl")]
    assert len(rows) == 8 and all(len(set(r["samples"])) == 1 for r in rows)
    at0 = json.load(open(f"{trained['vhred']}/results-dialogwae-test-zs0.json"))["metrics"]
    assert at0["bleu-recall"] == pytest.approx(at0["bleu-precision"])
    at1 = json.load(open(f"{trained['vhred']}/results-dialogwae-test-zs1.json"))["metrics"]
    subprocess.run([sys.executable, "-m", "vhred.evaluate", "--checkpoint", trained["vhred"], "--protocol", "dialogwae",
                    "--iw-samples", "0", "--max-contexts", "8", "--tag", "plain", "--device", "cpu"], cwd=ROOT, check=True,
                   capture_output=True)
    plain = json.load(open(f"{trained['vhred']}/results-dialogwae-test-plain.json"))["metrics"]
    assert at1["bleu-f1"] == plain["bleu-f1"] and at1["inter-dist-2"] == plain["inter-dist-2"]
    assert table[-1].startswith("| 1 | ") and f"{at1['bleu-f1']:.3f} |" in table[-1]
    with pytest.raises(SystemExit):
        z_temperature.main(["--checkpoint", trained["vhred"], "--scales", "-1"])


def test_exemplar_z_is_the_posterior_mean_of_the_training_batch(vhred_model):
    """eval.exemplar_z reads an exemplar reply as training reads a target: its z equals the
    posterior mean that model.targets() and model.posterior() give for the dialogue (context, reply)."""
    import torch
    from eval.exemplar_z import exemplar_z
    from vhred.dataset import collate
    model, cfg, sp = vhred_model
    model.eval()
    context = [sp.encode("hi , how are you ?"), sp.encode("fine , thanks . and you ?")]
    replies = [sp.encode("not bad ."), sp.encode("i am tired , i worked all day .")]
    z = exemplar_z(model, context, replies)
    assert z.shape == (2, model.z_dim)
    with torch.inference_mode():
        for reply, row in zip(replies, z):
            b = collate([context + [reply]])
            enc, ctx, _, _ = model.targets(b.tokens, b.lens, b.turns)   # one row per turn after the first
            mean, _ = model.posterior(ctx[-1:], enc[-1:])
            assert torch.allclose(row, mean[0].float(), atol=1e-5)
    assert not torch.allclose(z[0], z[1])   # two replies, two latents


def contexts_file(path, contexts: list[list[str]]):
    """A JSONL file of contexts, as vhred generate reads them."""
    path.write_text("".join(json.dumps({"context": c}) + "\n" for c in contexts))
    return path


def chat_rows(run: str, src, out, *flags: str) -> list[dict]:
    """vhred generate's rows for a contexts file: the chat's five for each, as a user gets them."""
    subprocess.run([sys.executable, "-m", "vhred.generate", "--checkpoint", run, "--input", str(src),
                    "--output", str(out), "--num-samples", "5", "--device", "cpu", *flags],
                   cwd=ROOT, check=True, capture_output=True)
    return [json.loads(line) for line in open(out)]


def test_exemplar_z_without_exemplars_shows_what_generate_shows(trained, tmp_path):
    """--exemplars 0 pools the prior's draws alone: the chat's own five (vhred.generate), in order;
    with exemplars, each line says which shown replies only the exemplars' z drew."""
    from eval import exemplar_z
    contexts = [["Hi , how are you ?"], ["Can I help you ?", "Yes , I want a coat ."], ["What time is it ?"]]
    src = contexts_file(tmp_path / "contexts.jsonl", contexts)
    exemplar_z.main(["--checkpoint", trained["vhred"], "--input", str(src), "--output", str(tmp_path / "x0.jsonl"),
                     "--exemplars", "0"])
    chat = chat_rows(trained["vhred"], src, tmp_path / "n.jsonl")
    ours = [json.loads(line) for line in open(tmp_path / "x0.jsonl")]
    assert [r["samples"] for r in ours] == [r["samples"] for r in chat]
    exemplar_z.main(["--checkpoint", trained["vhred"], "--input", str(src), "--output", str(tmp_path / "x.jsonl"),
                     "--exemplars", "6", "--show-exemplars"])
    rows = [json.loads(line) for line in open(tmp_path / "x.jsonl")]
    for r, c in zip(rows, contexts):
        assert r["context"] == c and 1 <= len(r["samples"]) <= 5 and len(r["from_exemplar"]) == len(r["samples"])
        assert len(r["exemplars"]) == 6 and 0 <= sum(r["from_exemplar"]) <= r["new_replies"] <= 6


def test_pooled_draws_of_one_model_twice_are_its_chat_at_half_the_draws(trained, tmp_path, capsys):
    """eval.pooled_draws: a model pooled with itself draws the same replies twice, so the shown five
    are vhred.generate's at 8 draws per reply (half of 16) and none is the second model's alone; with
    HRED second, each line says which replies only HRED drew; runs with different tokenizers are refused."""
    import shutil
    from eval import pooled_draws
    contexts = [["Hi , how are you ?"], ["Can I help you ?", "Yes , I want a coat ."], ["What time is it ?"]]
    src = contexts_file(tmp_path / "contexts.jsonl", contexts)
    pooled_draws.main(["--checkpoint", trained["vhred"], "--second", trained["vhred"], "--input", str(src),
                       "--output", str(tmp_path / "self.jsonl")])
    chat = chat_rows(trained["vhred"], src, tmp_path / "n.jsonl", "--draws", "8")
    ours = [json.loads(line) for line in open(tmp_path / "self.jsonl")]
    assert [r["samples"] for r in ours] == [r["samples"] for r in chat]
    assert not any(f for r in ours for f in r["from_second"])
    pooled_draws.main(["--checkpoint", trained["vhred"], "--second", trained["vhred"], "--committee", "--input",
                       str(src), "--output", str(tmp_path / "both.jsonl")])   # two equal judges: twice the score
    both = [json.loads(line) for line in open(tmp_path / "both.jsonl")]
    assert [r["samples"] for r in both] == [r["samples"] for r in ours]
    assert [s for r in both for s in r["scores"]] == pytest.approx([2 * s for r in ours for s in r["scores"]], abs=2e-4)
    pooled_draws.main(["--checkpoint", trained["vhred"], "--second", trained["hred"], "--input", str(src),
                       "--output", str(tmp_path / "mixed.jsonl")])
    mixed = [json.loads(line) for line in open(tmp_path / "mixed.jsonl")]
    assert [r["context"] for r in mixed] == contexts
    assert all(1 <= len(r["samples"]) <= 5 and len(r["from_second"]) == len(r["samples"]) for r in mixed)
    other = tmp_path / "other"
    shutil.copytree(trained["hred"], other)
    (other / "tokenizer.model").write_bytes(b"another tokenizer")
    with pytest.raises(SystemExit) as refused:
        pooled_draws.main(["--checkpoint", trained["vhred"], "--second", str(other), "--input", str(src),
                           "--output", str(tmp_path / "x.jsonl")])
    assert refused.value.code == 2 and "different tokenizers" in capsys.readouterr().err


def test_answer_steering_biases_the_pieces_of_typical_answer_words_only_after_a_wh_question():
    """eval.answer_steering's bias: w x the pmi of the word a piece starts, for the wh-phrase the
    turn asks; digits count as <num>; pieces inside a word and turns without a wh-question get 0."""
    from eval.answer_steering import bias, piece_words

    class Pieces:
        pieces = ["<pad>", "\u2581o'clock", "\u25817", "7", "\u2581Time", "\u2581time", "\u2581tea"]
        def get_piece_size(self):
            return len(self.pieces)
        def id_to_piece(self, i):
            return self.pieces[i]

    words = piece_words(Pieces())
    assert words == [None, "o'clock", "<num>", None, "time", "time", "tea"]
    table = {"asked": {"what time": 40, "what": 90}, "pmi": {"what time": {"<num>": 2.0, "o'clock": 1.5},
                                                             "what": {"tea": 1.0}}}
    assert bias(table, words, "What time is it ?", 0.5).tolist() == [0, 0.75, 1.0, 0, 0, 0, 0]
    assert bias(table, words, "What is that ?", 2).tolist() == [0, 0, 0, 0, 0, 0, 2.0]
    assert not bias(table, words, "I like it .", 1).any()


def test_answer_steering_adds_steered_draws_and_leaves_other_turns_as_the_chat_shows_them(trained, tmp_path):
    """The Steered model decodes as the model does with a zero bias and puts a strongly favoured
    piece into every draw; contexts without a wh-question show the chat's own five (vhred.generate),
    and one with a wh-question shows the five of both sets of draws."""
    import torch
    from eval import answer_steering
    from vhred import answers
    from vhred.candidates import generate
    from vhred.decoding import DecodeOptions
    model, cfg, sp = loading.load_model(trained["vhred"])
    ids = [sp.encode("hi , how are you ?")]
    opts = DecodeOptions(num_samples=6, rank="none", dedup=False)
    zero = torch.zeros(sp.get_piece_size())
    assert [r[0] for r in generate(answer_steering.Steered(model, zero), [ids], opts)[0]] == \
        [r[0] for r in generate(model, [ids], opts)[0]]
    word = sp.piece_to_id("\u2581you")
    forced = zero.clone()
    forced[word] = 50.0
    assert all(word in r[0] for r in generate(answer_steering.Steered(model, forced), [ids], opts)[0])
    contexts = [["I like tea ."], ["Can I help you ?", "Yes , I want a coat ."]]   # no wh-question
    src = contexts_file(tmp_path / "contexts.jsonl", contexts)
    answer_steering.main(["--checkpoint", trained["vhred"], "--input", str(src), "--output", str(tmp_path / "s.jsonl"),
                          "--show-steered"])
    chat = chat_rows(trained["vhred"], src, tmp_path / "n.jsonl")
    ours = [json.loads(line) for line in open(tmp_path / "s.jsonl")]
    assert [r["samples"] for r in ours] == [r["samples"] for r in chat]
    assert not any(f for r in ours for f in r["steered"])
    table, words = answers.from_run(trained["vhred"]), answer_steering.piece_words(sp)
    assert answer_steering.bias(table, words, "What time is it ?", 0.5).any()
    contexts_file(src, [["What time is it ?"]])
    answer_steering.main(["--checkpoint", trained["vhred"], "--input", str(src), "--output", str(tmp_path / "w.jsonl"),
                          "--show-steered", "--weight", "3"])
    row = json.loads((tmp_path / "w.jsonl").read_text())
    assert 1 <= len(row["samples"]) <= 5 and len(row["steered"]) == len(row["samples"])
    assert row["new_replies"] > 0 and not any(f for r in ours for f in r["steered"]) and "new_replies" in ours[0]
    assert all(r["new_replies"] == 0 for r in ours)   # no wh-question: nothing decoded steered


@pytest.mark.parametrize("script", ["answer_steering", "pooled_draws", "exemplar_z"])
def test_eval_scripts_that_write_generates_lines_never_overwrite_their_input_or_another_file(script, trained, tmp_path,
                                                                                         capsys):
    """--output the --input file, or a file that is not generate's output, is refused with one line
    before anything is written; a missing --input leaves an earlier output as it was."""
    import importlib
    main = importlib.import_module(f"eval.{script}").main
    extra = ["--second", trained["vhred"]] if script == "pooled_draws" else []
    src = contexts_file(tmp_path / "contexts.jsonl", [["What time is it ?"]])
    kept = src.read_text()
    for out, said in [(src, "is the --input file"), (tmp_path / "config.yaml", "is not an earlier output")]:
        if out != src:
            out.write_text("lr: 0.001\n")
        before = out.read_text()
        with pytest.raises(SystemExit) as refused:
            main(["--checkpoint", trained["vhred"], "--input", str(src), "--output", str(out), *extra])
        assert refused.value.code == 2 and said in capsys.readouterr().err and out.read_text() == before
    assert src.read_text() == kept
    earlier = tmp_path / "earlier.jsonl"
    earlier.write_text('{"context": ["Hi"], "samples": ["Hello."], "scores": [0.0]}\n')
    with pytest.raises(SystemExit) as refused:
        main(["--checkpoint", trained["vhred"], "--input", str(tmp_path / "none.jsonl"), "--output", str(earlier), *extra])
    assert refused.value.code == 2 and "Hello." in earlier.read_text()


def test_evaluate_with_pooled_draws_names_each_runs_own_ranking(trained, dailydialog_zip, monkeypatch):
    """vhred eval --pool-with: the replies are the pooled chat's, and with a pool the report's ranking
    stays "auto" (each run ranks by what it has)."""
    from vhred import evaluate
    monkeypatch.setenv("DAILYDIALOG_SRC", dailydialog_zip)
    evaluate.main(["--checkpoint", trained["vhred"], "--pool-with", trained["hred"], "--max-contexts", "4",
                   "--num-samples", "3", "--iw-samples", "2", "--tag", "pool", "--device", "cpu"])
    res = json.load(open(f"{trained['vhred']}/results-ours-test-pool.json"))
    rows = [json.loads(line) for line in open(f"{trained['vhred']}/samples-ours-test-pool.jsonl")]
    assert res["decoding"]["rank"] == "auto" and len(rows) == 4 and all(1 <= len(r["samples"]) <= 3 for r in rows)


def test_a_judge_only_copy_of_the_model_ranks_as_the_model_alone(trained, vhred_model):
    """eval.pooled_draws --judge-only: every draw the first model's; a copy of it as the judge
    doubles each score, so the shown replies are the chat's own."""
    from eval.pooled_draws import pooled
    from vhred.candidates import candidates, same_reply, shown_filter
    from vhred.decoding import DecodeOptions
    from vhred.render import encode_turns
    model, cfg, sp = vhred_model
    opts = DecodeOptions()
    for turns in (["Hi , how are you ?"], ["Can I help you ?", "Yes , I want a coat ."]):
        shown, from_second = pooled(model, model, cfg, sp, turns, opts, judge_only=True)
        ids = encode_turns(sp, turns, cfg.max_utt_len, cfg.max_context)
        [chat] = candidates(model, [ids], opts, same=same_reply(sp), keep=shown_filter(sp, cfg, opts))
        assert [r[0] for r in shown] == [r[0] for r in chat] and not any(from_second)
        assert [r[1] for r in shown] == pytest.approx([2 * r[1] for r in chat], abs=2e-4)


@pytest.mark.parametrize("module, argv", [
    ("eval.dialogwae_codes", ["--checkpoint", "no-such-run"]),
    ("eval.backward_ranking", ["rank", "--backward", "no-such-run", "--round", "no-such-round"]),
    ("eval.adversarial", ["--checkpoint", "no-such-run", "--no-http", "--out", "/nonexistent-folder/a.json"]),
])
def test_the_eval_scripts_say_a_missing_file_in_one_line(module, argv, capsys, tmp_path, monkeypatch):
    import importlib
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        importlib.import_module(module).main(argv)
    err = capsys.readouterr().err
    assert stop.value.code in (1, 2) and err.startswith("error: ") and err.count("\n") == 1, err


def test_a_second_report_under_one_name_with_other_settings_is_refused_before_the_work(trained, dailydialog_zip,
                                                                                      tmp_path, monkeypatch, capsys):
    """Results are named by protocol, split and tag: eval of last.pt after best.pt, or another
    --seed, replaced the first figures without a word. The same settings again replace them."""
    import shutil
    from vhred import evaluate, nearest, rank
    monkeypatch.setenv("DAILYDIALOG_SRC", dailydialog_zip)
    run = str(tmp_path / "run")
    shutil.copytree(trained["hred"], run)
    quick = ["--max-contexts", "2", "--num-samples", "1", "--iw-samples", "0", "--method", "greedy", "--device", "cpu"]
    evaluate.main(["--checkpoint", run, *quick])
    report = os.path.join(run, "results-ours-test-first2.json")
    before = open(report).read()
    for argv, said in ((["--checkpoint", os.path.join(run, "last.pt"), *quick], "checkpoint file 'best.pt' there, 'last.pt' now"),
                       (["--checkpoint", run, *quick, "--seed", "3"], "seed 0 there, 3 now")):
        with pytest.raises(SystemExit) as e:
            evaluate.main(argv)
        assert e.value.code == 2 and open(report).read() == before
    with pytest.raises(InputError, match=f"{report} holds the figures of other settings \\(seed 0 there, 3 now\\): "
                                         "give --tag NAME to keep both"):
        evaluate.check_replaces_its_own(report, os.path.join(run, "best.pt"), {**json.load(open(report))["settings"],
                                                                               "seed": 3}, "give --tag NAME to keep both")
    evaluate.main(["--checkpoint", os.path.join(run, "best.pt"), *quick, "--device", "auto"])   # the same figures: replaced
    evaluate.main(["--checkpoint", os.path.join(run, "last.pt"), *quick, "--tag", "last"])   # both kept
    assert json.load(open(report))["checkpoint"].endswith("best.pt")
    assert json.load(open(os.path.join(run, "results-ours-test-last.json")))["checkpoint"].endswith("last.pt")
    rank.main(["--checkpoint", run, "--max-contexts", "2", "--iw-samples", "1", "--device", "cpu"])
    with pytest.raises(SystemExit):
        rank.main(["--checkpoint", run, "--max-contexts", "2", "--iw-samples", "1", "--distractors", "4"])
    assert "rank-test-first2.json holds the figures of other settings (distractors 9 there, 4 now)" in capsys.readouterr().err
    out = str(tmp_path / "nearest")
    args = ["--config", f"{ROOT}/configs/tiny.yaml", "--max-contexts", "3", "--out", out, f"data_dir={tmp_path / 'data'}"]
    nearest.main(args)
    with pytest.raises(InputError, match="give another --out to keep both"):
        nearest.parse_args([*args, "--samples", "2"])
