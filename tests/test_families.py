"""The model family (vhred/models/): every family trains, saves, loads, answers, scores and
resumes bit for bit on the tiny config; the pieces that set the families apart are checked
against independent computations."""
import json
import math
import os

import pytest
import torch

import vhred
from vhred import checkpoint, loading
from vhred.config import ModelConfig
from vhred.dataset import collate
from vhred.models import FAMILIES, build
from vhred.train import train

from .conftest import ROOT, child_errors

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "format1-tiny.pt")
TINY = dict(emb_dim=16, utt_hidden=16, ctx_hidden=16, dec_hidden=16, z_dim=4, latent_hidden=16)
LATENT = [name for name in FAMILIES if name != "hred"]
quiet = lambda *_: None


def _batch(vocab=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    dialogues = [[torch.randint(4, vocab, (int(n),), generator=g).tolist() for n in lens]
                 for lens in ([3, 5, 2], [4, 1], [6, 2, 3, 2])]
    return collate(dialogues)


@pytest.mark.parametrize("floor", [False, True])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_meets_the_contract_on_a_batch(family, floor):
    """forward gives the terms the trainer needs, the objective is finite and reaches every
    weight it should, and the test bound's weights are finite."""
    torch.manual_seed(0)
    model = build(ModelConfig(model=family, floor=floor, **TINY), 40)
    b = _batch()
    out = model(b.tokens, b.lens, b.turns)
    first = torch.cumsum(b.turns, 0) - b.turns                             # each dialogue's first utterance
    targets = torch.ones(len(b.lens), dtype=torch.bool).index_fill(0, first, False)
    assert out["nll"].shape == (6,) and out["n_tokens"] == int((b.lens[targets] - 1).sum())
    loss = model.objective(out, beta=1.0)
    assert torch.isfinite(loss)
    loss.backward()
    assert model.embed.weight.grad.abs().sum() > 0
    w, n = model.log_weights(b.tokens, b.lens, b.turns, 3)
    assert torch.isfinite(w).all() and w.shape[1] == 3 and n == out["n_tokens"]
    assert model.latent == (family != "hred") and ("post_mean" in out) == model.latent


def test_the_floor_marks_each_turn_with_its_speaker_for_the_context_rnn():
    """With floor on, the context RNN reads [enc(w_n); one-hot(n mod 2)]: the states come out
    as the GRU run by hand over each dialogue's turns so marked, and differ from the states
    with the two speakers swapped."""
    torch.manual_seed(0)
    model = build(ModelConfig(model="hred", floor=True, **TINY), 40).eval()
    b = _batch()
    with torch.no_grad():
        got = model.final_states(b.tokens, b.lens, b.turns)                   # (B, Hc)
        enc = model.encode_utterances(b.tokens[:, 1:], b.lens - 1)           # (U, 2*Hu)
        want, swapped, start = [], [], 0
        for n in b.turns.tolist():
            speaker = torch.arange(n) % 2
            for who, out in ((speaker, want), (1 - speaker, swapped)):
                x = torch.cat([enc[start:start + n], torch.nn.functional.one_hot(who, 2).float()], -1)
                _, h = model.ctx_rnn(x.unsqueeze(0))                          # (1, 1, Hc)
                out.append(h[0, 0])
            start += n
    assert torch.allclose(got, torch.stack(want), atol=1e-6)
    assert not torch.allclose(got, torch.stack(swapped), atol=1e-3)


def test_a_model_with_the_floor_trains_loads_and_answers(tiny_cfg):
    run = train(tiny_cfg("floor=true", "max_steps=4", "name=floor"), log=quiet)
    bot = vhred.load(run.dir, device="cpu")
    assert bot.config.arch.floor and bot._model.ctx_rnn.input_size == 2 * bot.config.arch.utt_hidden + 2
    assert 1 <= len(bot.respond(["hello , how are you ?", "fine , and you ?"], n=2)) <= 2


def resumes_bit_for_bit(tiny_cfg, overrides, steps: int):
    """Train `steps` steps in one go, and stopped halfway then resumed: the two runs end with the
    same weights. Returns the uninterrupted run."""
    common = (*overrides, f"save_every={steps // 2}")
    full = train(tiny_cfg(*common, f"max_steps={steps}", "name=full"), log=quiet)
    train(tiny_cfg(*common, f"max_steps={steps // 2}", "name=split"), log=quiet)
    resumed = train(tiny_cfg(*common, f"max_steps={steps}", "name=split"), log=quiet)
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    return full


@pytest.mark.parametrize("family", LATENT + ["hred"])
def test_each_family_trains_resumes_bit_for_bit_loads_answers_and_scores(family, tiny_cfg):
    """A few tiny steps; a run stopped at step 6 and resumed to 12 ends with the weights of an
    uninterrupted 12-step run; the checkpoint loads through the API, replies and scores."""
    common = (f"model={family}", "gmp_components=3" if family == "dialogwae" else "seed=1337")
    full = resumes_bit_for_bit(tiny_cfg, common, 12)
    bot = vhred.load(full.dir, device="cpu")
    assert bot.config.arch.model == family
    replies = bot.respond(["hello , how are you ?"], n=3)
    assert 1 <= len(replies) <= 3 and all(isinstance(r.text, str) for r in replies)
    assert all((r.z is not None) == (family != "hred") for r in replies)
    scores = bot.score(["where is the station ?"], ["turn left .", "i like apples ."])
    assert len(scores) == 2 and all(s == s and abs(s) < 100 for s in scores)
    assert scores == bot.score(["where is the station ?"], ["turn left .", "i like apples ."])   # seeded


def test_eval_reports_no_kl_for_dialogwae_rather_than_a_zero_read_as_unused(tiny_cfg):
    """DialogWAE's prior is implicit: no KL in closed form. vhred eval wrote 0.0000 beside the
    legend "0: the latent is unused" while every unit was active; now the figure is none ("–")."""
    from vhred import evaluate
    for family, kl in (("dialogwae", False), ("vhred", True)):
        run = train(tiny_cfg(f"model={family}", "max_steps=4", f"name=kl-{family}"), log=lambda *_: None)
        evaluate.main(["--checkpoint", run.dir, "--max-contexts", "2", "--iw-samples", "2", "--device", "cpu"])
        base = os.path.join(run.dir, "results-ours-test-first2")
        metrics = json.load(open(base + ".json"))["metrics"]
        assert (metrics["kl_per_utt"] is not None) == kl and metrics["active_units"] >= 0
        assert ("| kl_per_utt | – |" in open(base + ".md").read()) != kl


def test_cvae_has_its_bag_of_words_loss_by_default_and_can_turn_it_off(tiny_cfg):
    assert tiny_cfg("model=cvae").arch.bow_weight == 1.0
    assert tiny_cfg("model=cvae", "bow_weight=0").arch.bow_weight == 0.0
    assert tiny_cfg("model=vhred").arch.bow_weight == 0.0
    model = build(tiny_cfg("model=cvae").arch, 40)
    b = _batch()
    out = model(b.tokens, b.lens, b.turns)
    assert out["bow"].shape == out["nll"].shape and (out["bow"] > 0).all()   # one loss per target
    with_bow = model.objective(out, beta=1.0)
    assert with_bow > model.objective({k: v for k, v in out.items() if k != "bow"}, beta=1.0)


def test_vhcr_utterance_drop_rate_measured_on_a_batch():
    """The share of context-RNN inputs replaced by the learned vector is the configured rate."""
    torch.manual_seed(0)
    model = build(ModelConfig(model="vhcr", utterance_drop=0.25, **TINY), 40).train()
    enc = torch.randn(20_000, 2 * TINY["utt_hidden"])
    dropped = (model.drop_utterances(enc) == model.unk_utterance).all(1).float().mean().item()
    assert abs(dropped - 0.25) < 4 * (0.25 * 0.75 / 20_000) ** 0.5        # 4 standard errors
    assert torch.equal(model.eval().drop_utterances(enc), enc)             # never when decoding


def test_vhcr_elbo_counts_the_conversation_kl():
    """forward's kl_extra is KL(q(z_conv) || N(0, I)) computed here independently from the
    posterior the model gives, and the objective adds it with the KL weight."""
    torch.manual_seed(0)
    model = build(ModelConfig(model="vhcr", **TINY), 40).eval()
    b = _batch()
    enc = model.encode_utterances(b.tokens[:, 1:], b.lens - 1)
    mean, logvar = model.conv_posterior(enc, b.turns)
    by_hand = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).sum()
    out = model(b.tokens, b.lens, b.turns)
    assert torch.isclose(out["kl_extra"], by_hand, rtol=1e-5)
    without = {k: v for k, v in out.items() if k != "kl_extra"}
    gap = (model.objective(out, beta=0.5) - model.objective(without, beta=0.5)) * out["n_tokens"]
    assert torch.isclose(gap, 0.5 * by_hand, rtol=1e-4)


