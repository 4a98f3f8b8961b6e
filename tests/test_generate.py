"""Sampling: seeds, diversity, decoding rules, and the batch command."""
import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT
from vhred import checkpoint
from vhred.generate import DecodeOptions, categorical, encode_turns, filter_logits, generate


@pytest.fixture(scope="module")
def vhred_model(trained):
    return checkpoint.load_model(trained["vhred"])


@pytest.fixture(scope="module")
def hred_model(trained):
    return checkpoint.load_model(trained["hred"])


def contexts(sp, cfg):
    turns = [["Hello , how are you ?"], ["Can I help you ?", "Yes , I want a ticket to London ."]]
    return [encode_turns(sp, t, cfg.max_utt_len, cfg.max_context) for t in turns]


def texts(sp, results):
    return [[sp.decode(ids) for ids, _ in r] for r in results]


def test_same_seed_same_samples_and_other_seeds_differ(vhred_model):
    model, cfg, sp = vhred_model
    ctx = contexts(sp, cfg)
    a = texts(sp, generate(model, ctx, DecodeOptions(num_samples=10, seed=7)))
    assert a == texts(sp, generate(model, ctx, DecodeOptions(num_samples=10, seed=7)))
    assert a != texts(sp, generate(model, ctx, DecodeOptions(num_samples=10, seed=8)))
    assert len(a) == 2 and all(len(r) == 10 for r in a)


def test_vhred_gives_distinct_responses_where_hred_greedy_gives_one(vhred_model, hred_model):
    model, cfg, sp = vhred_model
    samples = texts(sp, generate(model, contexts(sp, cfg), DecodeOptions(num_samples=10)))
    assert all(len(set(r)) > 1 for r in samples)
    # greedy decoding with z from the prior: only z varies between samples, and it still matters
    greedy_z = texts(sp, generate(model, contexts(sp, cfg), DecodeOptions(num_samples=10, method="greedy")))
    assert any(len(set(r)) > 1 for r in greedy_z)
    model, cfg, sp = hred_model
    hred = texts(sp, generate(model, contexts(sp, cfg), DecodeOptions(num_samples=10, method="greedy")))
    assert all(len(set(r)) == 1 for r in hred)


def test_top_k_one_equals_greedy(vhred_model):
    model, cfg, sp = vhred_model
    ctx = contexts(sp, cfg)
    greedy = texts(sp, generate(model, ctx, DecodeOptions(num_samples=4, method="greedy", seed=3)))
    top1 = texts(sp, generate(model, ctx, DecodeOptions(num_samples=4, top_k=1, temperature=1.7, seed=3)))
    assert greedy == top1


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
    errors over 200,000 draws, never a token of probability 0, the same draws for the same seed."""
    probs = torch.tensor([0.0, 0.5, 0.3, 0.0, 0.15, 0.05, 0.0])
    n = 200_000
    rows = (probs * 3).expand(n, -1)                       # unnormalised rows work too
    draws = categorical(rows, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=len(probs)).double() / n
    se = (probs.double() * (1 - probs.double()) / n).sqrt()
    assert (freq[probs == 0] == 0).all()
    assert ((freq - probs.double()).abs() <= 4 * se + 1e-12).all(), freq
    again = categorical(rows[:100], torch.Generator().manual_seed(0))
    assert torch.equal(again, draws[:100])
    one_hot = torch.zeros(3, 5).index_fill_(1, torch.tensor([4]), 1.0)   # the last token only
    assert categorical(one_hot, torch.Generator().manual_seed(1)).tolist() == [4, 4, 4]


def test_beam_dedup_and_rank(vhred_model, hred_model):
    model, cfg, sp = hred_model
    beams = generate(model, contexts(sp, cfg), DecodeOptions(num_samples=3, method="beam", beam=4))
    for r in beams:
        assert len(r) == 3 and len({tuple(i) for i, _ in r}) == 3
        assert [s for _, s in r] == sorted((s for _, s in r), reverse=True)
    model, cfg, sp = vhred_model
    r = generate(model, contexts(sp, cfg), DecodeOptions(num_samples=20, top_k=2, dedup=True, rank=True))
    for row in r:
        assert len({tuple(i) for i, _ in row}) == len(row)
        assert [s for _, s in row] == sorted((s for _, s in row), reverse=True)


def test_generate_command_on_a_file(trained, tmp_path):
    src = tmp_path / "contexts.jsonl"
    src.write_text(json.dumps({"context": ["Hi !", "Hello , what can I do for you ?"]}) + "\n"
                   + json.dumps({"context": ["Where is the bank ?"]}) + "\n")
    out = tmp_path / "samples.jsonl"
    cmd = [sys.executable, "-m", "vhred.generate", "--checkpoint", trained["vhred"], "--input", str(src),
           "--output", str(out), "--num-samples", "4", "--seed", "1"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in open(out)]
    assert rows[1]["context"] == ["Where is the bank ?"] and all(len(x["samples"]) == 4 for x in rows)
    assert all("▁" not in s and "<" not in s for x in rows for s in x["samples"])
    src.write_text('{"ctx": 1}\n')
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "line 1" in r.stderr and r.stderr.count("\n") == 1
