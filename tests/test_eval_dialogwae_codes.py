"""eval.dialogwae_codes: the DialogWAE diagnostic of docs/models.md runs on the tiny config."""
import os

from eval import dialogwae_codes
from tests.conftest import ROOT


def test_the_codes_diagnostic_trains_and_prints_its_measures(dailydialog_zip, data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DAILYDIALOG_SRC", dailydialog_zip)
    dialogwae_codes.main(["--config", os.path.join(ROOT, "configs", "tiny.yaml"), "--steps", "4", "--every", "2",
                          "--out-dir", str(tmp_path), f"data_dir={data_dir}"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in lines] == ["step 2", "step 4"]
    assert all("post spread" in line and "prior z" in line and "prior std" in line for line in lines)


def test_the_noise_scale_reads_the_bounded_std_against_the_means_spread():
    """A posterior net that asks for std e^20 and gives every response the same mean reads as
    std near 1 (the bound) against a spread of 0: the runaway the readout is for."""
    import torch
    from vhred.config import ModelConfig
    from vhred.models import build
    model = build(ModelConfig(model="dialogwae", emb_dim=8, utt_hidden=8, ctx_hidden=8, dec_hidden=8,
                              z_dim=4, latent_hidden=8), 40).eval()
    with torch.no_grad():
        model.posterior_net.logvar.bias.fill_(40.0)
        model.posterior_net.logvar.weight.zero_()
        model.posterior_net.mean.weight.zero_()
    line = dialogwae_codes.noise_scale(model, torch.randn(6, 8), torch.randn(6, 16))
    assert "posterior std 1, means' spread 0" in line and "prior std" in line


def test_the_mixture_measures_of_a_prior_at_its_start():
    """Equal weights and one mean for every component: entropy ln K, distance 0, and the std a
    log-variance of 0 gives under the noise's bound (below 1)."""
    import math
    import torch
    from vhred.config import ModelConfig
    from vhred.models import build
    from vhred.models.dialogwae import bounded
    model = build(ModelConfig(model="dialogwae", gmp_components=3, emb_dim=8, utt_hidden=8, ctx_hidden=8,
                              dec_hidden=8, z_dim=4, latent_hidden=8), 40).eval()
    with torch.no_grad():
        for layer in (model.prior_net.weights, model.prior_net.components.mean, model.prior_net.components.logvar):
            layer.weight.zero_()
            layer.bias.zero_()
    line = dialogwae_codes.mixture(model, torch.randn(5, 8))
    std = math.exp(0.5 * bounded(torch.zeros(1)).item())
    assert f"mixture entropy {math.log(3):.3f}" in line and f"component std {std:.3f}" in line and std < 0.8
    assert "distance between means 0.000" in line
    model.k = 1
    assert dialogwae_codes.mixture(model, torch.randn(5, 8)) == ""


def test_the_codes_of_a_trained_checkpoint(tiny_cfg, capsys):
    from vhred.train import train
    run = train(tiny_cfg("model=dialogwae", "gmp_components=3", "max_steps=4"), log=lambda *_: None).dir
    dialogwae_codes.main(["--checkpoint", run])
    out = capsys.readouterr().out
    assert "post spread" in out and "prior z" in out and "mixture entropy" in out
