"""What an audit of the suite found untested: the scores' values, precision=auto's rule, a full
serving queue, the linear latent path, run folders and checkpoint files of every kind, the data
cache and the remembered data path, input checks under python -O, never-empty replies, and the
stand-in corpus the suite falls back to."""
import json
import os
import subprocess
import sys
import threading
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

import vhred
from tests.conftest import ROOT, STANDIN
from vhred import cache, checkpoint, loading, sources
from vhred.checkpoint import CheckpointError
from vhred.errors import DataError
from vhred.dataset import CACHE_FILES, DialogueData, prepare
from vhred.candidates import generate
from vhred.decoding import DecodeOptions
from vhred.render import encode_turns
from vhred.sources import spaced
from vhred.scoring import NEUTRAL, score_ids
from vhred.tokenizer import BOS, EOS

HISTORY = ["Hello, how are you?", "Fine, thanks. Where is the station?"]
REPLIES = ["Go straight ahead .", "I don't know .", "It's 25 dollars , please ."]


# --- the scores' values ------------------------------------------------------------------------

def exact_log_p(model, context: list[list[int]], reply: list[int]) -> float:
    """log p(reply | context) of an HRED, computed apart from vhred.scoring: the context state
    from the training path (model.targets on the dialogue context + reply), then the decoder one
    token at a time, summing log-softmax at each word and the final <eos>."""
    dialog = [list(u) for u in context] + [list(reply)]
    from vhred.dataset import collate
    b = collate([dialog])
    with torch.no_grad():
        _, ctx, _, _ = model.targets(b.tokens, b.lens, b.turns)
        ctx = ctx[-1:]                                                       # the reply's h_{n-1}: (1, Hc)
        state, token, total = model.decoder_state(ctx), BOS, 0.0
        for target in reply + [EOS]:
            logits, state = model.decode(torch.tensor([[token]]), ctx, state)
            total += F.log_softmax(logits[0, -1].double(), -1)[target].item()
            token = target
    return total


def encoded(sp, cfg):
    context = encode_turns(sp, [spaced(t) for t in HISTORY], cfg.max_utt_len, cfg.max_context)
    return context, [sp.encode(spaced(r)) for r in REPLIES]   # whole, as bot.score reads a reply


def test_hred_ll_is_the_exact_log_likelihood_per_predicted_token(hred_model):
    model, cfg, sp = hred_model
    context, replies = encoded(sp, cfg)
    ll = score_ids(model, [context] * len(replies), replies, "ll")
    want = [exact_log_p(model, context, r) / (len(r) + 1) for r in replies]   # words and <eos>
    assert ll == pytest.approx(want, rel=1e-4, abs=1e-5)
    # the divisor is the predicted tokens, |r| + 1: |r| alone would give other values
    assert ll != pytest.approx([exact_log_p(model, context, r) / len(r) for r in replies], rel=1e-3)


def test_pmi_is_ll_minus_the_neutral_contexts_ll_per_token(hred_model):
    model, cfg, sp = hred_model
    context, replies = encoded(sp, cfg)
    pmi = score_ids(model, [context] * len(replies), replies, "pmi")
    want = [(exact_log_p(model, context, r) - exact_log_p(model, NEUTRAL, r)) / (len(r) + 1) for r in replies]
    assert pmi == pytest.approx(want, rel=1e-4, abs=1e-5)


def test_bot_score_is_the_ranking_score_of_the_text_as_the_corpus_writes_it(trained, hred_model):
    """For HRED the likelihoods are exact: bot.score is (log p(r|c) - lambda log p(r)) / tokens
    + gamma tokens with the default ranking's lambda and gamma (MMI, DecodeOptions)."""
    from vhred.decoding import DecodeOptions
    model, cfg, sp = hred_model
    context, replies = encoded(sp, cfg)
    bot = vhred.load(trained["hred"], device="cpu")
    lam, gamma = DecodeOptions.mmi_lambda, DecodeOptions.length_bonus
    want = [(exact_log_p(model, context, r) - lam * exact_log_p(model, NEUTRAL, r)) / (len(r) + 1) + gamma * (len(r) + 1)
            for r in replies]
    assert bot.score(HISTORY, REPLIES) == pytest.approx(want, rel=1e-4, abs=1e-5)


