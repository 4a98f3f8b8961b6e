"""The latent variable made visible: decoding from a given z, interpolation, the latent plot."""
import pytest
import torch

from tests.conftest import ROOT
from vhred import latent, loading
from vhred.errors import InputError
from vhred.render import encode_turns


def test_decoding_a_given_z_is_deterministic_and_z_matters(vhred_model):
    model, cfg, sp = vhred_model
    context = encode_turns(sp, ["Where is the bank ?"], cfg.max_utt_len, cfg.max_context)
    mean, logvar = (t[0] for t in latent.prior(model, [context]))
    z = mean + torch.exp(0.5 * logvar) * torch.randn(12, len(mean), generator=torch.Generator().manual_seed(0))
    first = latent.decode(model, context, z)
    assert first == latent.decode(model, context, z)                  # same z, same response
    assert [r for r, _ in latent.decode(model, context, z[3:4])] == [first[3][0]]   # alone or in a batch
    far = torch.stack([mean + 6 * torch.exp(0.5 * logvar) * s for s in (1, -1)])
    assert len({tuple(r) for r, _ in latent.decode(model, context, torch.cat([z, far]))}) > 1


def test_interpolation_endpoints_and_spherical_norms():
    z0, z1 = torch.tensor([3.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    for spherical in (False, True):
        path = latent.interpolate(z0, z1, 5, spherical=spherical)
        assert path.shape == (5, 3) and torch.allclose(path[0], z0) and torch.allclose(path[-1], z1, atol=1e-6)
    line = latent.interpolate(z0, z1, 5)
    assert torch.allclose(line[2], (z0 + z1) / 2)
    arc = latent.interpolate(z0, z1, 5, spherical=True)
    assert torch.allclose(arc.norm(dim=1), torch.linspace(3, 1, 5), atol=1e-5)   # norms move linearly
    assert arc.norm(dim=1)[2] > line.norm(dim=1)[2]                               # the line cuts inside
    torch.manual_seed(0)
    a = torch.randn(64)
    for b in (-2 * a, -2 * a + 1e-4 * torch.randn(64)):   # opposite ends: the arc blew up to norms near 6,000
        arc = latent.interpolate(a, b, 5, spherical=True)
        assert torch.allclose(arc.norm(dim=1), torch.linspace(float(a.norm()), float(b.norm()), 5), rtol=1e-4)
        assert torch.equal(arc[0], a) and torch.equal(arc[-1], b)
    quarter = latent.interpolate(z0, z1, 3, spherical=True)[1]   # halfway along a right angle: 45 degrees
    assert torch.allclose(quarter / quarter.norm(), torch.tensor([1.0, 1.0, 0.0]) / 2 ** 0.5, atol=1e-6)


def test_spherical_interpolation_keeps_the_prior_scale_around_its_mean():
    """Given the prior's mean and sigma, slerp walks (z - mean) / sigma: between two ends K sigma
    out (--around-mean K) every point is K sigma out, where a slerp of z about 0 cut in to 0.13
    sigma of a prior N(1, 0.5^2 I). In one dimension opposite ends have no arc: the line."""
    mean, sigma = torch.full((64,), 1.0), torch.full((64,), 0.5)
    lo, hi = latent.endpoints(mean, 2 * torch.log(sigma), seed=0, around_mean=2.0)
    path = latent.interpolate(lo, hi, 7, True, mean, sigma)
    assert torch.allclose(((path - mean) / sigma).norm(dim=1), torch.full((7,), 2.0), atol=1e-4)
    assert torch.equal(path[0], lo) and torch.equal(path[-1], hi)
    about_zero = latent.interpolate(lo, hi, 7, spherical=True)
    assert ((about_zero[3] - mean) / sigma).norm() < 0.5
    line = latent.interpolate(torch.tensor([1.0]), torch.tensor([-2.0]), 5, spherical=True)
    assert torch.isfinite(line).all() and torch.allclose(line[:, 0], torch.linspace(1, -2, 5))


def test_the_latent_plot_of_vhcr_is_the_same_each_time(tiny_cfg):
    """z_conv at its posterior mean, not a draw: the same dialogues give the same means and KL."""
    from vhred.models import build
    torch.manual_seed(0)
    model = build(tiny_cfg("model=vhcr").arch, 40).eval()
    from vhred.dataset import collate
    b = collate([[[5, 6, 7], [8, 9], [10, 11, 12]], [[13, 14], [15]]])
    one, two = (model.posterior_terms(b.tokens, b.lens, b.turns) for _ in range(2))
    assert torch.equal(one["post_mean"], two["post_mean"]) and torch.equal(one["kl"], two["kl"])


def test_interpolated_ends_decode_to_the_ends_own_responses(vhred_model):
    model, cfg, sp = vhred_model
    context = encode_turns(sp, ["Can I help you ?", "Yes , a ticket please ."], cfg.max_utt_len, cfg.max_context)
    mean, logvar = (t[0] for t in latent.prior(model, [context]))
    z0, z1 = latent.endpoints(mean, logvar, seed=3)
    ends = latent.decode(model, context, torch.stack([z0, z1]))
    path = latent.decode(model, context, latent.interpolate(z0, z1, 6, spherical=True))
    assert [path[0][0], path[-1][0]] == [r for r, _ in ends]
    lo, hi = latent.endpoints(mean, logvar, seed=3, around_mean=2.0)
    assert torch.allclose((lo + hi) / 2, mean, atol=1e-6)


def test_posterior_means_in_dialogue_order_and_their_projection(vhred_model):
    model, cfg, sp = vhred_model
    dialogues = [["Hi !", "Hello .", "How are you ?"], ["One .", "Two ?"],
                 [f"turn {i} ." for i in range(9)]]   # longer than max_context + 1: two windows
    means, kls, where = latent.posterior_stats(model, sp, cfg, dialogues, batch=2)
    assert where.tolist() == [[0, 1], [0, 2], [1, 1]] + [[2, n] for n in range(1, 9)]
    assert means.shape == kls.shape == (11, cfg.arch.z_dim) and (kls >= -1e-6).all()
    values, _ = latent.colour_by("question", dialogues, where)
    assert values[:3] == ["no question", "question", "question"]
    with pytest.raises(InputError, match="act labels"):
        latent.colour_by("act", dialogues, where)
    x = torch.randn(200, 2) @ torch.tensor([[3.0, 0.0, 0.0], [0.0, 1.0, 0.0]]) + torch.tensor([5.0, 5.0, 5.0])
    xy, share = latent.pca_2d(x)
    assert xy.shape == (200, 2) and share[0] > 0.8 and abs(float(xy.mean())) < 1e-4


def test_hred_has_no_latent_to_show(trained):
    model, cfg, sp = loading.load_model(trained["hred"])
    with pytest.raises(InputError, match="no latent variable"):
        latent.prior(model, [[[5, 6]]])
    from vhred.chat import Chat
    from vhred.decoding import DecodeOptions
    notes = []
    chat = Chat(model, cfg, sp, DecodeOptions(num_samples=2), out=notes.append, note=notes.append)
    for command in ("/keep 1", "/prior", "/release"):   # /release said "(a new z from the prior ... again)"
        chat.command(command)
    assert notes == ["(this is an HRED model: it has no latent z)"] * 3


@pytest.mark.slow   # a subprocess: a command as a user runs it
def test_the_latent_commands(trained, dailydialog_zip, tmp_path, monkeypatch):
    import subprocess
    import sys
    monkeypatch.setenv("DAILYDIALOG_SRC", dailydialog_zip)
    r = subprocess.run([sys.executable, "-m", "vhred.latent", "interpolate", "--checkpoint", trained["vhred"],
                        "--context", "Where is the bank ?", "--steps", "3", "--device", "cpu"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("0.50") == 2 and "linear:" in r.stdout and "spherical:" in r.stdout
    out = tmp_path / "latent.png"
    r = subprocess.run([sys.executable, "-m", "vhred.latent", "plot", "--checkpoint", trained["vhred"],
                        "--dialogues", "40", "--out", str(out), "--device", "cpu"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = subprocess.run([sys.executable, "-m", "vhred.latent", "plot", "--checkpoint", trained["hred"],
                        "--out", str(out), "--device", "cpu"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "no latent variable" in r.stderr and r.stderr.count("\n") == 1


def test_a_candidates_z_decodes_back_to_it_and_keeps_a_style_elsewhere(trained):
    import vhred
    bot = vhred.load(trained["vhred"], device="cpu")
    history = ["Hello , how are you ?"]
    cands = bot.respond(history, n=4, rank="none", dedup=False)
    assert all(len(c.z) == bot.config.arch.z_dim for c in cands)
    for c in cands:   # greedy words from a candidate's z: that candidate again
        [again] = bot.respond(history, n=3, z=c.z, rank="none")   # repeats of one z are dropped
        assert again.text == c.text and again.z == c.z
    other = bot.respond(["Where is the bank ?"], n=2, z=cands[0].z, rank="none", dedup=False)
    assert [c.z for c in other] == [cands[0].z] * 2
    with pytest.raises(InputError, match="a z must be 8 finite numbers"):
        bot.respond(history, z=[0.0] * 3)
    hred = vhred.load(trained["hred"], device="cpu")
    assert hred.respond(history, n=1)[0].z is None
    with pytest.raises(InputError, match="HRED"):
        hred.respond(history, z=[0.0] * 8)


def test_keep_holds_a_candidates_z_across_turns_and_release_lets_go(vhred_model):
    from vhred.chat import Chat
    from vhred.decoding import DecodeOptions
    model, cfg, sp = vhred_model
    notes, shown = [], []
    chat = Chat(model, cfg, sp, DecodeOptions(num_samples=3, rank="none"), out=shown.append, note=notes.append)
    chat.respond("Hi , how are you ?")
    chat.command("/keep 2")
    kept = chat.zs[1]
    for turn in ("Where is the station ?", "Thanks a lot ."):
        chat.respond(turn)
        assert all(torch.equal(z, kept) for z in chat.zs)   # every candidate from the kept z
    chat.command("/prior")
    assert shown and "prior for the next reply" in shown[-1] and "z is kept" in shown[-1]
    chat.command("/release")
    assert notes[-1] == "(a new z from the prior for each candidate again)"
    chat.respond("Goodbye .")
    assert not any(torch.equal(z, kept) for z in chat.zs)
    chat.command("/release")   # nothing kept now: said so, not released again
    assert notes[-1].startswith("(no z is kept")
    chat.command("/keep 9")
    assert "the candidate must be between 1" in notes[-1]


@pytest.mark.slow   # a subprocess: a command as a user runs it
def test_generate_returns_z_and_decodes_from_it(trained, tmp_path):
    import json
    import subprocess
    import sys
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(json.dumps({"context": ["Hello , how are you ?"]}) + "\n")
    cmd = [sys.executable, "-m", "vhred.generate", "--checkpoint", trained["vhred"], "--input", str(src),
           "--output", str(out), "--num-samples", "3", "--rank", "none", "--return-z", "--device", "cpu"]
    assert subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True).returncode == 0
    row = json.loads(out.read_text())
    assert len(row["z"]) == len(row["samples"]) and all(len(z) == 8 for z in row["z"])
    src.write_text(json.dumps({"context": ["Hello , how are you ?"], "z": row["z"][-1]}) + "\n")
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    again = json.loads(out.read_text())
    assert again["samples"] == [row["samples"][-1]] and again["z"] == [row["z"][-1]]
    src.write_text(json.dumps({"context": ["Hello , how are you ?"]}) + "\n")
    hred = [a if a != trained["vhred"] else trained["hred"] for a in cmd]   # it wrote no "z" and said nothing
    r = subprocess.run(hred, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "--return-z: this checkpoint is an HRED model" in r.stderr


def test_the_api_interpolates_from_one_candidate_to_another(trained):
    import vhred
    bot = vhred.load(trained["vhred"], device="cpu")
    history = ["Can I help you ?"]
    a, b = bot.respond(history, n=2, rank="none", dedup=False)
    path = bot.interpolate(history, a.z, b.z, steps=5)
    assert len(path) == 5 and [path[0].text, path[-1].text] == [a.text, b.text]
    assert path[0].z == pytest.approx(a.z, abs=1e-6) and path[-1].z == pytest.approx(b.z, abs=1e-5)
    with pytest.raises(InputError, match="steps must be"):
        bot.interpolate(history, a.z, b.z, steps=1)
    with pytest.raises(InputError, match="interpolate needs two z's"):   # None draws from the prior in respond only
        bot.interpolate(history, None, b.z)
    with pytest.raises(InputError, match="spherical must be a bool"):   # "no" would be read as yes
        bot.interpolate(history, a.z, b.z, spherical="no")


def test_a_plot_of_one_response_is_one_line(trained, tmp_path, monkeypatch):
    """One point has one principal component: it was an IndexError deep in the plot."""
    import argparse
    monkeypatch.setattr(latent, "_validation_dialogues", lambda cfg, n: ([["Hi .", "Hello ."]], None))
    args = argparse.Namespace(checkpoint=trained["vhred"], device="cpu", dialogues=1, color=None,
                              out=str(tmp_path / "one.png"))
    with pytest.raises(InputError, match="at least 2 validation responses, and 1 dialogue\\(s\\) gave 1: raise --dialogues"):
        latent.run_plot(args)
    assert not (tmp_path / "one.png").exists()


def test_interpolate_walks_dialogwaes_implicit_prior_between_two_of_its_draws(tiny_cfg, capsys):
    """docs/latent.md says DialogWAE's z is walked around 0, but the command asked its prior for a
    mean it does not have and refused. Its ends are two draws of that prior, as decoding takes them."""
    from vhred.decoding import context_states
    from vhred.train import train
    run = train(tiny_cfg("model=dialogwae", "gmp_components=3", "max_steps=2", "name=wae-latent"), log=lambda *_: None)
    model, cfg, sp = loading.load_model(run.dir)
    context = encode_turns(sp, ["Where is the bank ?"], cfg.max_utt_len, cfg.max_context)
    z0, z1 = latent.implicit_endpoints(model, context, seed=3)
    eps = torch.randn(2, model.noise_dim, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        drawn = model.sample_prior(context_states(model, [context]).expand(2, -1), eps)
    assert torch.equal(torch.stack([z0, z1]), drawn) and not torch.equal(z0, z1)
    latent.main(["interpolate", "--checkpoint", run.dir, "--context", "Where is the bank ?", "--steps", "3",
                 "--seed", "3", "--device", "cpu"])
    out = capsys.readouterr().out
    ends = [latent.response_text(sp, ids, 30) for ids, _ in latent.decode(model, context, torch.stack([z0, z1]))]
    for kind in ("linear", "spherical"):
        lines = out.split(f"{kind}:\n")[1].splitlines()[:3]
        assert [line[:8] for line in lines] == ["  0.00  ", "  0.50  ", "  1.00  "]
        assert [lines[0][8:], lines[2][8:]] == ends
    with pytest.raises(SystemExit) as e:
        latent.main(["interpolate", "--checkpoint", run.dir, "--context", "Hi", "--around-mean", "1", "--device", "cpu"])
    assert e.value.code == 2 and "DialogWAE's prior is implicit" in capsys.readouterr().err
