"""Decoding and chat: seeds, diversity, decoding rules, the generate and chat commands."""
import json
import math
import re
import shutil
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch

from tests.conftest import ROOT
from vhred.chat import spaced
from vhred.candidates import generate
from vhred.decoding import categorical, DecodeOptions, filter_logits
from vhred.render import encode_turns, pretty, response_text
from vhred.candidates import score
from vhred.scoring import RANK_SAMPLES, score_ids


def contexts(sp, cfg):
    turns = [["Hello , how are you ?"], ["Can I help you ?", "Yes , I want a ticket to London ."]]
    return [encode_turns(sp, t, cfg.max_utt_len, cfg.max_context) for t in turns]


def sampled(**kw):
    """Words sampled (not the greedy default), every response kept, in decoding order."""
    return DecodeOptions(**{"method": "sample", "dedup": False, "rank": "none", **kw})


def texts(sp, results):
    return [[sp.decode(ids) for ids, _ in r] for r in results]


def test_same_seed_same_samples_and_other_seeds_differ(vhred_model):
    model, cfg, sp = vhred_model
    ctx = contexts(sp, cfg)
    a = texts(sp, generate(model, ctx, sampled(num_samples=10, seed=7)))
    assert a == texts(sp, generate(model, ctx, sampled(num_samples=10, seed=7)))
    assert a != texts(sp, generate(model, ctx, sampled(num_samples=10, seed=8)))
    assert len(a) == 2 and all(len(r) == 10 for r in a)


def test_vhred_gives_distinct_responses_where_hred_greedy_gives_one(vhred_model, hred_model):
    model, cfg, sp = vhred_model
    samples = texts(sp, generate(model, contexts(sp, cfg), sampled(num_samples=10)))
    assert all(len(set(r)) > 1 for r in samples)
    # greedy decoding with z from the prior: only z varies between samples, and it still matters
    greedy_z = texts(sp, generate(model, contexts(sp, cfg), DecodeOptions(num_samples=10, method="greedy", dedup=False)))
    assert any(len(set(r)) > 1 for r in greedy_z)
    model, cfg, sp = hred_model
    hred = texts(sp, generate(model, contexts(sp, cfg), DecodeOptions(num_samples=10, method="greedy", dedup=False)))
    assert all(len(set(r)) == 1 for r in hred)


def test_top_k_one_equals_greedy(vhred_model):
    model, cfg, sp = vhred_model
    ctx = contexts(sp, cfg)
    greedy = texts(sp, generate(model, ctx, DecodeOptions(num_samples=4, method="greedy", dedup=False, seed=3, rank="none")))
    top1 = texts(sp, generate(model, ctx, sampled(num_samples=4, top_k=1, temperature=1.7, seed=3)))
    assert greedy == top1
    for tiny in ({"temperature": 1e-300}, {"top_p": 1e-300}):   # in range, below float32: was NaN, then a crash
        assert texts(sp, generate(model, ctx, sampled(num_samples=4, seed=3, **tiny))) == greedy


def test_top_p_keeps_the_nucleus_of_a_hand_made_distribution():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = torch.isfinite(filter_logits(probs.log(), top_p=0.8))
    assert kept.tolist() == [[True, True, False, False]]          # 0.5 + 0.3 reaches 0.8
    kept = torch.isfinite(filter_logits(probs.log(), top_p=0.81))
    assert kept.tolist() == [[True, True, True, False]]
    kept = torch.isfinite(filter_logits(probs.log(), top_p=0.1))
    assert kept.tolist() == [[True, False, False, False]]         # the top token always stays
    shuffled = torch.tensor([[0.15, 0.5, 0.05, 0.3]])
    assert torch.isfinite(filter_logits(shuffled.log(), top_p=0.8)).tolist() == [[False, True, False, True]]
    assert torch.isfinite(filter_logits(shuffled.log(), top_k=2)).tolist() == [[False, True, False, True]]


def test_categorical_draws_follow_the_probabilities():
    """The inverse-CDF sampler against the distribution itself: frequencies within 4 standard
    errors over 200,000 draws, never a token of probability 0, the same draws for the same
    uniforms."""
    probs = torch.tensor([0.0, 0.5, 0.3, 0.0, 0.15, 0.05, 0.0])
    n = 200_000
    rows = (probs * 3).expand(n, -1)                       # unnormalised rows work too
    u = torch.rand(n, generator=torch.Generator().manual_seed(0))
    draws = categorical(rows, u)
    freq = torch.bincount(draws, minlength=len(probs)).double() / n
    se = (probs.double() * (1 - probs.double()) / n).sqrt()
    assert (freq[probs == 0] == 0).all()
    assert ((freq - probs.double()).abs() <= 4 * se + 1e-12).all(), freq
    assert torch.equal(categorical(rows[:100], u[:100]), draws[:100])
    one_hot = torch.zeros(3, 5).index_fill_(1, torch.tensor([4]), 1.0)   # the last token only
    assert categorical(one_hot, torch.tensor([0.0, 0.5, 1 - 1e-7])).tolist() == [4, 4, 4]


@pytest.mark.parametrize("opts", [sampled(num_samples=6, seed=5),
                                  DecodeOptions(num_samples=6, seed=5, dedup=False, rank="none"),
                                  DecodeOptions(num_samples=3, seed=5, method="beam", beam=3, rank="none")],
                         ids=["sample", "greedy-per-z", "beam-per-z"])
