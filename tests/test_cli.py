"""The `vhred` command: subcommands, complete --help texts, one-line errors; eval finds its data."""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

from tests.conftest import ROOT
from vhred import __main__ as vhred_main
from vhred import cli, files, loading, sources
from vhred.errors import DataError

SUBCOMMANDS = list(vhred_main.COMMANDS)   # every subcommand, so a new one cannot be left out


class Parsed(Exception):
    """Raised instead of parsing: carries the parser a command built."""


@pytest.fixture
def parser_of(monkeypatch):
    """The argparse parser behind `vhred <name>`, caught as the command is about to parse."""
    def catch(self, *args, **kwargs):
        raise Parsed(self)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    monkeypatch.setattr(cli.Parser, "parse_args", catch)   # the commands' own
    monkeypatch.setattr(cli, "INVOKED_AS", None)

    def get(name: str) -> argparse.ArgumentParser:
        with pytest.raises(Parsed) as e:
            vhred_main.main([name])
        return e.value.args[0]
    return get


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_flag_has_help_and_its_default_and_the_program_is_named_as_typed(name, parser_of):
    p = parser_of(name)
    assert p.prog == f"vhred {name}"
    for action in p._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        flag = "/".join(action.option_strings) or action.dest
        said = re.sub(r"\(default[^)]*\)", "", action.help or "").strip()
        assert len(said) > 10, f"vhred {name} {flag} has no help text"
        switch = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
        if action.option_strings and not (switch or action.required):
            assert "default" in action.help, f"vhred {name} {flag}: its help does not give the default"


@pytest.mark.parametrize("name", ["chat", "generate", "eval", "serve"])
def test_the_same_flag_means_the_same_everywhere(name, parser_of):
    flags = {a.dest: a for a in parser_of(name)._actions}
    assert flags["device"].default == "auto" and "auto" in flags["device"].help
    assert flags["checkpoint"].default is None and "newest runs/*/best.pt" in flags["checkpoint"].help


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        vhred_main.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in SUBCOMMANDS)


