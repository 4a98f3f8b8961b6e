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
    assert all("post spread" in line and "prior z" in line for line in lines)