def test_a_contexts_samples_do_not_depend_on_its_batch(vhred_model, opts):
    """Alone, first or last in a batch, beside contexts of other lengths: the same responses."""
    model, cfg, sp = vhred_model
    ctx = contexts(sp, cfg)
    other = encode_turns(sp, ["Good morning , sir .", "What would you like ?", "Tea , please ."],
                         cfg.max_utt_len, cfg.max_context)
    def same(a, b):   # the same tokens; scores equal up to float rounding of another batch shape
        return [i for i, _ in a] == [i for i, _ in b] and [s for _, s in a] == pytest.approx([s for _, s in b], abs=1e-4)
    alone = generate(model, [ctx[1]], opts)[0]
    assert same(generate(model, [ctx[0], other, ctx[1]], opts)[2], alone)
    assert same(generate(model, [ctx[1], ctx[0]], opts)[0], alone)
    assert not same(generate(model, [ctx[0]], opts)[0], alone)


def test_scores_do_not_depend_on_the_batch(vhred_model):
    model, cfg, sp = vhred_model
    ctx = contexts(sp, cfg)
    a, b = sp.encode("Yes , here you are ."), sp.encode("I like green tea .")
    both = score_ids(model, [ctx[0], ctx[1]], [a, b], "pmi")
    assert score_ids(model, [ctx[1]], [b], "pmi") == pytest.approx([both[1]], abs=1e-5)


def test_pmi_prefers_the_relevant_reply(vhred_model, hred_model):
    """A made-up pair on the tiny trained model: the reply that answers the context scores above
    one that belongs elsewhere, by PMI, for VHRED and HRED."""
    history = ["Can I help you ?", "Yes , I'm looking for a jacket ."]   # a shop, on DailyDialog and the stand-in
    good, bad = "What size do you want ?", "Happy birthday , my dear friend !"
    for model, cfg, sp in (vhred_model, hred_model):
        s_good, s_bad = score(model, sp, cfg, history, [good, bad], rank="pmi")
        assert s_good > s_bad
    model, cfg, sp = vhred_model
    assert score(model, sp, cfg, history, []) == []
    assert len(score(model, sp, cfg, [], [good], rank="ll")) == 1    # no history: the neutral context


def test_beam_dedup_and_rank(vhred_model, hred_model):
    model, cfg, sp = hred_model
    beams = generate(model, contexts(sp, cfg), DecodeOptions(num_samples=3, method="beam", beam=4))
    for r in beams:
        assert len(r) == 3 and len({tuple(i) for i, _ in r}) == 3
        assert [s for _, s in r] == sorted((s for _, s in r), reverse=True)
    model, cfg, sp = vhred_model
    ctx = contexts(sp, cfg)
    for rank in ("pmi", "ll"):
        r = generate(model, ctx, sampled(num_samples=20, top_k=2, dedup=True, rank=rank))
        for row in r:
            assert len({tuple(i) for i, _ in row}) == len(row)
            assert [s for _, s in row] == sorted((s for _, s in row), reverse=True)
        ids = [i for i, _ in r[1]]   # the ranking scores are scoring's own
        assert [s for _, s in r[1]] == pytest.approx(score_ids(model, [ctx[1]] * len(ids), ids, rank, RANK_SAMPLES),
                                                     abs=1e-5)
    assert DecodeOptions(rank=True).check().rank == "pmi" and DecodeOptions(rank=False).check().rank == "none"


def test_a_model_whose_words_are_nan_is_one_line_error_not_an_index_error(vhred_model, monkeypatch):
    """Finite weights can still give NaN probabilities (a run that diverged writes last.pt):
    beam search then finishes no reply, which is said in one line."""
    from vhred.errors import CheckpointError
    model, cfg, sp = vhred_model
    real = type(model).decode

    def nan_words(self, *args):
        logits, state = real(self, *args)
        return logits * float("nan"), state
    monkeypatch.setattr(type(model), "decode", nan_words)
    with pytest.raises(CheckpointError, match="word probabilities are not finite .*lower lr="):
        generate(model, contexts(sp, cfg), DecodeOptions(num_samples=2, rank="none"))


@pytest.mark.slow   # a subprocess: a command as a user runs it
def test_generate_command_on_a_file(trained, tmp_path):
    src = tmp_path / "contexts.jsonl"
    src.write_text(json.dumps({"context": ["Hi !", "Hello , what can I do for you ?"]}) + "\n"
                   + json.dumps({"context": ["Where is the bank ?"]}) + "\n")
    out = tmp_path / "samples.jsonl"
    cmd = [sys.executable, "-m", "vhred.generate", "--checkpoint", trained["vhred"], "--input", str(src),
           "--output", str(out), "--num-samples", "4", "--seed", "1", "--method", "sample", "--no-dedup", "--no-clean"]   # a tiny model: most draws are faulty
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in open(out)]
    assert rows[1]["context"] == ["Where is the bank ?"] and all(len(x["samples"]) == 4 for x in rows)
    assert all("▁" not in s and "<" not in s for x in rows for s in x["samples"])
    src.write_text('{"ctx": 1}\n')
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "line 1" in r.stderr and r.stderr.count("\n") == 1


def test_a_contexts_file_as_editors_save_it_and_a_bad_z_named_by_its_line(trained, tmp_path, capsys):
    from vhred import generate as gen
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + b'{"context": ["Hello !"]}\n')   # a byte-order mark (Notepad)
    gen.main(["--checkpoint", trained["vhred"], "--input", str(src), "--output", str(out), "--draws", "1"])
    assert json.loads(out.read_text())["context"] == ["Hello !"]
    src.write_text('{"context": ["Hi"]}\n{"context": ["Hi"], "z": [1, 2]}\n')
    with pytest.raises(SystemExit):
        gen.main(["--checkpoint", trained["vhred"], "--input", str(src), "--output", str(out)])
    assert f"{src}: line 2: a z must be 8 finite numbers" in capsys.readouterr().err


