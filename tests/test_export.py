"""vhred export: the shared model folder (model.safetensors, config.json, tokenizer.model, model
card) answers as its checkpoint does, loads without torch.load, and a broken folder is one line.
TensorBoard logging: the event files hold metrics.jsonl's figures."""
import json
import os
import shutil
import sys

import pytest
import torch
import yaml

import vhred
from vhred import checkpoint, export, generate, modelfolder
from vhred.errors import CheckpointError, ConfigError, InputError

HISTORY = ["Hi! Where is the station?", "Two blocks down, on the left.", "Thanks. Is it far?"]
CANDIDATES = ["No, five minutes on foot.", "I like apples.", ""]


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """{model: the folder `vhred export` wrote from the tiny trained run}."""
    out = tmp_path_factory.mktemp("exported")
    folders = {}
    for kind, run in trained.items():
        folders[kind] = str(out / kind)
        export.main([run, folders[kind]])
    return folders


def no_torch_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was called")
    monkeypatch.setattr(torch, "load", refuse)


def test_export_writes_the_four_files_and_the_weights_are_the_checkpoints(trained, exported):
    folder = exported["vhred"]
    assert sorted(os.listdir(folder)) == ["README.md", "config.json", "model.safetensors", "tokenizer.model"]
    state = checkpoint.load(trained["vhred"])
    from safetensors.torch import load_file   # read by safetensors alone, as another program would
    header = json.load(open(os.path.join(folder, "config.json")))
    weights = load_file(os.path.join(folder, "model.safetensors"))
    for name, source in header["tied_weights"].items():
        weights[name] = weights[source]
    assert weights.keys() == state["model"].keys()
    assert all(torch.equal(weights[k], state["model"][k]) for k in weights)
    assert header["format"] == "vhred-model-folder" and header["format_version"] == 1
    assert header["config"] == state["config"] and header["model_type"] == "vhred"
    assert open(os.path.join(folder, "tokenizer.model"), "rb").read() == checkpoint.tokenizer_bytes(state)


def test_model_card_shows_the_runs_best_validation_figures(trained, exported):
    vals = [json.loads(line) for line in open(os.path.join(trained["vhred"], "metrics.jsonl"))]
    best = min((r for r in vals if r["split"] == "val"), key=lambda r: r["elbo_per_token"])
    card = open(os.path.join(exported["vhred"], "README.md")).read()
    row = next(line for line in card.splitlines() if line.startswith("| best |"))
    assert row.startswith(f"| best | {best['step']} | {best['elbo_per_token']:.3f} | {best['ppl']:.3f} |")
    assert "DailyDialog" in card and 'vhred.load(".")' in card and "`vhred chat --checkpoint .`" in card
    front = yaml.safe_load(card.split("---\n")[1])   # the metadata a model hub reads
    assert front["library_name"] == "vhred" and front["datasets"] == ["daily_dialog"] and front["license"] == "other"
    assert front["license_name"] == "dailydialog-cc-by-nc-sa-4.0"   # the Hub asks for both with license: other
    assert front["license_link"] == "https://creativecommons.org/licenses/by-nc-sa/4.0/"
    assert front["tags"] == ["dialogue", "vhred", "safetensors"]   # the model type is vhred: named once
    cfg = json.load(open(os.path.join(trained["vhred"], "config.json")))   # the schedule as schedule.py applies it
    assert export.kl_schedule(cfg) in card
    assert export.kl_schedule({**cfg, "kl_schedule": "cyclical", "kl_cycle_steps": 0, "kl_warmup_steps": 100,
                               "kl_max": 1.0, "free_bits": 0.05}) == \
        "KL weight cyclical: each 200 steps rises over 100 to 1.0, free bits 0.05 nats a dimension"


def test_the_card_of_a_family_without_a_kl_term_claims_no_kl_schedule_or_bound(exported):
    """HRED's and DialogWAE's cards spoke of a KL weight rising and of an ELBO bound."""
    card = open(os.path.join(exported["hred"], "README.md")).read()
    assert "KL weight" not in card and "this family has no KL term, so it is no ELBO" in card
    row = next(line for line in card.splitlines() if line.startswith("| best |"))
    assert row.split(" | ")[5] == "–"   # kl_per_utt
    assert "an upper bound on the NLL" in open(os.path.join(exported["vhred"], "README.md")).read()