def test_compares_help_tells_all_it_measures(capsys):
    """Its description, cut at the first blank line, ended on "the same way:" before the list."""
    with pytest.raises(SystemExit):
        vhred_main.main(["compare", "--help"])
    out = capsys.readouterr().out
    assert "DialogWAE's protocol  BLEU recall" in out and "R@1 and MRR" in out and "vhred nearest" in out


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_a_malformed_flag_is_one_error_line_that_names_the_command_not_its_usage(name, capsys, monkeypatch):
    monkeypatch.setattr(cli, "INVOKED_AS", None)
    with pytest.raises(SystemExit) as e:
        vhred_main.main([name, "--no-such-flag"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: vhred {name}"), err
    assert f"`vhred {name}" in err and "--help` lists the flags" in err


@pytest.mark.parametrize("argv, says", [
    (["generate", "--checkpoint", "runs/x", "--input", "", "--output", "o.jsonl"], "a file name is empty"),
    (["rate", "score", "--key", "", "--answers", "a.txt"], "--key is empty"),
    (["plot", ""], "the run folder is empty"),
    (["export", "", "exported/x"], "the checkpoint is empty")])
def test_an_empty_path_is_named_as_empty(argv, says, capsys, tmp_path, monkeypatch):
    """`--input ''` said "error:  not found", naming no file and nothing to do."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        vhred_main.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and says in err and "give" in err, err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("argv", [["rate", "score", "--key", "k", "--answers", "a", "--bogus"],
                                  ["latent", "plot", "--bogus"]])
def test_a_subcommands_unknown_flag_names_the_subcommand_whose_help_lists_its_flags(argv, capsys, monkeypatch):
    monkeypatch.setattr(cli, "INVOKED_AS", None)
    with pytest.raises(SystemExit) as e:
        vhred_main.main(argv)
    err = capsys.readouterr().err
    name = " ".join(argv[:2])
    assert e.value.code == 2 and err.count("\n") == 1 and f"`vhred {name} --help` lists the flags" in err, err


@pytest.mark.parametrize("argv, message", [
    (["chat", "--num-samples", "0"], "--num-samples must be between 1 and 100 in the chat, got 0"),
    (["generate", "--max-len", "-3", "--input", "x", "--output", "y"], "max_len must be between 1"),
    (["eval", "--max-contexts", "-1"], "--max-contexts must be between 0 and"),
    (["serve", "--port", "70000"], "--port must be between 0 and 65535"),
    (["serve", "--max-batch", "0"], "--max-batch must be positive"),
    (["serve", "--host", ""], "--host is empty; give the address to listen on"),   # '' would be every interface
    (["serve", "--host", "::1"], "--host ::1: IPv6 addresses are not supported; give an IPv4 address"),
    (["serve", "--allowed-hosts", "*"], "--allowed-hosts takes host names (letters, digits, '.', '-'; no port, no wildcard), got '*'"),
    (["serve", "--allowed-hosts", "vhred.example.org", ""], "got ''; IP addresses and localhost are always allowed"),
    (["serve", "--allowed-hosts", "example.org:8000"], "no port"),
    (["bench", "--steps", "0"], "--steps, --clients and --max-batch must be at least 1"),
    (["bench", "--out", os.path.join(ROOT, "vhred")], "/vhred is a folder; give the path of a .json file"),
    (["bench", "--clients", "4", "--seconds", "3"], "--clients, --seconds apply only with --serve"),
    (["bench", "--serve", "--wait-ms", "nan"], "--wait-ms must be a number of milliseconds, got nan"),
    (["bench", "precision=bf16", "--precisions", "fp32"], "give --precisions or precision=, not both"),
    (["compare", "model=cvae"], "model is set by the rows themselves (--rows picks them): leave model= out"),
    (["compare", "name=x"], "name= is set by compare for every row; use --out-dir (the rows train into"),
    (["compare", "out_dir=runs/x"], "out_dir= is set by compare for every row; use --out-dir instead"),
    (["compare", "max_steps=50"], "max_steps= is set by compare for every row; use --steps instead"),
    (["critic", "--checkpoint", "x", "--ratings", "y", "--lr", "nan"], "--lr must be a number between 0 and 1, got nan"),
    (["critic", "--checkpoint", "x", "--ratings", "y", "--lr", "0"], "--lr must be above 0"),
    (["export", "runs/x", ""], "the folder to write is empty"),
    (["bench", "--configs", ""], "--configs takes config files"),
    (["bench", "--out", os.path.join(ROOT, "README.md", "b.json")], "/README.md cannot be made"),
    (["compare", "--measure", "-1"], "--measure not negative"),
    (["compare", "--rows", "hred,vhred,hred"], "--rows names hred more than once; give each row once"),
    (["compare", "--reference", ""], "--reference is empty; give a finished run folder"),
    (["compare", "--reference", os.path.join(ROOT, "docs")], "/docs holds no best.pt: give a finished run folder"),
    (["compare", "--table", ""], "--table '' is not a table's path; give one without .md/.json"),
    (["compare", "--table", os.path.join(ROOT, "vhred")], "is not a table's path"),
    (["compare", "--table", os.path.join(ROOT, "README.md", "t")], "/README.md is a file, not a folder"),
    (["compare", "--out-dir", os.path.join(ROOT, "README.md")], "/README.md is a file; give a folder for the rows' runs"),
    (["nearest", "--previous-weight", "nan"], "--previous-weight between 0 and 100"),
    (["nearest", "--previous-weight", "1e308"], "--previous-weight between 0 and 100"),   # weight x idf overflowed
    (["nearest", "data=/nonexistent/talk.jsonl"], "data file /nonexistent/talk.jsonl not found"),   # no model trained on it
    (["nearest", "--out", os.path.join(ROOT, "README.md")], "/README.md is a file; give a folder for the report"),
    (["plot", os.path.join(ROOT, "vhred")], "/vhred/metrics.jsonl not found; is " + ROOT + "/vhred a run folder?"),
    (["serve", "--device", "tpu"], "device must be auto, cpu or cuda"),
    (["serve", "--checkpoint", "/nonexistent/run"], "checkpoint /nonexistent/run not found"),
    (["chta"], "unknown command 'chta' (did you mean chat?)"),
    (["checkpoint", os.path.join(ROOT, "vhred")], "/vhred is a run or checkpoint; this command times a config's model"),
    (["checkpoint", "runs/x/best.pt"], "`vhred checkpoint upgrade runs/x/best.pt` converts a format-1 checkpoint"),
    (["checkpoint", os.path.join(ROOT, "configs", "tiny.yaml"), "--cache", "/nonexistent"],
     "--cache /nonexistent is not a prepared data folder"),
    (["checkpoint", os.path.join(ROOT, "configs", "tiny.yaml"), "--cache", ""], "--cache '' is not a prepared data folder"),
    (["checkpoint", ""], "the config is empty; give a config file (configs/*.yaml), or leave it out"),   # it takes no --config
    (["checkpoint", "upgrad", "old/best.pt"], "unknown subcommand 'upgrad' (did you mean upgrade?)"),
    (["checkpoint", "nope.yaml"], "config file nope.yaml not found; give a YAML file's path, or one of the shipped configs/"),
    (["chat", "--checkpoint", "/dev/null"], "checkpoint /dev/null is not a regular file"),
    (["generate", "--input", "README.md", "--output", ""], "'' is not a file name"),
    *[([*cmd, "--checkpoint", ""], "--checkpoint is empty; give a run folder")   # an unset $RUN: not the newest run
      for cmd in (["chat"], ["eval"], ["rank"], ["serve"], ["latent", "plot"],
                  ["generate", "--input", os.path.join(ROOT, "eval", "ratings", "2026-12-01-families", "contexts.jsonl"),
                   "--output", os.path.join(ROOT, "eval", "never-written.jsonl")])],   # refused before writing
])
def test_impossible_values_are_one_line_errors(argv, message, capsys, monkeypatch):
    monkeypatch.setattr(cli, "INVOKED_AS", None)
    with pytest.raises(SystemExit) as e:
        vhred_main.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ") and message in err


def test_an_output_file_that_cannot_be_created_names_the_path_asked_for():
    with pytest.raises(OSError) as failed:   # exit 1, as every operating-system error
        with files.output_file("/proc/x.jsonl") as f:
            f.write("x")
    assert failed.value.filename == "/proc/x.jsonl"   # not its .tmp<pid>


def test_a_commands_lines_end_at_newlines_only_and_the_line_cap_counts_bytes(tmp_path, monkeypatch):
    """What json_line writes reads back line for line: a U+2028 or U+0085 inside a JSON string
    does not end its line; \r\n does; and the cap is of a line's UTF-8 bytes, not characters."""
    from vhred.errors import InputError
    rows = [{"context": ["a\u2028b", "c\x85d\x0ce"]}, {"context": ["f"]}]
    path = tmp_path / "c.jsonl"
    path.write_text("".join(files.json_line(r) + "\n" for r in rows), encoding="utf-8")
    assert [json.loads(line) for line in files.text_lines(str(path))] == rows
    path.write_bytes(b"x\r\ny\n\nz")
    assert files.text_lines(str(path)) == ["x", "y", "", "z"]
    path.write_bytes(b"")
    assert files.text_lines(str(path)) == []
    monkeypatch.setattr(files, "MAX_LINE_BYTES", 10)
    path.write_text("\u20ac" * 4 + "\n", encoding="utf-8")   # 4 characters, 12 bytes
    with pytest.raises(InputError, match="line 1 is longer than"):
        files.text_lines(str(path))


def test_the_console_script_is_declared_and_importable():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    module, _, func = project["scripts"]["vhred"].partition(":")
    assert (module, func) == ("vhred.__main__", "main")


@pytest.mark.slow   # a subprocess: the command as a user types it
def test_python_dash_m_vhred_runs_a_subcommand():
    r = subprocess.run([sys.executable, "-m", "vhred", "chat", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.startswith("usage: vhred chat")
    r = subprocess.run([sys.executable, "-m", "vhred.chat", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.startswith("usage: python -m vhred.chat")


# --- vhred eval finds the data its checkpoint was trained on -----------------------------------

def test_a_checkpoint_remembers_its_data_and_eval_finds_it_without_the_environment(trained, dailydialog_zip,
                                                                                    tmp_path, monkeypatch):
    from vhred.sources import split_dialogues
    _, cfg, _ = loading.load_model(trained["vhred"])
    assert cfg.data_source == os.path.abspath(dailydialog_zip)
    monkeypatch.delenv("DAILYDIALOG_SRC", raising=False)
    cfg.data_dir = str(tmp_path / "data")   # nothing here, and nothing may be created
    assert len(split_dialogues(cfg, "test")) == cfg.max_dialogues
    assert not os.path.exists(tmp_path / "data")


def test_eval_that_cannot_find_its_data_says_so_and_leaves_no_folders(trained, tmp_path, monkeypatch):
    from vhred.sources import split_dialogues

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")
    _, cfg, _ = loading.load_model(trained["vhred"])
    monkeypatch.delenv("DAILYDIALOG_SRC", raising=False)
    monkeypatch.setattr(sources.urllib.request, "urlopen", offline)
    cfg.data_source, cfg.data_dir = str(tmp_path / "moved.zip"), str(tmp_path / "data")
    with pytest.raises(DataError, match="could not download"):
        split_dialogues(cfg, "test")
    assert os.listdir(tmp_path) == []


# --- run names and curves ----------------------------------------------------------------------

def test_a_run_of_your_own_data_is_named_after_it():
    from vhred.config import load
    tiny = os.path.join(ROOT, "configs", "tiny.yaml")
    assert load(tiny, []).name == "tiny-vhred"
    assert load(tiny, ["data=somewhere/my-chats.jsonl"]).name == "my-chats-tiny-vhred"
    assert load(tiny, ["data=my.jsonl", "model=hred"]).name == "my-tiny-hred"
    assert load(tiny, ["data=my.jsonl", "name=mine"]).name == "mine"
    assert load(tiny, ["data=/home/me/my chats.jsonl"]).name == "my-chats-tiny-vhred"   # no space in the folder


def test_make_passes_a_data_path_with_a_space_as_one_argument():
    import subprocess
    out = subprocess.run(["make", "-n", "train", "DATA=chats/my chats.jsonl", "CONFIG=configs/tiny.yaml"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert '"data=chats/my chats.jsonl"' in out, out


def fake_checkout(tmp_path, python_says_old: bool = False):
    """The Makefile beside a .venv whose python logs each call's arguments, one per line, and
    answers the Makefile's Python version check as an old (< 3.10) or a new one."""
    import shutil
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(os.path.join(ROOT, name), tmp_path / name)
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    python = tmp_path / ".venv" / "bin" / "python"
    python.write_text("#!/bin/sh\n"
                      f'[ "$1" = -c ] && exit {1 if python_says_old else 0}\n'
                      'for a in "$@"; do echo "$a"; done >> calls.log; echo "--" >> calls.log\n')
    python.chmod(0o755)
    (tmp_path / ".venv" / ".installed").touch()   # newer than pyproject.toml: set up
    return tmp_path


def test_make_eval_plots_a_run_whose_path_holds_a_space(tmp_path):
    import subprocess
    repo = fake_checkout(tmp_path)
    for run in ("runs/my run/best.pt", "runs/my run"):
        (repo / "calls.log").unlink(missing_ok=True)
        subprocess.run(["make", "eval", f"RUN={run}"], cwd=repo, capture_output=True, text=True, check=True)
        calls = (repo / "calls.log").read_text().split("--\n")
        assert calls[1].splitlines() == ["-m", "vhred.plot", "runs/my run"], calls


def test_make_refuses_a_venv_of_an_old_python_in_one_line(tmp_path):
    import subprocess
    repo = fake_checkout(tmp_path, python_says_old=True)
    os.utime(repo / ".venv" / ".installed", (0, 0))   # older than pyproject.toml: the set-up runs again
    r = subprocess.run(["make", "venv"], cwd=repo, capture_output=True, text=True)
    assert r.returncode == 2 and "error: .venv was made with a Python older than 3.10" in r.stderr, r.stderr
    assert not (repo / "calls.log").exists()   # nothing installed into it


def test_make_train_on_dailydialog_trains_the_cpu_config_then_its_critic_once(tmp_path):
    """The README's first command ends in the model chat should use: the CPU config's run and its
    reply critic; run again after it ended, it keeps the critic; CRITIC=no and other data skip it."""
    repo = fake_checkout(tmp_path)
    python = repo / ".venv" / "bin" / "python"   # answers --run-dir as vhred.train does
    python.write_text(python.read_text() + 'case "$*" in *--run-dir*) echo "runs/dailydialog-cpu-vhred";; esac\n')
    (repo / "eval").mkdir()
    (repo / "eval" / "critic_rounds.txt").write_text("eval/ratings/a eval/ratings/b\n")

    def make_train(*extra):
        (repo / "calls.log").unlink(missing_ok=True)
        r = subprocess.run(["make", "train", *extra], cwd=repo, capture_output=True, text=True, check=True)
        return [c.splitlines() for c in (repo / "calls.log").read_text().split("--\n")[:-1]], r.stdout

    train = ["-m", "vhred.train", "--config", "configs/dailydialog-cpu.yaml", "data=dailydialog"]
    calls, _ = make_train("DATA=dailydialog")
    assert calls == [train, train + ["--run-dir"], ["-m", "vhred.critic_train", "--checkpoint",
                     "runs/dailydialog-cpu-vhred", "--ratings", "eval/ratings/a", "eval/ratings/b"]], calls
    calls, _ = make_train("DATA=dailydialog", "ARGS=model=hred")   # training settings are not the critic's
    assert calls[0] == train + ["model=hred"] and calls[2][-3:] == ["--ratings", "eval/ratings/a", "eval/ratings/b"]
    run = repo / "runs" / "dailydialog-cpu-vhred"
    run.mkdir(parents=True)
    (run / "best.pt").touch()
    (run / "critic.safetensors").touch()
    os.utime(run / "best.pt", (1, 1))   # the critic is the newer: kept
    calls, out = make_train("DATA=dailydialog")   # a critic older than the readers' table: the table alone
    assert calls == [train, train + ["--run-dir"], ["-m", "vhred.kept", "--checkpoint", "runs/dailydialog-cpu-vhred",
                     "--ratings", "eval/ratings/a", "eval/ratings/b"]] and "newer than its best.pt: kept" in out
    (run / "kept.json").touch()
    calls, out = make_train("DATA=dailydialog")
    assert calls == [train, train + ["--run-dir"]] and "critic.safetensors is newer than its best.pt: kept" in out
    os.utime(run / "critic.safetensors", (0, 0))   # a resumed run wrote a newer best.pt: a new critic
    assert make_train("DATA=dailydialog")[0][-1][:2] == ["-m", "vhred.critic_train"]
    calls, out = make_train("DATA=dailydialog", "CRITIC=no")
    assert calls == [train, train + ["--run-dir"]], calls
    assert "next: .venv/bin/vhred chat --checkpoint runs/dailydialog-cpu-vhred" in out
    own = train[:-1] + ["data=my.jsonl"]
    assert make_train("DATA=my.jsonl")[0] == [own, own + ["--run-dir"]]
    (repo / "calls.log").unlink()
    r = subprocess.run(["make", "train", "DATA=dailydialog", "CRITIC=maybe"], cwd=repo, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: CRITIC takes yes or no"), r.stderr
    assert not (repo / "calls.log").exists()   # refused before anything trains


def test_train_run_dir_prints_the_run_folder_and_trains_nothing(tmp_path, monkeypatch, capsys):
    from vhred import train
    monkeypatch.chdir(tmp_path)
    train.main(["--config", os.path.join(ROOT, "configs", "tiny.yaml"), "data=chats/my chats.jsonl", "model=hred",
                "--run-dir"])
    assert capsys.readouterr().out == os.path.join("runs", "my-chats-tiny-hred") + "\n"
    assert os.listdir(tmp_path) == []


def test_the_curves_show_the_validation_elbo_and_best_pt(trained, tmp_path, monkeypatch):
    import shutil
    from vhred import plot
    run = tmp_path / "run"
    shutil.copytree(trained["vhred"], run)
    labels = []
    original = plot.plot_elbo

    def spy(a, val, *rest):
        original(a, val, *rest)
        labels.extend(line.get_label() for line in a.get_lines())
    monkeypatch.setattr(plot, "plot_elbo", spy)
    assert os.path.isfile(plot.plot(str(run)))
    assert "validation -ELBO (best.pt criterion)" in labels and any(x.startswith("best.pt: ") for x in labels)


def test_the_curves_mark_best_pt_at_the_lowest_finite_validation():
    """A NaN validation is no best.pt (training skips it): the mark goes to the lowest number."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from vhred import plot
    fig, a = plt.subplots()
    plot.plot_elbo(a, [{"step": 29, "elbo_per_token": float("nan")}, {"step": 58, "elbo_per_token": 4.435},
                       {"step": 87, "elbo_per_token": 4.5}])
    assert [x.get_label() for x in a.get_lines()][-1] == "best.pt: 4.435 at step 58"
    plt.close(fig)


@pytest.mark.slow   # builds the wheel `pip install .` installs, and runs from it outside the checkout
def test_the_installed_package_holds_every_module_and_config_and_finds_its_configs(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    for folder in ("vhred", "configs"):
        shutil.copytree(os.path.join(ROOT, folder), src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src),
                    "-w", str(tmp_path / "wheel")], check=True, capture_output=True, timeout=300)
    [wheel] = (tmp_path / "wheel").iterdir()
    with zipfile.ZipFile(wheel) as z:
        packed = set(z.namelist())
        z.extractall(tmp_path / "site")
    shipped = {os.path.relpath(os.path.join(d, n), ROOT) for d, _, names in os.walk(os.path.join(ROOT, "vhred"))
               if "__pycache__" not in d for n in names}
    assert shipped <= packed, sorted(shipped - packed)
    configs = {f"vhred/configs/{n}" for n in os.listdir(os.path.join(ROOT, "configs")) if n.endswith(".yaml")}
    assert configs and configs <= packed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()   # no configs/ here: `--config configs/tiny.yaml` is the installed package's
    code = "import vhred; from vhred.config import load; print(vhred.__file__, load('configs/tiny.yaml', []).arch.emb_dim)"
    run = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(tmp_path / "site")})
    import yaml
    with open(os.path.join(ROOT, "configs", "tiny.yaml")) as f:
        tiny = yaml.safe_load(f)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [str(tmp_path / "site" / "vhred" / "__init__.py"), str(tiny["arch"]["emb_dim"])]