def test_an_output_that_is_the_input_file_is_refused_and_the_file_kept(trained, tmp_path, capsys):
    """Written over, the input lost the lines generate skips (the ones the user must mend) and
    every field but the context; a link to it is the same file. Written elsewhere, an answered
    line keeps the input line's other fields (an "id")."""
    from vhred import generate as gen
    src = tmp_path / "mine.jsonl"
    text = '{"context": ["hi there"]}\n{"contxt": ["typo"]}\n{"context": ["bye"], "id": 7}\n'
    src.write_text(text)
    (tmp_path / "link.jsonl").symlink_to(src)
    for out in (src, tmp_path / "link.jsonl"):
        with pytest.raises(SystemExit) as e:
            gen.main(["--checkpoint", trained["vhred"], "--input", str(src), "--output", str(out), "--draws", "1"])
        assert e.value.code == 2 and "is the --input file" in capsys.readouterr().err
    assert src.read_text() == text
    out = tmp_path / "out.jsonl"   # elsewhere: each answered line keeps its own fields
    gen.main(["--checkpoint", trained["vhred"], "--input", str(src), "--output", str(out), "--draws", "1"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["line"], r.get("id"), r["context"]) for r in rows] == [(1, None, ["hi there"]), (3, 7, ["bye"])]


def test_an_output_that_is_not_an_earlier_output_is_refused_and_kept(trained, tmp_path, capsys):
    """--output runs/x/best.pt replaced the model the command had just read (its tokenizer or
    config alike): only an earlier output of generate, or an empty file, is written over."""
    from vhred import generate as gen
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text('{"context": ["hi there"]}\n')
    run = tmp_path / "run"
    shutil.copytree(trained["vhred"], run)
    for name in ("best.pt", "tokenizer.model", "config.json"):
        before = (run / name).read_bytes()
        with pytest.raises(SystemExit) as e:
            gen.main(["--checkpoint", str(run), "--input", str(src), "--output", str(run / name), "--draws", "1"])
        assert e.value.code == 2 and "is not an earlier output of vhred generate" in capsys.readouterr().err
        assert (run / name).read_bytes() == before, name
    out.write_text("")   # an empty file, then an earlier output: replaced
    for _ in range(2):
        gen.main(["--checkpoint", str(run), "--input", str(src), "--output", str(out), "--draws", "1"])
        assert json.loads(out.read_text())["context"] == ["hi there"]
    long = " ".join(["hello there"] * 120_000)   # an earlier output whose first line is past 1 MiB: replaced
    src.write_text(json.dumps({"context": [long]}) + "\n")
    for _ in range(2):
        gen.main(["--checkpoint", str(run), "--input", str(src), "--output", str(out), "--draws", "1"])
        assert len(out.read_text()) > 1 << 20


def chat(lines, *args):
    r = subprocess.run([sys.executable, "-m", "vhred.chat", *args], cwd=ROOT, capture_output=True,
                       text=True, input="\n".join(lines) + "\n", timeout=120)
    return r.returncode, r.stdout.splitlines(), r.stderr


@pytest.mark.slow   # a subprocess: a command as a user runs it
def test_a_piped_conversation(trained):
    long_line = "tell me more " * 400   # 5,200 characters
    code, out, err = chat(["Hi , how are you ?", "Fine . Where are you going ?", "/samples 3", "",
                           "/reset", "I love it 😀🎉 ünïcödé", long_line, "/history", "😀😀 🎉", "/quit", "never read"],
                          "--checkpoint", trained["vhred"], "--num-samples", "2", "--top-p", "0.95")
    assert code == 0 and "Traceback" not in err
    turns, current = [], None
    for line in out:   # candidates are numbered from 1 within each turn
        if line.startswith("1. "):
            current = []
            turns.append(current)
        if line[:1].isdigit():
            assert line.startswith(f"{len(current) + 1}. ")
            current.append(line)
    assert len(turns) == 5
    assert all(1 <= len(t) <= 2 for t in turns[:2]) and all(1 <= len(t) <= 3 for t in turns[2:])
    assert any(len(t) == 3 for t in turns[2:])           # /samples 3 took effect
    assert "(showing 3 candidates per turn)" in err and "(conversation reset)" in err
    assert "the model reads the first" in err   # the long line was cut, with a note
    assert err.count("outside the model's vocabulary") == 1   # the turn of emoji only, not the one with words
    history = [line for line in out if line.startswith(("you: ", "bot: "))]
    assert len(history) == 4 and history[0].startswith("you: I love it 😀")   # only after /reset
    assert not any("never read" in line for line in out)
    assert all("▁" not in line and "</s>" not in line for line in out)


@pytest.mark.slow   # a subprocess: a command as a user runs it
def test_a_pipe_reads_numbered_replies_when_fewer_than_asked_are_shown(trained):
    """/keep holds z, so the draws repeat and fewer than N are shown: the one left was printed bare."""
    code, out, err = chat(["Hi , how are you ?", "/keep 1", "Where are you going ?"],
                          "--checkpoint", trained["vhred"], "--num-samples", "3")
    assert code == 0 and "shown" in err, err
    replies = [line for line in out if line and not line.startswith("(")]
    assert replies and all(re.match(r"\d\. ", line) for line in replies), out