def test_vhred_pmi_is_its_ll_minus_the_neutral_ll_with_the_same_z_samples(vhred_model):
    model, cfg, sp = vhred_model
    context, replies = encoded(sp, cfg)
    n = len(replies)
    ll = score_ids(model, [context] * n, replies, "ll", k=3, seed=4)
    neutral = score_ids(model, [NEUTRAL] * n, replies, "ll", k=3, seed=4)
    pmi = score_ids(model, [context] * n, replies, "pmi", k=3, seed=4)
    assert pmi == pytest.approx([a - b for a, b in zip(ll, neutral)], rel=1e-5, abs=1e-6)
    assert ll != pytest.approx(score_ids(model, [context] * n, replies, "ll", k=3, seed=5))   # z samples matter


# --- precision=auto ----------------------------------------------------------------------------

def test_precision_auto_is_bf16_only_on_a_bf16_gpu_from_the_threshold_batch(monkeypatch):
    from vhred.device import BF16_MIN_BATCH, use_bf16
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert not use_bf16("auto", cpu, 10 * BF16_MIN_BATCH)   # never on a CPU
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert use_bf16("auto", gpu, BF16_MIN_BATCH) and not use_bf16("auto", gpu, BF16_MIN_BATCH - 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert not use_bf16("auto", gpu, 10 * BF16_MIN_BATCH)   # a GPU without bf16
    assert use_bf16("bf16", cpu, 1) and not use_bf16("fp32", gpu, 10 * BF16_MIN_BATCH)   # asked for: as asked


# --- serving: a full queue ---------------------------------------------------------------------

def test_a_full_queue_answers_503_and_the_queued_requests_are_still_answered(trained):
    from tests.test_serve import Running, request
    from vhred.serve import Limits
    bot = vhred.load(trained["vhred"], device="cpu")
    started, release = threading.Event(), threading.Event()
    real = bot._respond_many

    def held(*args):   # the first batch holds the model until the test lets it go
        started.set()
        release.wait(30)
        return real(*args)
    bot._respond_many = held
    running = Running(bot, Limits(max_queue=1, max_batch=1, wait_ms=0))
    try:
        with __import__("concurrent.futures").futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(request, running.port, "POST", "/respond", {"history": ["Hi!"], "n": 1})
            assert started.wait(30)                     # the worker holds the first request
            second = pool.submit(request, running.port, "POST", "/respond", {"history": ["Hello!"], "n": 1})
            for _ in range(300):                        # until the second waits in the queue
                if request(running.port, "GET", "/health")[1]["served"]["waiting"] == 1:
                    break
                threading.Event().wait(0.05)
            status, out = request(running.port, "POST", "/respond", {"history": ["Hey!"], "n": 1})
            assert status == 503 and "busy" in out["error"]
            release.set()
            assert first.result(60)[0] == 200 and second.result(60)[0] == 200
    finally:
        release.set()
        running.stop()


# --- the latent path ---------------------------------------------------------------------------

def test_linear_interpolation_is_the_straight_line_with_both_ends(trained):
    from vhred.latent import interpolate
    z0, z1 = torch.tensor([1.0, -2.0, 0.0]), torch.tensor([3.0, 2.0, -4.0])
    path = interpolate(z0, z1, 5, spherical=False)
    want = torch.tensor([[1.0, -2.0, 0.0], [1.5, -1.0, -1.0], [2.0, 0.0, -2.0], [2.5, 1.0, -3.0], [3.0, 2.0, -4.0]])
    assert torch.allclose(path, want)
    bot = vhred.load(trained["vhred"], device="cpu")
    a, b = [0.0] * bot.config.arch.z_dim, [2.0] * bot.config.arch.z_dim
    replies = bot.interpolate(["Hi!"], a, b, steps=3, spherical=False)
    assert [r.z for r in replies] == [a, [1.0] * len(a), b]   # the midpoint of the line, not of the arc


# --- run folders and checkpoint files ----------------------------------------------------------

def test_a_run_folder_without_best_pt_loads_its_last_pt_and_an_empty_one_says_train_first(trained, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(open(os.path.join(trained["hred"], "last.pt"), "rb").read())
    bot = vhred.load(str(run), device="cpu")
    assert bot.checkpoint == str(run / "last.pt") and bot.respond(["Hi!"], n=1)[0].text
    (run / "last.pt").unlink()
    with pytest.raises(CheckpointError, match="holds no best.pt or last.pt; train first"):
        vhred.load(str(run))


def test_a_format_1_file_answers_through_the_api_once_upgraded_and_keeps_its_run_position(tmp_path):
    fixture = os.path.join(ROOT, "tests", "fixtures", "format1-tiny.pt")
    with pytest.raises(CheckpointError, match="cannot be verified"):
        vhred.load(fixture, device="cpu")
    path = checkpoint.upgrade(fixture, str(tmp_path / "upgraded.pt"))
    bot = vhred.load(path, device="cpu")
    assert bot.config.arch.model == "vhred" and bot.checkpoint == path
    replies = bot.respond(["Where is the station?"], n=2, seed=1)
    assert replies and all(r.text and len(r.z) == bot.config.arch.z_dim for r in replies)
    state = checkpoint.load(path)
    assert state["progress"]["step"] == 25 and set(state["progress"]) >= {"step", "best"}


def test_a_checkpoint_without_its_checksum_key_is_refused(trained, tmp_path):
    state = torch.load(os.path.join(trained["hred"], "best.pt"), weights_only=True)
    del state["checksum"]
    torch.save(state, tmp_path / "best.pt")
    with pytest.raises(CheckpointError, match="is corrupt"):
        vhred.load(str(tmp_path))


# --- the data cache and the remembered data path -----------------------------------------------

def test_a_deleted_cache_file_is_noticed_and_rebuilt(tiny_cfg):
    cfg = tiny_cfg("max_dialogues=30")
    logs = []
    folder = prepare(cfg, log=logs.append)
    before = cache.digests(folder, CACHE_FILES)
    n = len(DialogueData(folder, "validation"))
    os.remove(os.path.join(folder, "validation", "data.arrow"))
    logs.clear()
    assert prepare(cfg, log=logs.append) == folder
    assert any("unreadable" in line and "preparing it again" in line for line in logs)
    assert cache.digests(folder, CACHE_FILES) == before and len(DialogueData(folder, "validation")) == n


def test_a_jsonl_run_evaluates_from_its_remembered_path_after_the_working_folder_changes(tiny_cfg, tmp_path, monkeypatch):
    from vhred.sources import split_dialogues
    from vhred.train import train
    data = tmp_path / "mine"
    data.mkdir()
    lines = [json.dumps({"dialog": [f"hello {i} .", f"hi {i} !", "bye ."], "split": s})
             for i in range(40) for s in ["train" if i < 30 else "validation" if i < 35 else "test"]]
    (data / "talk.jsonl").write_text("\n".join(lines) + "\n")
    monkeypatch.chdir(data)
    run = train(tiny_cfg("data=talk.jsonl", "max_steps=2", "max_dialogues=0", "vocab_size=60"), log=lambda *_: None)
    _, cfg, _ = loading.load_model(run.dir)
    assert cfg.data == "talk.jsonl" and cfg.data_source == str(data / "talk.jsonl")
    monkeypatch.chdir(tmp_path)   # talk.jsonl is not here: the remembered absolute path is used
    assert split_dialogues(cfg, "test") == [[f"hello {i} .", f"hi {i} !", "bye ."] for i in range(35, 40)]
    (tmp_path / "talk.jsonl").write_text(lines[0] + "\n")   # another file of the same name here: not read
    assert split_dialogues(cfg, "test") == [[f"hello {i} .", f"hi {i} !", "bye ."] for i in range(35, 40)]
    moved = tmp_path / "moved"
    moved.mkdir()
    os.replace(data / "talk.jsonl", moved / "talk.jsonl")   # the file moved: data= from here finds it, checked
    monkeypatch.chdir(moved)
    assert split_dialogues(cfg, "test") == [[f"hello {i} .", f"hi {i} !", "bye ."] for i in range(35, 40)]
    with open(moved / "talk.jsonl", "a") as f:   # edited after training: its split is no longer training's
        f.write(json.dumps({"dialog": ["one more", "line"]}) + "\n")
    with pytest.raises(DataError, match="talk.jsonl is not the file this model trained on .* restore the file"):
        split_dialogues(cfg, "test")
    os.remove(moved / "talk.jsonl")
    with pytest.raises(DataError, match=f"{data}/talk.jsonl, the file this model trained on, is not here: put it back"):
        split_dialogues(cfg, "test")
    # trained with an absolute data=, which names the same place from every folder: the file moved
    # beside the user is found by its name, and its SHA-256 checked
    absolute = replace(cfg, data=str(data / "talk.jsonl"))
    (moved / "talk.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    with pytest.raises(DataError, match="is not here: put it back, or run from a folder that holds talk.jsonl$"):
        split_dialogues(absolute, "test")
    monkeypatch.chdir(moved)
    assert split_dialogues(absolute, "test") == [[f"hello {i} .", f"hi {i} !", "bye ."] for i in range(35, 40)]
    (moved / "talk.jsonl").write_text(lines[0] + "\n")   # another file of that name: refused, not read
    with pytest.raises(DataError, match="talk.jsonl is not the file this model trained on"):
        split_dialogues(absolute, "test")


def test_a_split_without_dialogues_is_one_line_that_names_another(tiny_cfg, tmp_path):
    """Own data with no test lines: eval and rank said ZeroDivisionError and IndexError."""
    from vhred.sources import split_dialogues
    path = tmp_path / "notest.jsonl"
    path.write_text("".join(json.dumps({"dialog": ["hi", "yo"], "split": s}) + "\n" for s in ["train", "validation"]))
    cfg = replace(tiny_cfg(f"data={path}"), data_source=str(path))
    assert split_dialogues(cfg, "validation") == [["hi", "yo"]]
    with pytest.raises(DataError, match='notest.jsonl holds no test dialogues .*: use --split validation, or give some '
                                        'lines "split": "test"'):
        split_dialogues(cfg, "test")


# --- input checks are errors, not asserts ------------------------------------------------------

def test_no_assert_statement_checks_input_in_the_package():
    import ast
    found = []
    for folder in ("vhred", "eval"):
        for root, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(root, name)
                    tree = ast.parse(open(path).read())
                    found += [f"{path}:{n.lineno}" for n in ast.walk(tree) if isinstance(n, ast.Assert)]
    assert found == []   # python -O removes them: raise a UserError instead


BAD_CONTEXTS = ['{"context": "not a list"}', '{"context": []}', '{"context": ["hi", 3]}',
                '{"context": ["hi"], "z": "nope"}', '{"context": ["hi"], "z": [1, "a"]}']
CHECK_UNDER_O = """
import sys
from eval.distinct import read_samples
from vhred.errors import InputError
from vhred.generate import read_contexts
for read, path in zip([read_contexts] * (len(sys.argv) - 2) + [read_samples], sys.argv[1:]):
    try:
        print("accepted:", len(read(path)[0]))
    except InputError as e:
        print("refused:", e)
"""


def test_bad_input_lines_are_refused_under_python_O(tmp_path):
    """python -O drops assert statements: the checks of a contexts file (vhred generate: a bad
    line is skipped and named, the good one kept) and a samples file (eval.distinct: refused)
    must hold there too. One interpreter for all the files."""
    paths = []
    for i, line in enumerate(BAD_CONTEXTS):
        paths.append(tmp_path / f"in{i}.jsonl")
        paths[-1].write_text('{"context": ["fine"]}\n' + line + "\n")
    paths.append(tmp_path / "samples.jsonl")
    paths[-1].write_text('{"samples": ["fine"]}\n{"samples": "one string"}\n')
    r = subprocess.run([sys.executable, "-O", "-c", CHECK_UNDER_O, *map(str, paths)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and len(lines) == len(paths), r.stdout + r.stderr
    assert lines[:-1] == ["accepted: 1"] * len(BAD_CONTEXTS), lines   # the bad line 2 skipped
    assert r.stderr.count(": line 2: skipped: expected") == len(BAD_CONTEXTS), r.stderr
    assert lines[-1].startswith("refused:") and ": line 2: expected" in lines[-1], lines


# --- replies are never empty -------------------------------------------------------------------

def with_logits_raised(model, bias: dict, first: dict | None = None):
    """The model with fixed amounts added to some tokens' logits at every decoder step (bias),
    and at the first step only (first: where the step's input is <bos>)."""
    real = model.decode

    def decode(inputs, cond, state):
        logits, state = real(inputs, cond, state)
        for token, amount in bias.items():
            logits[..., token] += amount
        at_start = (inputs[:, -1] == BOS).unsqueeze(-1)                      # (T, 1)
        for token, amount in (first or {}).items():
            logits[:, -1, token] += amount * at_start.squeeze(-1)
        return logits, state
    model.decode = decode
    return model


@pytest.fixture(scope="module")
def stops_at_once(trained):
    """The tiny model as an undertrained one often is: it has learned that replies end, and
    would end every one at once (<eos> far above every word)."""
    model, cfg, sp = loading.load_model(trained["vhred"])
    return with_logits_raised(model, {EOS: 1e4}), cfg, sp


@pytest.mark.parametrize("method", ["greedy", "sample", "beam"])
def test_replies_are_never_empty_unless_min_len_0_asks_for_it(stops_at_once, method):
    model, cfg, sp = stops_at_once
    contexts = [encode_turns(sp, [t], cfg.max_utt_len, cfg.max_context) for t in ("Hi !", "Where is it ?", "OK .")]
    opts = DecodeOptions(num_samples=3, method=method, rank="none", dedup=False, seed=2)
    assert opts.min_len == 1   # the default
    replies = [ids for row in generate(model, contexts, opts) for ids, _ in row]
    assert len(replies) == 9 and all(sp.decode(ids).strip() for ids in replies)
    assert all(len(ids) < opts.max_len for ids in replies)   # a word, then the end: not cut at the limit
    empty = [ids for row in generate(model, contexts, replace(opts, min_len=0)) for ids, _ in row]
    assert all(ids == [] for ids in empty)   # the model itself would answer "" every time


def test_a_blank_piece_is_not_a_word(trained):
    """"▁" alone prints nothing. With "▁" the most likely token at every step and <eos> the
    next, a reply may start with "▁" but must then print a word: never "▁" to the length limit."""
    model, cfg, sp = loading.load_model(trained["vhred"])
    blank = sp.piece_to_id("\u2581")
    assert model.blank_ids == [blank]
    model = with_logits_raised(model, {EOS: 1e4, blank: 2e4})
    contexts = [encode_turns(sp, ["Hi !"], cfg.max_utt_len, cfg.max_context)]
    for method in ("greedy", "sample", "beam"):
        ids = generate(model, contexts, DecodeOptions(num_samples=1, method=method, rank="none", max_len=6))[0][0][0]
        assert sp.decode(ids).strip() and any(i != blank for i in ids), (method, ids)
        if method != "beam":   # word by word: "▁" first, as the model wants, then a word ("▁▁" is refused)
            assert ids[0] == blank and ids[1] != blank, (method, ids)


def test_the_api_and_the_tiny_model_give_words(trained):
    bot = vhred.load(trained["hred"], device="cpu")
    for history in (["Hi!"], ["Where is the bank?"], ["How much is it?"]):
        assert all(c.text.removesuffix(" …").strip() for c in bot.respond(history, n=3, method="sample", seed=1))


# --- the stand-in corpus -----------------------------------------------------------------------

def test_the_stand_in_corpus_is_what_its_script_writes(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))
    try:
        import make_corpus
    finally:
        sys.path.pop(0)
    manifest = make_corpus.write(str(tmp_path))
    assert manifest == json.load(open(os.path.join(STANDIN, sources.STANDIN_MANIFEST)))
    for split in sources.SPLITS:
        for name in (f"dialogues_{split}.txt", f"dialogues_act_{split}.txt"):
            assert (tmp_path / split / name).read_bytes() == open(os.path.join(STANDIN, split, name), "rb").read()
    dd = sources.read_dailydialog(STANDIN)
    assert {s: len(d) for s, d in dd.items()} == manifest["sizes"]
    for split in sources.SPLITS:   # one act per utterance, as in DailyDialog
        acts = sources.read_dailydialog_acts(STANDIN, split)
        assert [len(a) for a in acts] == [len(d) for d in dd[split]]
        assert {a for row in acts for a in row} == {1, 2, 3, 4}
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(STANDIN) for f in fs)
    assert size <= 200_000


def test_the_stand_in_is_checked_against_its_own_manifest(tmp_path):
    import shutil
    copy = tmp_path / "standin"
    shutil.copytree(STANDIN, copy)
    val = copy / "validation" / "dialogues_validation.txt"
    lines = val.read_bytes().splitlines(keepends=True)
    val.write_bytes(b"".join(lines[:-1]))   # one dialogue short
    with pytest.raises(sources.DataError, match="validation split has 129 dialogues, its standin.json says 130"):
        sources.read_dailydialog(str(copy))
    val.write_bytes(b"".join(lines[:-1] + [lines[-1].replace(b" . ", b" ! ", 1)]))   # same count, other text
    with pytest.raises(sources.DataError, match="differs from the stand-in's standin.json"):
        sources.read_dailydialog(str(copy))
    (copy / sources.STANDIN_MANIFEST).write_text('{"sizes": {"train": 1}}')
    with pytest.raises(sources.DataError, match="is not a stand-in manifest"):
        sources.read_dailydialog(str(copy))
    (copy / sources.STANDIN_MANIFEST).unlink()   # without a manifest: DailyDialog's own counts
    with pytest.raises(sources.DataError, match="train split has 300 dialogues, DailyDialog has 11118"):
        sources.read_dailydialog(str(copy))