def test_gradient_penalty_on_hand_made_critics():
    """Linear critic D(v) = a . v: the gradient in z is a's first Z entries everywhere, so the
    penalty is (||a_z|| - 1)^2. Quadratic critic D(v) = sum z^2: the gradient is 2 z_hat."""
    from vhred.models.dialogwae import gradient_penalty
    Z, C = 3, 2
    critic = torch.nn.Linear(Z + C, 1, bias=False)
    with torch.no_grad():
        critic.weight.copy_(torch.tensor([[3.0, 0.0, 4.0, 7.0, -1.0]]))    # ||a_z|| = 5
    zp, zq, ctx = torch.randn(6, Z), torch.randn(6, Z), torch.randn(6, C)
    alpha = torch.rand(6, 1)
    assert torch.isclose(gradient_penalty(critic, zp, zq, ctx, alpha), torch.tensor(16.0))
    square = lambda v: (v[:, :Z] ** 2).sum(1)
    z_hat = alpha * zp + (1 - alpha) * zq
    want = ((2 * z_hat).norm(dim=1) - 1).pow(2).mean()
    assert torch.isclose(gradient_penalty(square, zp, zq, ctx, alpha), want)


def test_dialogwae_trains_on_batches_of_one_target(tiny_cfg):
    """Its generators' BatchNorm has no batch variance on one row: batch_size=1 (and an epoch's
    last batch of one window) trains, normalising that row as evaluation does."""
    from vhred.models.dialogwae import BatchNorm
    norm = BatchNorm(3).train()
    with torch.no_grad():
        norm.running_mean.copy_(torch.tensor([1.0, 2.0, 3.0]))
        norm.running_var.fill_(4.0)
    row = torch.tensor([[3.0, 2.0, 1.0]])
    assert torch.allclose(norm(row), (row - norm.running_mean) / torch.sqrt(torch.tensor(4.0 + norm.eps)))
    assert norm.running_mean.tolist() == [1.0, 2.0, 3.0]   # one row updates no statistics
    run = train(tiny_cfg("model=dialogwae", "batch_size=1", "max_steps=6", "name=wae-one"), log=quiet)
    assert run.progress.step == 6 and run.progress.skipped_total == 0