@pytest.mark.slow   # a subprocess under a terminal: the chat as a user at a keyboard runs it
def test_json_from_a_terminal_keeps_the_prompt_off_stdout(trained):
    """With stdin a terminal, the chat prompts ("you> "); under --json the prompt goes to stderr,
    so stdout redirected to a file holds only JSON lines."""
    import os
    import pty
    master, slave = pty.openpty()
    os.write(master, b"Hello !\n\x04")   # a turn, then Ctrl-D: the terminal holds them until read
    r = subprocess.run([sys.executable, "-m", "vhred.chat", "--checkpoint", trained["vhred"], "--json",
                        "--num-samples", "2", "--draws", "1"], cwd=ROOT, stdin=slave, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(slave)
    os.close(master)
    assert r.returncode == 0 and "you> " in r.stderr and "you> " not in r.stdout
    assert [json.loads(line)["user"] for line in r.stdout.splitlines()] == ["Hello !"]


@pytest.mark.slow   # a subprocess: a command as a user runs it
def test_json_lines_and_hred(trained):
    code, out, err = chat(["Hello !", "/history", "What time is it ?"], "--checkpoint", trained["hred"], "--json")
    rows = [json.loads(line) for line in out]   # /history's lines go to stderr: stdout is JSON only
    assert "you: Hello!" in err
    assert code == 0 and [r["user"] for r in rows] == ["Hello !", "What time is it ?"]
    # HRED by default: the best of its beams, distinct, ranked; with greedy words its one reply
    assert all(1 <= len(r["responses"]) == len(set(r["responses"])) == len(r["scores"]) and r["score"] == "mmi"
               for r in rows)
    code, out, _ = chat(["Hello !"], "--checkpoint", trained["hred"], "--json", "--method", "greedy")
    assert code == 0 and len(json.loads(out[0])["responses"]) == 1


@pytest.mark.slow   # a subprocess: a command as a user runs it
def test_piped_turns_are_separated_and_history_says_when_empty(trained):
    code, out, err = chat(["/history", "Hello !", "Where is the bank ?"], "--checkpoint", trained["vhred"],
                          "--num-samples", "2", "--method", "greedy")   # two distinct replies from the tiny model
    assert code == 0 and "(the history is empty" in err
    code, _, err = chat(["/samples 100", "Hello !", "/samples 1"], "--checkpoint", trained["vhred"], "--num-samples", "1",
                        "--beam", "21")   # 100 x 21 beams: over the cap of one search
    assert code == 0 and "(num_samples x beam may be at most 2,000" in err and "(showing 1 candidate per turn)" in err
    blocks = "\n".join(out).strip("\n").split("\n\n")   # one block of candidates per turn
    assert len(blocks) == 2 and all(b.startswith("1. ") for b in blocks)


@pytest.mark.slow   # a subprocess: a command as a user runs it
def test_ctrl_c_ends_chat_with_130(trained):
    import signal
    # Ctrl-C as a terminal sends it, even where the suite itself runs with SIGINT ignored (a
    # background job of a shell): Python only handles SIGINT when it starts with it in place
    p = subprocess.Popen([sys.executable, "-m", "vhred.chat", "--checkpoint", trained["vhred"]], cwd=ROOT,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    p.stdin.write("Hello !\n")
    p.stdin.flush()
    assert p.stdout.readline().startswith("1. ")   # the chat is up and waiting for the next line
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "Traceback" not in err


@pytest.mark.slow   # subprocesses: the commands as a user starts them
@pytest.mark.parametrize("command", [["vhred.chat"], ["vhred", "chat"]])
def test_ctrl_c_while_the_chat_starts_is_one_line_too(trained, command):
    """A Ctrl-C in the seconds torch takes to import, before the command's own handling starts."""
    import signal
    p = subprocess.Popen([sys.executable, "-m", *command, "--checkpoint", trained["vhred"]], cwd=ROOT,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_until_it_catches(p.pid, signal.SIGTERM)   # vhred's start-up handlers are in place; torch is not yet
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and err == "interrupted\n", err


def _wait_until_it_catches(pid: int, sig: int, seconds: float = 30):
    """Until the process handles sig (its SigCgt mask in /proc): a fixed sleep was too short on a
    loaded machine, and the signal came while Python itself still started."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/status") as f:
            caught = int(next(line for line in f if line.startswith("SigCgt:")).split()[1], 16)
        if caught >> (sig - 1) & 1:
            return
        time.sleep(0.005)
    pytest.fail(f"process {pid} did not install its handler of signal {sig} in {seconds} s")


@pytest.mark.slow   # a subprocess: a command as a user runs it
def test_missing_checkpoint_is_one_line(tmp_path):
    code, out, err = chat(["hi"], "--checkpoint", str(tmp_path / "nope.pt"))
    assert code == 2 and out == [] and err.count("\n") == 1 and "not found" in err


@pytest.mark.parametrize("readable, corpus", [
    ("It costs $60.", "It costs $ 60 ."),
    ("I'm fine, thanks.", "I'm fine , thanks ."),
    ("It's time. You go first!", "It's time . You go first !"),
    ("Hi, how are you? Fine.", "Hi , how are you ? Fine ."),
    ("It costs 3.50 dollars, about 20% more (sorry).", "It costs 3.50 dollars , about 20 % more ( sorry ) ."),
    ("I don't know; we can't say.", "I don't know ; we can't say ."),
    ("The train leaves at 8:30, not 10:15.", "The train leaves at 8:30 , not 10:15 ."),   # not the emoticon "8:"
])
def test_detokenisation_round_trips(readable, corpus):
    """User text -> the corpus's spacing -> readable text again, with nltk at both ends."""
    assert spaced(readable) == corpus
    assert pretty(corpus) == readable


def test_the_corpus_split_contractions_read_well():
    assert pretty("I ’ m sure it ' s fine , don ' t worry . I can ' t") == "I'm sure it's fine, don't worry. I can't"
    assert pretty("time . You") == "Time. You" and pretty("$ 60") == "$60"
    assert pretty("that ' s a good idea .") == "That's a good idea."
    assert spaced("I’m here") == "I'm here"


def test_a_long_run_of_one_mark_or_of_digits_is_spaced_not_an_error(monkeypatch):
    """nltk's tokenizer ran out of memory on millions of one mark and gave up (TimeoutError) on a
    long run of digits: both are turns a user can type or put in a contexts file."""
    import nltk.tokenize.casual as casual
    assert spaced("Wow!!!!!!! really?????? ok.... ____") == "Wow ! ! ! really ? ? ? ok ... ___"   # as before
    assert spaced("!" * 6_000_000) == "! ! !" and spaced("\u2026" * 6_000_000) == "\u2026 \u2026 \u2026"
    monkeypatch.setattr(casual.redos, "DEFAULT_TIMEOUT", 0.01)   # what 50,000 digits take 5 s to reach
    digits = "call 555-1234 or " + "7" * 20_000
    assert spaced(digits) == digits


def test_a_response_cut_at_the_length_limit_is_marked(vhred_model):
    model, cfg, sp = vhred_model
    ids = sp.encode("yes , it is .")
    assert response_text(sp, ids, max_len=len(ids) + 1) == "Yes, it is."
    assert response_text(sp, ids, max_len=len(ids)) == "Yes, it is. …"
    opts = DecodeOptions(num_samples=3, max_len=2, min_len=2, rank="none")
    assert all(response_text(sp, i, opts.max_len).endswith(" …") for i, _ in generate(model, contexts(sp, cfg), opts)[0])


@pytest.mark.parametrize("method", ["greedy", "sample", "beam"])
def test_unknown_word_is_never_written(vhred_model, method, monkeypatch):
    """<unk> (a word-level vocabulary's other words) is never decoded, even where it is the
    model's most likely token."""
    from vhred.tokenizer import UNK
    model, cfg, sp = vhred_model
    decode = model.decode
    def favour_unk(token, cond, state):
        logits, state = decode(token, cond, state)
        return logits.index_add(-1, torch.tensor([UNK]), torch.full((*logits.shape[:-1], 1), 100.0)), state
    monkeypatch.setattr(model, "decode", favour_unk)
    out = generate(model, contexts(sp, cfg), DecodeOptions(method=method, num_samples=3, dedup=False, rank="none"))
    ids = [i for row in out for r, _ in row for i in r]
    assert ids and UNK not in ids


def test_the_shown_list_is_the_best_n_of_draws_times_n(vhred_model):
    """candidates() shows the first N of D x N drawn, deduplicated and ranked; D is 1 to 16."""
    from vhred.errors import InputError
    from vhred.candidates import candidates
    model, cfg, sp = vhred_model
    ctx = contexts(sp, cfg)
    for draws in (2, 8, 16):
        shown = candidates(model, ctx, DecodeOptions(num_samples=3, draws=draws))
        pool = generate(model, ctx, DecodeOptions(num_samples=3 * draws))
        assert [[ids for ids, _ in row] for row in shown] == [[ids for ids, _ in row[:3]] for row in pool]
    with pytest.raises(InputError, match="draws"):
        DecodeOptions(draws=17).check()
    with pytest.raises(InputError, match="draws"):
        DecodeOptions(draws=0).check()


def test_replies_that_differ_only_in_case_or_punctuation_are_one(vhred_model):
    """same_reply, the repeat key of the chat, generate and the API, reads the words alone."""
    from vhred.candidates import same_reply
    model, cfg, sp = vhred_model
    key = same_reply(sp)
    assert key(sp.encode("single , please .")) == key(sp.encode("Single please")) == "single please"
    assert key(sp.encode("I'm fine .")) == "i'm fine" != key(sp.encode("I'm not fine ."))


class _TwoRowDecoder:
    """A decoder of 6 tokens whose next-token distribution is fixed per row: row 0 (cond 0) ends
    with probability 0.4 after each word (word 4 otherwise), row 1 (cond 1) almost never ends."""
    embed = torch.nn.Embedding(6, 1)
    blank_ids: list[int] = []

    def decoder_state(self, cond):
        return torch.zeros(1, len(cond), 1)

    def decode(self, token, cond, state):
        probs = torch.full((len(cond), 6), 1e-9)
        probs[:, 4] = torch.where(cond[:, 0] == 0, 0.6, 1.0)
        probs[:, 3] = torch.where(cond[:, 0] == 0, 0.4, 1e-30)   # 3: <eos>, never among row 1's best
        return probs.log().unsqueeze(1), state


def test_beam_search_keeps_a_finished_row_as_it_was_alone():
    """A row is done once it has its ended responses: the rows still searched beside it (here
    one that runs to max_len) do not swap its answer for a cut-off one that scores better per
    token. Row 0 alone answers [4] (mean log p (log 0.6 + log 0.4) / 2) when it stops at the
    first ended reply; by fairseq's rule it ends [4] and [4, 4] by its third step and answers
    the better per token, [4, 4] ((2 log 0.6 + log 0.4) / 3)."""
    from vhred.decoding import beam_search
    for stop, words in (("first", [4]), ("best", [4, 4])):
        opts = DecodeOptions(beam=2, max_len=8, beam_stop=stop)
        alone, _ = beam_search(_TwoRowDecoder(), torch.tensor([[0.0]]), opts, 1)
        both, scores = beam_search(_TwoRowDecoder(), torch.tensor([[0.0], [1.0]]), opts, 1)
        assert alone == [[words]] and both[0] == [words]
        assert scores[0][0] == pytest.approx((len(words) * math.log(0.6) + math.log(0.4)) / (len(words) + 1), abs=1e-5)
        assert both[1] == [[4] * 8]   # the other row: max_len words, then <eos> forced


class _TableDecoder:
    """A decoder of 8 tokens whose next-token probabilities are a table of the words so far
    (anything else: <eos> almost surely). Tokens: 3 <eos>, 4 "A", 5 "B", 6 "C", 7 a bare "▁"."""
    embed = torch.nn.Embedding(8, 1)
    blank_ids = [7]

    def __init__(self, table):
        self.table = table

    def decoder_state(self, cond):
        return torch.zeros(1, len(cond), 0, dtype=torch.long)   # each row's words so far

    def decode(self, token, cond, state):
        state = torch.cat([state, token.unsqueeze(0)], dim=2)                # (1, R, words + 1)
        rows = []
        for words in state[0].tolist():
            probs = torch.full((8,), 1e-9)
            for w, p in self.table.get(tuple(w for w in words[1:]), {3: 1.0}).items():
                probs[w] = p
            rows.append((probs / probs.sum()).log())
        return torch.stack(rows).unsqueeze(1), state


# "A B <eos>" is likely (0.9 x 0.9 x 0.95) but "C <eos>" ends first, and "A <eos>" is among the
# 2K best candidates of the second step though not among the K best
_FIRST_ENDED = {(): {4: 0.9, 6: 0.1}, (4,): {5: 0.9, 3: 0.02, 6: 0.08}, (4, 5): {3: 0.95, 6: 0.05},
                (6,): {3: 0.9, 4: 0.1}}


@pytest.mark.parametrize("k", [1, 2, 5])
def test_beam_search_by_fairseqs_rule_answers_the_best_ended_reply(k):
    """beam_stop "best": <eos> ends a reply only among the K best candidates, and a row waits
    for its ended replies to beat the live beams. Every width answers "A B" (per token
    (2 log 0.9 + log 0.95) / 3), as greedy does; width 1 is greedy. The default stops at the
    first ended reply: "C" (ended at the second step) from width 2 on."""
    from vhred.decoding import beam_search, sample_tokens
    opts = DecodeOptions(beam=k, max_len=5, beam_stop="best")
    ids, scores = beam_search(_TableDecoder(_FIRST_ENDED), torch.zeros(1, 1), opts, 1)
    assert ids == [[[4, 5]]]
    assert scores[0][0] == pytest.approx((2 * math.log(0.9) + math.log(0.95)) / 3, abs=1e-4)
    first, _ = beam_search(_TableDecoder(_FIRST_ENDED), torch.zeros(1, 1), replace(opts, beam_stop="first"), 1)
    assert first == ([[[4, 5]]] if k == 1 else [[[6]]])   # width 1 never holds "C" to end it
    greedy, _ = sample_tokens(_TableDecoder(_FIRST_ENDED), torch.zeros(1, 1),
                              DecodeOptions(method="greedy", max_len=5), torch.zeros(1, 6))
    assert greedy == [[4, 5]]


def test_greedy_and_sampled_replies_are_scored_by_the_model_as_it_is():
    """The score is log p under the model, before <unk> and the other rules are taken out of the
    choice: here <unk> holds 0.2, so "A <eos>" scores log 0.3 + log 1, as beam search scores it."""
    from vhred.decoding import beam_search, sample_tokens
    table = {(): {3: 0.5, 1: 0.2, 4: 0.3}, (4,): {3: 1.0}}
    opts = DecodeOptions(method="greedy", max_len=3, min_len=1)
    ids, logp = sample_tokens(_TableDecoder(table), torch.zeros(1, 1), opts, torch.zeros(1, 4))
    assert ids == [[4]] and logp.item() == pytest.approx(math.log(0.3), abs=1e-4)
    _, scores = beam_search(_TableDecoder(table), torch.zeros(1, 1), replace(opts, method="beam", beam=2, beam_stop="best"), 1)
    assert scores[0][0] == pytest.approx(math.log(0.3) / 2, abs=1e-4)


@pytest.mark.parametrize("method", ["greedy", "beam", "sample"])
def test_min_len_holds_when_bare_word_boundaries_are_likely(method):
    """A bare "▁" prints nothing: when the steps left are only enough for the printing words
    min_len still needs, it is not drawn, so max_len = min_len still gives min_len words."""
    from vhred.decoding import beam_search, sample_tokens
    likes_blanks = {(): {7: 0.9, 4: 0.1}, (7,): {4: 0.5, 7: 0.5}, (4,): {7: 0.9, 5: 0.1},
                    (4, 7): {5: 0.9, 3: 0.1}}
    for max_len, min_len in ((1, 1), (2, 2), (3, 2)):
        opts = DecodeOptions(method=method, max_len=max_len, min_len=min_len, beam=2, beam_stop="best")
        if method == "beam":
            ids = beam_search(_TableDecoder(likes_blanks), torch.zeros(1, 1), opts, 1)[0][0]
        else:
            ids = sample_tokens(_TableDecoder(likes_blanks), torch.zeros(4, 1), opts,
                                torch.rand(4, max_len + 1, generator=torch.Generator().manual_seed(0)))[0]
        for reply in ids:
            assert sum(w != 7 for w in reply) >= min_len, (max_len, min_len, reply)


def test_each_distinct_context_is_encoded_once():
    """Ranking scores a context's 80 candidates one pair a row: its state is computed once and
    given to each of its rows, in the rows' order."""
    from vhred.dataset import once_per_context
    seen = []
    def encode(batch):
        seen.extend(batch)
        return torch.tensor([[float(len(c)), float(c[0][0])] for c in batch])
    rows = [[[1, 2]], [[3]], [[1, 2]], [[3], [4]], [[3]]]
    states = once_per_context(encode, rows, batch=2)
    assert seen == [[[1, 2]], [[3]], [[3], [4]]]
    assert states.tolist() == [[1, 1], [1, 3], [1, 1], [2, 3], [1, 3]]


def test_draws_pooled_with_a_copy_are_the_models_own_at_half_the_draws(trained, vhred_model, tmp_path):
    """--pool-with: a run pooled with a copy of itself draws each reply twice (the same seeds), so
    the shown five are its chat's from half as many draws, with the same z's and twice the score
    (each run's ranking score is added)."""
    from vhred import loading
    from vhred.candidates import candidates, same_reply, shown_filter
    model, cfg, sp = vhred_model
    shutil.copytree(trained["vhred"], tmp_path / "copy")   # the run itself is refused
    pooled, _, _ = loading.load_model(trained["vhred"], "cpu", [str(tmp_path / "copy")])
    ctx, keep = contexts(sp, cfg), shown_filter(sp, cfg, DecodeOptions())
    # 16 and 8 draws a reply: neither goes on to more (REFILLS) when its first hold faulty replies
    both = candidates(pooled, ctx, DecodeOptions(draws=16), same=same_reply(sp), keep=keep)
    alone = candidates(model, ctx, DecodeOptions(draws=8), same=same_reply(sp), keep=keep)
    assert [[r[0] for r in row] for row in both] == [[r[0] for r in row] for row in alone]
    assert [r[1] for row in both for r in row] == pytest.approx([2 * r[1] for row in alone for r in row], abs=1e-4)
    assert all(torch.equal(a.z, b.z) for ra, rb in zip(both, alone) for a, b in zip(ra, rb))


def test_draws_pooled_with_another_model_are_ranked_together(trained, vhred_model, hred_model):
    """VHRED pooled with HRED: half of the draws are HRED's (without a z of VHRED's), the shown ones
    come from the two models' own draws, ranked best first by the sum of both models' scores."""
    from vhred import loading
    from vhred.candidates import drawn
    model, cfg, sp = vhred_model
    pooled, _, _ = loading.load_model(trained["vhred"], "cpu", [trained["hred"]])
    ctx, opts = contexts(sp, cfg), DecodeOptions(num_samples=10, dedup=False)
    half = DecodeOptions(num_samples=5, dedup=False, rank="none")
    mine, theirs = generate(model, ctx, half), generate(hred_model[0], ctx, half)
    for c, row, m, t in zip(ctx, drawn(pooled, ctx, opts), mine, theirs):
        assert sorted(r[0] for r in row) == sorted([r[0] for r in m] + [r[0] for r in t])
        assert [r[1] for r in row] == sorted((r[1] for r in row), reverse=True)
        assert sum(r.z is None for r in row) == 5   # HRED's five
        ids = [r[0] for r in row]   # neither has a critic: each one's MMI score, added
        each = [score_ids(x, [c] * len(ids), ids, "mmi", RANK_SAMPLES, 0, opts.mmi_lambda, opts.length_bonus)
                for x in (model, hred_model[0])]
        assert [r[1] for r in row] == pytest.approx([a + b for a, b in zip(*each)], abs=1e-4)
    # a z given is this model's own: then it draws alone; a context without one (NaN) still pools
    z = torch.zeros(len(ctx), cfg.arch.z_dim)
    assert all(r.z is not None for row in drawn(pooled, ctx, opts, z) for r in row)
    z[1] = math.nan
    mixed = drawn(pooled, ctx, opts, z)
    for got, own in zip(mixed, [drawn(pooled, ctx[:1], opts, z[:1])[0], drawn(pooled, ctx[1:], opts)[0]]):
        assert [r[0] for r in got] == [r[0] for r in own] and [r[1] for r in got] == pytest.approx([r[1] for r in own], abs=1e-4)
    assert all(r.z is not None for r in mixed[0]) and sum(r.z is None for r in mixed[1]) == 5


@pytest.mark.slow   # a subprocess: a command as a user runs it
def test_pool_with_on_the_commands(trained, tmp_path):
    """generate --pool-with writes the pooled draws, ranked; --return-z with a pool is refused in one
    line; the chat pools too."""
    src = tmp_path / "contexts.jsonl"
    src.write_text(json.dumps({"context": ["Where is the bank ?"]}) + "\n")
    cmd = [sys.executable, "-m", "vhred.generate", "--checkpoint", trained["vhred"], "--input", str(src),
           "--output", str(tmp_path / "out.jsonl"), "--pool-with", trained["hred"], "--device", "cpu"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    row = json.loads(open(tmp_path / "out.jsonl").read())
    assert 1 <= len(row["samples"]) <= 5 and row["scores"] == sorted(row["scores"], reverse=True)
    r = subprocess.run(cmd + ["--return-z"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "--pool-with" in r.stderr and r.stderr.count("\n") == 1
    code, out, err = chat(["Where is the bank ?"], "--checkpoint", trained["vhred"], "--pool-with", trained["hred"])
    assert code == 0 and out[0].startswith("1. ") and "Traceback" not in err


def test_a_chat_turn_is_the_apis_reply_with_the_same_seed_and_reset_starts_afresh(trained, vhred_model):
    """docs/api.md: bot.respond is the chat's turn without the chat; the same history and seed
    give the same replies, at any turn, and after /reset as in a fresh chat."""
    import vhred
    from vhred.chat import Chat
    model, cfg, sp = vhred_model
    bot = vhred.load(trained["vhred"])
    chat = Chat(model, cfg, sp, DecodeOptions(num_samples=3, seed=7), note=lambda *_: None)
    first = chat.respond("Hi , how are you ?")
    chat.history[1] = "Fine , thanks ."   # a reply the API reads as the chat does (a tiny model's may be re-spaced)
    second = chat.respond("Where is the station ?")
    history = ["Hi , how are you ?", "Fine , thanks .", "Where is the station ?"]
    assert [c.text for c in bot.respond(history, n=3, seed=7)] == second
    chat.command("/reset")
    assert chat.respond("Hi , how are you ?") == first
    chat.command(f"/seed {2 ** 63 - 1}")   # the largest seed a turn takes, at every turn
    chat.respond("Hello .")
    assert chat.respond("Where is it ?")   # answered: the seed stays in range


def test_the_chat_keeps_no_z_of_a_pooled_runs_draw(trained, vhred_model):
    from vhred import loading
    from vhred.chat import Chat
    _, cfg, sp = vhred_model
    pooled, _, _ = loading.load_model(trained["vhred"], "cpu", [trained["hred"]])
    notes = []
    chat = Chat(pooled, cfg, sp, DecodeOptions(num_samples=5), note=notes.append)
    chat.respond("Where is the bank ?")
    theirs = [i for i, z in enumerate(chat.zs, 1) if z is None]
    mine = [i for i, z in enumerate(chat.zs, 1) if z is not None]
    assert theirs and mine   # the tiny models' shown five hold draws of both
    chat.command(f"/keep {theirs[0]}")
    assert chat.kept is None and "drawn by a pooled run" in notes[-1]
    chat.command(f"/keep {mine[0]}")
    assert torch.equal(chat.kept, chat.zs[mine[0] - 1])


def test_a_pooled_run_without_a_critic_adds_its_mmi_to_the_critics_ranking(trained, hred_model):
    """rank auto, the first run with a critic and the pooled one without: each pooled draw's score
    is the first run's critic + 2 x MMI plus the pooled run's MMI."""
    from vhred import critic, loading
    from vhred.candidates import drawn
    pooled, cfg, sp = loading.load_model(trained["vhred"], "cpu", [trained["hred"]])
    pooled.__dict__["reply_critic"] = critic.from_model(pooled, cfg.arch, turn=4).eval()
    ctx, opts = contexts(sp, cfg), DecodeOptions(num_samples=6, dedup=False)
    for c, row in zip(ctx, drawn(pooled, ctx, opts)):
        ids = [r[0] for r in row]
        mmi = [score_ids(m, [c] * len(ids), ids, "mmi", RANK_SAMPLES, 0, opts.mmi_lambda, opts.length_bonus)
               for m in (pooled, hred_model[0])]
        judged = critic.scores(pooled.reply_critic, [c] * len(ids), [critic.reply_ids(sp, pretty(sp.decode(i))) for i in ids])
        want = [j + critic.MMI_WEIGHT * a + b for j, a, b in zip(judged, *mmi)]
        assert [r[1] for r in row] == pytest.approx(want, abs=1e-4)


def test_ranking_by_critic_needs_a_critic_in_every_pooled_run(trained):
    from vhred import loading
    from vhred.errors import InputError
    from vhred.candidates import ranking
    pooled, _, _ = loading.load_model(trained["vhred"], "cpu", [trained["hred"]])
    pooled.__dict__["reply_critic"] = object()   # the first run has one, the pooled HRED not
    assert ranking(pooled, DecodeOptions()) == "critic"   # auto: each run ranks by what it has
    with pytest.raises(InputError, match="a run of --pool-with has no reply critic"):
        ranking(pooled, DecodeOptions(rank="critic"))


def test_a_pooled_run_of_another_tokenizer_is_refused(trained):
    from types import SimpleNamespace
    from vhred import loading
    from vhred.errors import CheckpointError
    another = SimpleNamespace(serialized_model_proto=lambda: b"another tokenizer")
    with pytest.raises(CheckpointError, match="tokenizer is not the model's"):
        loading._pool_member(trained["hred"], another, "cpu")


def test_history_says_how_many_turns_it_no_longer_shows_and_a_fraction_is_no_count(vhred_model):
    """The chat keeps the last max_context turns, the model's context; /history showed them as
    "the conversation so far" with the first turns silently gone. /pick 2.5 said "needs a number"."""
    from vhred.chat import Chat
    model, cfg, sp = vhred_model
    said, notes = [], []
    chat = Chat(model, cfg, sp, DecodeOptions(num_samples=2, method="greedy", draws=2), out=said.append, note=notes.append)
    turns = ["one .", "two .", "three ."]
    for i, turn in enumerate(turns):
        chat.respond(turn)
        chat.command("/history")
        dropped = max(0, 2 * (i + 1) - cfg.max_context)
        assert said[-min(2 * (i + 1), cfg.max_context):][-1].startswith("bot: ")
        assert (f"({dropped} earlier turn{'s' * (dropped > 1)} not shown: the model reads the last {cfg.max_context})"
                in notes) == (dropped > 0)
    assert cfg.max_context == 4 and said[-4] == "you: Two."
    chat.command("/reset")
    chat.command("/history")
    assert notes[-1] == "(the history is empty: nothing said yet)"
    chat.respond("hello .")
    for line, note in (("/pick 2.5", "(/pick needs a whole number, as /pick 2)"),
                       ("/samples 2.0", "(/samples needs a whole number, as /samples 2)"),
                       ("/pick two", "(/pick needs a number)"), ("/temperature warm", "(/temperature needs a number)")):
        chat.command(line)
        assert notes[-1] == note