@pytest.mark.parametrize("kind", ["vhred", "hred"])
def test_folder_answers_as_the_checkpoint_without_torch_load(trained, exported, kind, monkeypatch):
    from_pt = vhred.load(trained[kind], device="cpu")
    no_torch_load(monkeypatch)
    from_folder = vhred.load(exported[kind], device="cpu")
    assert from_folder.checkpoint == exported[kind]
    for seed in (0, 7):
        assert from_folder.respond(HISTORY, n=3, seed=seed) == from_pt.respond(HISTORY, n=3, seed=seed)
    assert from_folder.score(HISTORY, CANDIDATES) == from_pt.score(HISTORY, CANDIDATES)


def test_health_names_an_exported_folder_by_its_own_name_not_the_one_above(exported, tmp_path):
    from vhred.serve import public_name
    inside = tmp_path / "alice" / "mymodel"
    shutil.copytree(exported["vhred"], inside)
    assert public_name(vhred.load(str(inside), device="cpu").checkpoint) == "mymodel"
    assert public_name(str(tmp_path / "run" / "best.pt")) == "run/best.pt"


def test_generate_command_reads_the_folder(trained, exported, tmp_path, monkeypatch):
    src = tmp_path / "contexts.jsonl"
    src.write_text(json.dumps({"context": HISTORY}) + "\n" + json.dumps({"context": ["Where is the bank?"]}) + "\n")
    outputs = []
    for where in (trained["vhred"], exported["vhred"]):
        out = tmp_path / f"out{len(outputs)}.jsonl"
        if where == exported["vhred"]:
            no_torch_load(monkeypatch)
        generate.main(["--checkpoint", where, "--input", str(src), "--output", str(out), "--num-samples", "3"])
        outputs.append(out.read_text())
    assert outputs[0] == outputs[1] and outputs[0].count("\n") == 2


def broken_copy(exported, tmp_path, name: str) -> str:
    folder = str(tmp_path / name)
    shutil.copytree(exported["vhred"], folder)
    return folder


def edit_config(folder: str, change) -> None:
    path = os.path.join(folder, "config.json")
    header = json.load(open(path))
    change(header)
    json.dump(header, open(path, "w"))


def one_line_error(folder: str, capsys) -> str:
    """The chat command's exit code and stderr on the folder: 2 and one line."""
    from vhred import chat
    with pytest.raises(SystemExit) as e:
        chat.main(["--checkpoint", folder])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    return err