def test_dialogwae_losses_reach_only_their_own_players():
    """The generators' loss leaves the critic alone, the critic's leaves the encoders alone."""
    torch.manual_seed(0)
    model = build(ModelConfig(model="dialogwae", gmp_components=3, **TINY), 40).train()
    b = _batch()
    out = model(b.tokens, b.lens, b.turns)
    extra_only = {"nll": out["nll"] * 0, "n_tokens": out["n_tokens"], "extra": out["extra"]}
    model.objective(extra_only, beta=1.0).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is None or g.abs().sum() == 0 for n, g in grads.items() if n.startswith(("utt_rnn", "ctx_rnn", "dec_")))
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith("critic"))
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith("prior_generator"))
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith("prior_net"))


@pytest.mark.parametrize("family", ["vhred", "cvae", "vhcr"])
def test_importance_weights_match_a_computation_by_hand(family):
    """log w_k = log p(r | c, z_k) + log p(z_k | c) - log q(z_k | c, r) with z_k ~ q per target,
    and for VHCR summed per dialogue with log p(z_conv) - log q(z_conv | dialogue): rebuilt from
    the model's networks with torch.distributions on the same noise."""
    from torch.distributions import Normal
    torch.manual_seed(0)
    model = build(ModelConfig(model=family, **TINY), 40).eval()
    b, k = _batch(), 3
    log_density = lambda z, mean, logvar: Normal(mean, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    with torch.no_grad():
        torch.manual_seed(5)
        w, n = model.log_weights(b.tokens, b.lens, b.turns, k)
        torch.manual_seed(5)
        expected = []
        for _ in range(k):
            if family == "vhcr":
                enc, ctx, tgt, tgt_lens, (z_conv, mean_c, logvar_c), dlg = model.encode_all(
                    b.tokens, b.lens, b.turns, sample=True)
            else:
                enc, ctx, tgt, tgt_lens = model.targets(b.tokens, b.lens, b.turns)
            mean_p, logvar_p = model.prior(ctx)
            mean_q, logvar_q = model.posterior(ctx, enc)
            z = mean_q + torch.exp(0.5 * logvar_q) * torch.randn_like(mean_q)
            per = (-model.reconstruction_nll(tgt, tgt_lens, model.condition(ctx, z))
                   + log_density(z, mean_p, logvar_p) - log_density(z, mean_q, logvar_q))
            if family == "vhcr":
                zeros = torch.zeros_like(z_conv)
                conv = log_density(z_conv, zeros, zeros) - log_density(z_conv, mean_c, logvar_c)
                per = torch.stack([conv[d] + per[dlg == d].sum() for d in range(len(conv))])
            expected.append(per)
    assert torch.allclose(w, torch.stack(expected, 1), atol=1e-4)
    assert n == int(tgt_lens.sum())


def test_dialogwae_gmp_prior_samples_pick_one_component_from_the_noise():
    """The last normal picks component k where pi's cumulative sum first reaches Phi(eps_last):
    computed here by hand, row by row, and over many rows in the shares pi gives."""
    torch.manual_seed(0)
    model = build(ModelConfig(model="dialogwae", gmp_components=3, **TINY), 40).eval()
    assert model.noise_dim == TINY["z_dim"] + 1
    n = 20000
    ctx = torch.randn(1, TINY["ctx_hidden"]).expand(n, -1)                # one context, many draws
    eps = torch.randn(n, model.noise_dim)
    with torch.no_grad():
        e = model.prior_noise(ctx, eps)
        mean, logvar, log_pi = model.prior_net(ctx[:1])
    pi = log_pi[0].exp().tolist()
    cdf = [sum(pi[:j + 1]) for j in range(3)]
    picked = []
    for r in range(0, n, 97):   # by hand, on every 97th row
        u = 0.5 * (1 + math.erf(eps[r, -1].item() / math.sqrt(2)))
        k = next((j for j in range(3) if u <= cdf[j]), 2)
        assert torch.allclose(e[r], mean[0, k] + torch.exp(0.5 * logvar[0, k]) * eps[r, :-1], atol=1e-6), r
        picked.append(k)
    assert len(set(picked)) > 1
    # over all rows: each component's share within 4 standard errors of its weight
    which = torch.stack([torch.isclose(e, mean[0, k] + torch.exp(0.5 * logvar[0, k]) * eps[:, :-1], atol=1e-6).all(1)
                         for k in range(3)], 1)                          # (n, 3)
    assert (which.sum(1) == 1).all()
    for k in range(3):
        assert abs(which[:, k].float().mean().item() - pi[k]) < 4 * math.sqrt(pi[k] * (1 - pi[k]) / n), k
    assert torch.equal(model.sample_prior(ctx[:2], eps[:2]), model.sample_prior(ctx[:2], eps[:2]))   # keyed


def test_dialogwae_gmp_training_draws_are_each_one_components_sample():
    """In training each row takes one component, as their MixVariation's hard Gumbel-softmax does,
    not a blend of the K samples (with temperature 0.1 a soft mix leaves a quarter of the rows
    with no weight above 0.99); pi still learns, through the soft weights' gradient."""
    torch.manual_seed(0)
    model = build(ModelConfig(model="dialogwae", gmp_components=3, **TINY), 40).train()
    n = 400
    ctx = torch.randn(1, TINY["ctx_hidden"]).expand(n, -1)
    with torch.no_grad():   # components far apart and narrow: a blend lies between them
        model.prior_net.components.mean.bias.copy_(torch.arange(3.0).repeat_interleave(TINY["z_dim"]) * 100)
        model.prior_net.components.mean.weight.zero_()
        model.prior_net.components.logvar.bias.fill_(-20.0)
        model.prior_net.components.logvar.weight.zero_()
        model.prior_net.weights.weight.zero_()   # equal weights
    e = model.prior_noise(ctx)                                            # (n, Z)
    means = torch.arange(3.0) * 100                                       # each component's every coordinate
    nearest = (e.unsqueeze(-1) - means).abs().amin(-1)                    # (n, Z)
    assert nearest.max().item() < 1e-3
    e.sum().backward()
    assert model.prior_net.weights.bias.grad is not None and model.prior_net.weights.bias.grad.abs().sum() > 0


def test_dialogwae_gmp_bounds_draw_one_component_as_decoding_does():
    """Out of training, a prior draw without given noise takes fresh normals down the same hard
    path (the validation and test bounds score the prior that decodes); training draws its own."""
    torch.manual_seed(0)
    model = build(ModelConfig(model="dialogwae", gmp_components=3, **TINY), 40).eval()
    ctx = torch.randn(6, TINY["ctx_hidden"])
    with torch.no_grad():
        torch.manual_seed(1)
        fresh = model.prior_noise(ctx)
        torch.manual_seed(1)
        given = model.prior_noise(ctx, torch.randn(6, model.noise_dim))
        assert torch.equal(fresh, given)
        model.train()
        torch.manual_seed(1)
        assert not torch.allclose(model.prior_noise(ctx), given)


def test_a_checkpoint_of_todays_format_still_answers_as_before(tmp_path):
    """format1-tiny.pt, decoded and scored by the code before vhred/models/ existed (recorded
    2026-11-29 from commit 9fdc002): the same PMI scores, and the same words but where <unk>,
    never decoded since tokenizer=word came (this untrained model gives it mass), shifts a draw.
    A draw's own score is its log p under the model since 2026-12-03, before <unk> is taken out of
    the choice (it was log p with <unk>'s mass spread over the rest: -4.2464, -4.6192, -4.7938)."""
    from vhred.candidates import generate
    from vhred.decoding import DecodeOptions
    from vhred.render import encode_turns
    from vhred.candidates import score
    model, cfg, sp = loading.load_model(checkpoint.upgrade(FIXTURE, str(tmp_path / "upgraded.pt")))
    ctx = encode_turns(sp, ["hello , how are you ?"], cfg.max_utt_len, cfg.max_context)
    rows = generate(model, [ctx], DecodeOptions(num_samples=3, method="sample", rank="none", dedup=False, max_len=8, min_len=0))[0]
    assert [sp.decode(r[0]) for r in rows] == ["ate won .   gou?", "can'  ski We", "I carrieGWed s"]
    # float32 sums differ in their last bits between CPUs' kernels (8e-7 in the PMI on an AMD EPYC
    # against the machine that recorded them): "as before" is to 1e-5, far below any change of the math
    assert [r[1] for r in rows] == pytest.approx([-4.252127329508464, -4.6272226969401045, -4.799664815266927], abs=1e-5)
    assert score(model, sp, cfg, ["hello , how are you ?"], ["i am fine .", "turn left ."], rank="pmi") == \
        pytest.approx([0.25901876177106586, 0.1969212618741122], abs=1e-5)


@pytest.mark.slow   # subprocesses: the command as a user runs it
def test_compare_trains_two_families_and_writes_one_table(dailydialog_zip, data_dir, tmp_path):
    import json
    import subprocess
    import sys
    table = tmp_path / "table"
    r = subprocess.run([sys.executable, "-m", "vhred", "compare", "--config", "configs/tiny.yaml", "--steps", "4",
                        "--rows", "hred,dialogwae-gmp", "--max-contexts", "4", "--rank-contexts", "4",
                        "--iw-samples", "2", "--out-dir", str(tmp_path / "runs"), "--table", str(table),
                        "--device", "cpu", f"data_dir={data_dir}"],
                       cwd=ROOT, capture_output=True, text=True, env={**os.environ, "DAILYDIALOG_SRC": dailydialog_zip})
    assert r.returncode == 0, child_errors(r)
    result = json.loads((tmp_path / "table.json").read_text())
    assert [row["row"] for row in result["rows"]] == ["hred", "dialogwae-gmp", "nearest (no model)"]
    for row in result["rows"][:2]:
        assert row["steps"] == 4 and row["contexts"] == 4 and 0 <= row["bleu-f1"] <= 1 and row["nll_bound"] > 0
        assert row["kl_per_utt"] is None   # HRED has no latent, DialogWAE no KL in closed form: "–", not 0.000
    assert result["rows"][0]["active_units"] is None and result["rows"][1]["active_units"] >= 0
    nearest = result["rows"][2]   # no model: BLEU and distinct on the same targets, nothing to train or rank
    assert nearest["contexts"] == 4 and nearest["bleu-precision"] > 0 and "nll_bound" not in nearest
    md = (tmp_path / "table.md").read_text()
    assert md.startswith("# The model family for the same training steps\n")
    assert "| dialogwae-gmp |" in md and "vhred compare" in md and "BLEU F1" in md and "F1 unseen" in md
    assert "| nearest (no model) | – |" in md   # its steps cell
    assert result["trained_earlier"] == [] and "earlier run" not in md
    logged = [json.loads(line) for line in open(tmp_path / "runs" / "compare-hred" / "metrics.jsonl")]
    at4 = [v for v in logged if v["split"] == "val"][-1]   # the run's own clock, at its last validation
    assert result["rows"][0]["train_minutes"] == at4["wall_s"] / 60
    saved = json.loads((tmp_path / "runs" / "compare-hred" / "config.json").read_text())
    assert saved["device"] == "cpu" and "GPU" not in result["machine"]      # --device reaches the trainings
    # again: the row is at its budget, so it is evaluated, not trained, and its minutes are the first run's
    r = subprocess.run([sys.executable, "-m", "vhred", "compare", "--config", "configs/tiny.yaml", "--steps", "4",
                        "--rows", "hred", "--max-contexts", "4", "--rank-contexts", "4", "--iw-samples", "2",
                        "--out-dir", str(tmp_path / "runs"), "--table", str(table), f"data_dir={data_dir}"],
                       cwd=ROOT, capture_output=True, text=True, env={**os.environ, "DAILYDIALOG_SRC": dailydialog_zip})
    assert r.returncode == 0, child_errors(r)
    again = json.loads((tmp_path / "table.json").read_text())
    vals = [json.loads(line) for line in open(tmp_path / "runs" / "compare-hred" / "metrics.jsonl")]
    first = next(v for v in vals if v["split"] == "val" and v["step"] == 4)
    assert again["trained_earlier"] == ["hred"] and again["rows"][0]["train_minutes"] == first["wall_s"] / 60
    assert "evaluated again: hred" in (tmp_path / "table.md").read_text()
    # a smaller budget than the folder's: refused before anything, not a row of another budget
    r = subprocess.run([sys.executable, "-m", "vhred", "compare", "--config", "configs/tiny.yaml", "--steps", "2",
                        "--rows", "hred", "--out-dir", str(tmp_path / "runs"), "--table", str(table)],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "compare-hred is trained to step 4, past --steps 2" in r.stderr


@pytest.mark.slow   # subprocesses under torchrun
@pytest.mark.parametrize("family", [["model=vhcr", "free_bits=0.05"], ["model=dialogwae", "gmp_components=3"]])
def test_the_families_with_their_own_wiring_train_under_torchrun(family, dailydialog_zip, data_dir, tmp_path):
    """VHCR (a KL outside the utterance latents, and free bits decided on both ranks' KL) and
    DialogWAE (a gradient penalty inside forward) train data-parallel on two processes through
    the one trainer."""
    import subprocess
    import sys
    env = {**os.environ, "DAILYDIALOG_SRC": dailydialog_zip, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "vhred.train", "--config", os.path.join(ROOT, "configs", "tiny.yaml"), *family,
                        f"data_dir={data_dir}", f"out_dir={tmp_path}", "name=ddp", "max_steps=6", "save_every=3"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, child_errors(r)
    state = checkpoint.load(str(tmp_path / "ddp" / "last.pt"))
    assert state["progress"]["step"] == 6 and state["config"]["arch"]["model"] == family[0].split("=")[1]
    assert all(torch.isfinite(v).all() for v in state["model"].values())


@pytest.mark.parametrize("family", list(FAMILIES))
def test_param_groups_hold_every_weight_once(family):
    model = build(ModelConfig(model=family, **TINY), 40)
    grouped = [id(p) for g in model.param_groups() for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())


def test_dialogwae_players_learn_at_their_own_rates(tiny_cfg):
    """The trainer gives each group lr_scale times the schedule's rate: DialogWAE's prior at a
    tenth, its critic at half, the autoencoder at the rate itself (and VHRED has one group)."""
    from vhred.models import dialogwae
    from vhred.train import Run
    run = Run(tiny_cfg("model=dialogwae", "max_steps=3", "lr_warmup_steps=0", "lr=0.002"), log=quiet)
    try:
        run.train_step(run.train_data.batches(run.cfg.batch_size)[0])
        lrs = [g["lr"] for g in run.opt.param_groups]
        names = {id(p): n for n, p in run.model.named_parameters()}
        heads = [{names[id(p)].split(".")[0] for p in g["params"]} for g in run.opt.param_groups]
    finally:
        run.close()
    assert lrs == pytest.approx([0.002, 0.002 * dialogwae.PRIOR_LR_SCALE, 0.002 * dialogwae.CRITIC_LR_SCALE])
    assert heads[1] == {"prior_net", "prior_generator"} and heads[2] == {"critic"}
    assert "posterior_net" in heads[0] and "critic" not in heads[0]


def test_dialogwae_posterior_noise_starts_small_so_the_decoder_can_read_z():
    """The posterior's noise starts near std exp(-2) = 0.14 (POSTERIOR_LOGVAR_INIT), not 1: started
    at 1, the decoder of the first compare table learned to ignore z."""
    from vhred.models.dialogwae import POSTERIOR_LOGVAR_INIT
    torch.manual_seed(0)
    model = build(ModelConfig(model="dialogwae", **TINY), 40).train()
    assert torch.all(model.posterior_net.logvar.bias == POSTERIOR_LOGVAR_INIT) and POSTERIOR_LOGVAR_INIT <= -3
    b = _batch()
    enc, ctx, _, _ = model.targets(b.tokens, b.lens, b.turns)
    _, logvar = model.posterior_net(torch.cat([ctx, enc], -1))
    assert torch.exp(0.5 * logvar).mean() < 0.4


def test_dialogwae_noise_stays_below_std_one_however_large_its_net_makes_it():
    """The failure of the reference-size run: the nets' log-variances grew without bound (the
    posterior's noise std reached 2e7), BatchNorm divided the scale out, and the codes became pure
    noise. Whatever the nets say, the noise that reaches the generators has std at most 1, and
    a log-variance well below the bound passes nearly unchanged."""
    from vhred.models.dialogwae import bounded
    torch.manual_seed(0)
    model = build(ModelConfig(model="dialogwae", **TINY), 40).train()
    model.posterior_generator = torch.nn.Identity()       # so posterior_code returns its noise e
    b = _batch()
    enc, ctx, _, _ = model.targets(b.tokens, b.lens, b.turns)
    with torch.no_grad():
        for net in (model.prior_net, model.posterior_net):
            net.logvar.bias.fill_(40.0)                   # the raw nets ask for std e^20
        prior_e = torch.stack([model.prior_noise(ctx) for _ in range(400)])            # (400, T, Z)
        post_e = torch.stack([model.posterior_code(ctx, enc) for _ in range(400)])
    assert prior_e.std(0).max() < 1.15 and post_e.std(0).max() < 1.15
    assert prior_e.std(0).mean() > 0.85            # at the bound, not far below it
    assert abs(bounded(torch.tensor(-6.0)).item() + 6) < 0.01


def test_dialogwae_critic_pulls_the_posterior_with_posterior_pull_and_the_prior_fully(monkeypatch):
    """The generators' loss reaches the posterior scaled by POSTERIOR_PULL and the prior unscaled:
    the posterior's gradient from that loss is proportional to the weight, the prior's unchanged."""
    from vhred.models import dialogwae
    model = build(ModelConfig(model="dialogwae", **TINY), 40).train()
    b = _batch()

    def extra_grads(pull):
        monkeypatch.setattr(dialogwae, "POSTERIOR_PULL", pull)
        torch.manual_seed(3)
        model.zero_grad()
        model(b.tokens, b.lens, b.turns)["extra"].backward()
        return (model.posterior_net.mean.weight.grad.clone(), model.prior_net.mean.weight.grad.clone())

    post1, prior1 = extra_grads(1.0)
    post02, prior02 = extra_grads(0.2)
    assert post1.abs().sum() > 0 and torch.allclose(post02, 0.2 * post1, atol=1e-6)
    assert torch.allclose(prior02, prior1, atol=1e-6)


def test_dialogwae_extra_critic_steps_move_the_critic_alone_and_resume_bit_for_bit(tiny_cfg):
    """With critic_steps=3 a training step ends with two more critic updates (their n_iters_d):
    the critic's optimiser state counts three steps and its weights differ from a one-step run's,
    every other weight is the one-step run's exactly; a run stopped and resumed still ends with
    an uninterrupted run's weights."""
    from vhred.train import Run

    def one_step(critic_steps):
        run = Run(tiny_cfg("model=dialogwae", "max_steps=1", f"critic_steps={critic_steps}", f"name=steps{critic_steps}"), log=quiet)
        try:
            run.train_step(run.train_data.batches(run.cfg.batch_size)[0])
            steps = {n: int(run.opt.state[p]["step"]) for n, p in run.model.named_parameters() if p in run.opt.state}
            return {n: p.detach().clone() for n, p in run.model.named_parameters()}, steps
        finally:
            run.close()

    (once, steps1), (thrice, steps3) = one_step(1), one_step(3)
    critic = {n for n in once if n.startswith("critic.")}
    assert critic and all(steps3[n] == 3 for n in critic) and all(steps1[n] == 1 for n in critic)
    assert all(steps3[n] == 1 for n in steps3 if n not in critic)
    assert all(torch.equal(once[n], thrice[n]) for n in once if n not in critic)
    assert not any(torch.equal(once[n], thrice[n]) for n in critic if n.endswith("weight"))

    common = ("model=dialogwae", "critic_steps=3", "save_every=4")
    full = train(tiny_cfg(*common, "max_steps=8", "name=full"), log=quiet)
    train(tiny_cfg(*common, "max_steps=4", "name=split"), log=quiet)
    resumed = train(tiny_cfg(*common, "max_steps=8", "name=split"), log=quiet)
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_compare_gives_a_familys_own_settings_to_its_rows_only():
    """compare's key=value settings go to every row: critic_steps=5 would now be refused by the
    HRED row's training (a family's own setting given to another), so each row gets what it reads."""
    from vhred.compare import row_overrides
    given = ["critic_steps=5", "utterance_drop=0.5", "lr=0.002", "data_dir=x"]
    assert row_overrides(given, "dialogwae-gmp") == ["critic_steps=5", "lr=0.002", "data_dir=x"]
    assert row_overrides(given, "vhcr") == ["utterance_drop=0.5", "lr=0.002", "data_dir=x"]
    assert row_overrides(given, "hred") == row_overrides(given, None) == ["lr=0.002", "data_dir=x"]
    assert row_overrides(["bow_weight=1"], "cvae") == ["bow_weight=1"] and not row_overrides(["bow_weight=1"], "dialogwae")


@pytest.mark.parametrize("given, said", [(["--config", "nope.yaml"], "config file nope.yaml not found"),
                                         (["lr=abc"], "lr=abc: expected float"),
                                         (["--rows", "hred", "bogus_key=1"], "bogus_key")])
def test_compare_refuses_a_config_a_row_would_refuse_before_any_row_starts(given, said, tmp_path, capsys):
    """Each row's training process read the config: a wrong one failed only there, after every
    row had started and left a log, and was said as "see <log>"."""
    from vhred.compare import main
    argv = ["--config", "configs/tiny.yaml", "--out-dir", str(tmp_path / "runs"), "--table", str(tmp_path / "t")]
    with pytest.raises(SystemExit) as e:
        main([*argv, *given])
    err = capsys.readouterr().err
    assert e.value.code == 2 and said in err and err.count("\n") == 1, err
    assert not os.path.exists(tmp_path / "runs") and not list(tmp_path.iterdir())


@pytest.mark.parametrize("lines, given, said", [
    # a DialogWAE config: the HRED row would refuse its critic_steps, and compare refuses model=
    ("model: dialogwae\ncritic_steps: 5\n", [], "sets critic_steps, which the hred row does not read, and every "
                                                 "row trains from the file: remove it from the file and give critic_steps=..."),
    ("bow_weight: 1\n", ["--rows", "vhred,cvae,hred"], "sets bow_weight, which the hred row does not read"),
    ("gmp_components: 3\n", [], "sets gmp_components, which the rows set themselves"),
    ("bow_weight: 0\nutterance_drop: 0.25\n", ["gmp_components=2"],   # defaults in the file are no settings
     "gmp_components is set by the rows themselves (--rows picks them): leave gmp_components= out"),
    ("", ["model=vhcr"], "model is set by the rows themselves"),
])
def test_compare_refuses_settings_that_would_change_or_break_its_rows(lines, given, said, tmp_path, capsys):
    """A config file with a family's own key failed the other rows' check with advice compare
    refuses ("add model=dialogwae"); gmp_components=2 turned the plain DialogWAE row into a
    second mixture-prior row under its old name."""
    from vhred.compare import main
    cfg = tmp_path / "c.yaml"
    cfg.write_text(open("configs/tiny.yaml").read() + lines)
    with pytest.raises(SystemExit) as e:
        main(["--config", str(cfg), "--out-dir", str(tmp_path / "runs"), "--table", str(tmp_path / "t"), *given])
    err = capsys.readouterr().err
    assert e.value.code == 2 and said in err and err.count("\n") == 1, err
    assert not os.path.exists(tmp_path / "runs")


def test_compare_takes_a_file_setting_that_every_row_chosen_reads(tmp_path):
    """bow_weight: 1 in the file, rows vhred and cvae (and the nearest row, which reads the file as
    VHRED): every one of them reads it, so nothing is refused."""
    from vhred.compare import _check_file_settings
    cfg = tmp_path / "c.yaml"
    cfg.write_text(open("configs/tiny.yaml").read() + "bow_weight: 1\n")
    _check_file_settings(str(cfg), ["vhred", "cvae"])
    cfg.write_text(open("configs/tiny.yaml").read() + "model: dialogwae\ncritic_steps: 5\n")
    _check_file_settings(str(cfg), ["dialogwae"])