def test_a_broken_folder_is_a_one_line_error(exported, tmp_path, capsys):
    missing = broken_copy(exported, tmp_path, "missing")
    os.remove(os.path.join(missing, "tokenizer.model"))
    assert "without tokenizer.model" in one_line_error(missing, capsys)

    no_weights = broken_copy(exported, tmp_path, "no-weights")
    os.remove(os.path.join(no_weights, "model.safetensors"))   # still told apart from a run folder
    assert "without model.safetensors" in one_line_error(no_weights, capsys)

    shapes = broken_copy(exported, tmp_path, "shapes")
    edit_config(shapes, lambda h: h["config"]["arch"].update(emb_dim=h["config"]["arch"]["emb_dim"] + 1))
    assert "do not fit the model its config describes" in one_line_error(shapes, capsys)

    cut = broken_copy(exported, tmp_path, "cut")
    weights = os.path.join(cut, "model.safetensors")
    data = open(weights, "rb").read()
    open(weights, "wb").write(data[:len(data) // 2])
    assert "does not match the weights_sha256" in one_line_error(cut, capsys)
    edit_config(cut, lambda h: h.pop("weights_sha256"))   # no hash: safetensors itself refuses the file
    assert "not a readable safetensors file" in one_line_error(cut, capsys)

    bad_json = broken_copy(exported, tmp_path, "json")
    open(os.path.join(bad_json, "config.json"), "w").write('{"format": "vhred-model-folder", ')
    assert "not valid JSON" in one_line_error(bad_json, capsys)

    swapped = broken_copy(exported, tmp_path, "swapped")   # another run's tokenizer of the same size loaded silently
    from vhred.tokenizer import train_tokenizer
    size = json.load(open(os.path.join(swapped, "config.json")))["vocab_size"]
    train_tokenizer((f"line {i} of another corpus with words" for i in range(3000)), size,
                    os.path.join(swapped, "tokenizer.model"), 3000, model_type="word")
    assert "is not the tokenizer these weights were trained with" in one_line_error(swapped, capsys)

    newer = broken_copy(exported, tmp_path, "newer")
    edit_config(newer, lambda h: h.update(format_version=2))
    assert "format_version 2" in one_line_error(newer, capsys)
    with pytest.raises(CheckpointError):
        vhred.load(newer)


def test_export_refuses_a_folder_holding_other_files_and_replaces_its_own(trained, exported, tmp_path, capsys):
    run_copy = tmp_path / "busy"
    (run_copy / "photos.tmp").mkdir(parents=True)   # named like a crashed export's folder, but the user's
    (run_copy / "photos.tmp" / "a.jpg").write_text("precious")
    (run_copy / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="already holds other files"):
        export.export(trained["vhred"], str(run_copy))
    assert sorted(os.listdir(run_copy)) == ["notes.txt", "photos.tmp"] and (run_copy / "photos.tmp" / "a.jpg").exists()
    with pytest.raises(InputError, match="already an exported model folder"):
        export.export(exported["vhred"], str(tmp_path / "again"))
    again = broken_copy(exported, tmp_path, "again")
    export.export(trained["hred"], again)   # an earlier export: replaced
    assert json.load(open(os.path.join(again, "config.json")))["model_type"] == "hred"
    assert vhred.load(again).config.arch.model == "hred"
    notes = tmp_path / "notes"   # a README.md alone is a user's, not an export's model card
    notes.mkdir()
    (notes / "README.md").write_text("my notes")
    with pytest.raises(InputError, match="already holds other files \\(README.md\\)"):
        export.export(trained["hred"], str(notes))
    assert (notes / "README.md").read_text() == "my notes"
    (tmp_path / "again" / "results-ours-test.json").write_text("{}")   # measured of the HRED export
    export.export(trained["hred"], again)   # the same weights again: what was measured of them stays
    with pytest.raises(InputError, match="holds an export of other weights and what was measured of them"):
        export.export(trained["vhred"], again)
    assert vhred.load(again).config.arch.model == "hred"
    # a run of the same name stopped at the same step (trained again with another seed, say): other weights
    from vhred import checkpoint
    state = checkpoint.load(os.path.join(trained["hred"], "best.pt"))
    state["model"] = {k: v + 1e-3 if v.is_floating_point() else v for k, v in state["model"].items()}
    (tmp_path / "retrained").mkdir()
    checkpoint.save(state, str(tmp_path / "retrained" / "best.pt"))
    with pytest.raises(InputError, match="holds an export of other weights and what was measured of them"):
        export.export(str(tmp_path / "retrained"), again)


def test_a_re_export_replaces_links_and_never_writes_through_them(trained, exported, tmp_path):
    """A hub cache's snapshot is links into its blobs: exporting into it again replaces each link
    with the new file and leaves the files the links pointed at as they were."""
    folder, outside = tmp_path / "snapshot", tmp_path / "blobs"
    shutil.copytree(exported["vhred"], folder)
    outside.mkdir()
    for name in os.listdir(folder):
        os.replace(folder / name, outside / name)
        (folder / name).symlink_to(outside / name)
    before = {name: (outside / name).read_bytes() for name in os.listdir(outside)}
    export.export(trained["vhred"], str(folder))
    assert {name: (outside / name).read_bytes() for name in os.listdir(outside)} == before
    assert not any(os.path.islink(folder / name) for name in os.listdir(folder))
    assert vhred.load(str(folder)).respond(["Hello!"], n=1, seed=0)[0].text == \
        vhred.load(trained["vhred"]).respond(["Hello!"], n=1, seed=0)[0].text


def test_untie_stores_shared_tensors_once():
    a = torch.randn(4, 3)
    tensors, tied = modelfolder.untie({"embed.weight": a, "lm_head.weight": a, "other": a.clone()})
    assert set(tensors) == {"embed.weight", "other"} and tied == {"lm_head.weight": "embed.weight"}


# --- TensorBoard ---

def test_tensorboard_events_hold_the_figures_of_metrics_jsonl(tiny_cfg):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from vhred.train import train
    cfg = tiny_cfg("tensorboard=true", "max_steps=6", "log_every=2", "eval_every=3", "name=tb")
    run = train(cfg, log=lambda *_: None)
    records = [json.loads(line) for line in open(os.path.join(run.dir, "metrics.jsonl"))]
    events = EventAccumulator(os.path.join(run.dir, "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = {}
    for r in records:
        for key, value in r.items():
            if key not in ("split", "step", "epoch") and isinstance(value, (int, float)) and not isinstance(value, bool):
                expected.setdefault(f"{r['split']}/{key}", []).append((r["step"], value))
    assert {"train/loss", "train/nll_per_token", "val/elbo_per_token", "val/active_units"} <= tags
    assert tags == set(expected)
    assert {s for s, _ in expected["val/elbo_per_token"]} == {3, 6}
    for tag, points in expected.items():
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in points], tag
        assert [v for _, v in got] == pytest.approx([v for _, v in points], rel=1e-6), tag


def test_tensorboard_drops_the_events_a_resume_replays(tiny_cfg):
    """A kill after events past last.pt's step: as in metrics.jsonl, each step is there once."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from vhred.train import train
    flags = ("tensorboard=true", "log_every=2", "save_every=4", "name=tbkill")
    run = train(tiny_cfg(*flags, "max_steps=6"), log=lambda *_: None)
    at4 = train(tiny_cfg("max_steps=4", "save_every=4", "name=at4"), log=lambda *_: None)
    shutil.copy(os.path.join(at4.dir, "last.pt"), os.path.join(run.dir, "last.pt"))   # killed after step 6's rows
    train(tiny_cfg(*flags, "max_steps=8"), log=lambda *_: None)
    events = EventAccumulator(os.path.join(run.dir, "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4, 6, 8]


def test_tensorboard_holds_a_validation_once_after_a_kill_between_its_save_and_it(tiny_cfg):
    """last.pt saved at step 6 before step 6's validation, killed after it: the resume validates
    step 6 again. TensorBoard purges by step, so it held two validations at 6; and the purge must
    not drop step 5's and 6's training rows, which metrics.jsonl keeps and the resume does not replay."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from vhred.train import train
    flags = ("tensorboard=true", "log_every=1", "eval_every=4", "max_steps=6", "name=tbval")
    run = train(tiny_cfg(*flags), log=lambda *_: None)
    last = os.path.join(run.dir, "last.pt")
    state = checkpoint.load(last)
    state["progress"]["last_val_step"] = 4   # as saved before step 6's validation
    checkpoint.save(state, last)
    train(tiny_cfg(*flags), log=lambda *_: None)
    events = EventAccumulator(os.path.join(run.dir, "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("val/elbo_per_token")] == [4, 6]
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    rows = [json.loads(line) for line in open(os.path.join(run.dir, "metrics.jsonl"))]
    assert [r["step"] for r in rows if r["split"] == "val"] == [4, 6]


def test_tensorboard_missing_is_a_one_line_config_error(monkeypatch):
    from vhred.train import tensorboard_writer_class
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)   # import fails as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'vhred\[tb\]'"):
        tensorboard_writer_class()


def test_the_docs_standalone_reader_runs_without_vhred_or_torch(exported):
    """docs/export.md's reading snippet, run as written: it needs neither vhred nor torch."""
    import subprocess

    from tests.conftest import ROOT
    doc = open(os.path.join(ROOT, "docs", "export.md"), encoding="utf-8").read()
    snippet = doc.split("<!-- standalone")[1].split("```python\n")[1].split("```")[0]
    guard = "import sys\nsys.modules['torch'] = None\nsys.modules['vhred'] = None\n"   # importing either fails
    r = subprocess.run([sys.executable, "-c", guard + snippet, exported["vhred"]], capture_output=True,
                       text=True, timeout=120, cwd="/")
    assert r.returncode == 0, r.stderr
    first, shapes, pieces = r.stdout.splitlines()
    assert first.startswith("vhred {'model': 'vhred'") and "'embed.weight': (" in shapes and "lm_head.weight" in shapes
    assert pieces.startswith("['")


def test_the_model_cards_best_row_is_the_lowest_finite_validation():
    """A NaN validation is no best.pt (training skips it), in the card as in the curves."""
    rows = export.validation_table([{"step": 29, "elbo_per_token": float("nan")}, {"step": 58, "elbo_per_token": 4.435}])
    assert any(line.startswith("| best | 58 |") for line in rows)
