"""What a command leaves behind when it is stopped (Ctrl-C, SIGTERM) or the disk fills while it
writes: the old file or folder whole, no temporary beside it, and one line that names the file."""
import dataclasses
import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import pytest
import torch

import vhred
from vhred import answers, cli, critic, export, files, latent, plot, stops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextmanager
def files_at_most(size: int):
    """No file of this process may grow past size bytes (RLIMIT_FSIZE): a write past it fails with
    EFBIG as a full disk's fails with ENOSPC, in the same place, whoever writes (safetensors too)."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    signal_was = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # else the kernel's signal ends the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, limit[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
        signal.signal(signal.SIGXFSZ, signal_was)


def contents(folder) -> dict:
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


def test_sigterm_ends_a_command_as_ctrl_c_does_with_143_and_no_temporary(tmp_path, capsys):
    out = tmp_path / "out.json"
    out.write_text("old")

    @cli.command
    def main(argv=None):
        with files.output_file(str(out)) as f:
            f.write("half of the new")
            os.kill(os.getpid(), signal.SIGTERM)   # kill, systemd, timeout, a cancelled CI job
            time.sleep(5)
            f.write(" file")

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stop:
        main([])
    assert stop.value.code == 143 and capsys.readouterr().err == "interrupted\n"
    assert out.read_text() == "old" and os.listdir(tmp_path) == ["out.json"]
    assert signal.getsignal(signal.SIGTERM) is before   # a command called from Python leaves it as it was


@pytest.mark.slow   # a subprocess: the chat waiting for its next line, stopped as a service is
def test_sigterm_ends_the_chat_with_143(trained):
    proc = subprocess.Popen([sys.executable, "-m", "vhred.chat", "--checkpoint", trained["hred"]], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        proc.stdin.write("Hello!\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip()   # it answered, and waits for the next line
        proc.terminate()
        assert proc.wait(timeout=60) == 143 and "Traceback" not in proc.stderr.read()
    finally:
        proc.kill()


def test_a_full_disk_names_the_file_it_could_not_write(tmp_path):
    """A failed write() names no file: "No space left on device" alone does not say what was lost."""
    out = tmp_path / "out.txt"
    with pytest.raises(OSError) as failed:
        with files.output_file(str(out)):
            raise OSError(errno.ENOSPC, "No space left on device")   # as f.write() raises it
    assert failed.value.filename == str(out) and os.listdir(tmp_path) == []

    def half(tmp):
        open(tmp, "w").write("half")
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OSError) as failed:
        files.atomic(str(out), half)
    assert failed.value.filename == str(out) and os.listdir(tmp_path) == []


def test_a_critic_and_an_answer_table_that_fill_the_disk_are_named_errors_that_leave_nothing(vhred_model, tmp_path):
    """safetensors' own writer failed with its SafetensorError (a traceback); answers.json.tmp stayed."""
    model, cfg, _ = vhred_model
    judge = critic.from_model(model, cfg.arch)
    state = {"weights": judge.state_dict(), "arch": dataclasses.asdict(cfg.arch), "vocab_size": judge.encoder.vocab_size}
    table = {"asked": {"when": 3}, "pmi": {"when": {f"word{i}": 1.5 for i in range(1000)}}}   # 20 KB
    with files_at_most(4096):
        with pytest.raises(OSError) as failed:
            critic.save(state, str(tmp_path))
        assert failed.value.filename == str(tmp_path / critic.FILE)
        with pytest.raises(OSError) as failed:
            answers.save(table, str(tmp_path))
        assert failed.value.filename == str(tmp_path / answers.FILE)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("stop", ["full disk", "ctrl-c"])
def test_an_export_stopped_midway_leaves_the_earlier_export_whole(trained, tmp_path, monkeypatch, stop, capsys):
    """Exported file by file, a stop after the weights left new weights beside the old config,
    critic and card."""
    folder = tmp_path / "shared"
    export.main([trained["hred"], str(folder)])
    before = contents(folder)
    if stop == "ctrl-c":   # while the model card, the last file, is written
        monkeypatch.setattr(export.pathlib.Path, "write_bytes", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(SystemExit) as stopped:
            export.main([trained["vhred"], str(folder)])
        assert stopped.value.code == 130
    else:
        with files_at_most(64 * 1024), pytest.raises(SystemExit) as stopped:
            export.main([trained["vhred"], str(folder)])
        err = capsys.readouterr().err
        assert stopped.value.code == 1 and err == f"error: File too large ({folder})\n", err
    assert contents(folder) == before and os.listdir(tmp_path) == ["shared"]
    assert vhred.load(str(folder)).config.arch.model == "hred"   # contents() would fail on a leftover .tmp folder


def test_a_re_export_of_the_same_weights_keeps_what_was_measured(trained, tmp_path):
    folder = tmp_path / "shared"
    export.main([trained["vhred"], str(folder)])
    (folder / "results-ours-test.json").write_text('{"bleu": 1}')
    export.main([trained["vhred"], str(folder)])
    assert (folder / "results-ours-test.json").read_text() == '{"bleu": 1}'
    assert sorted(os.listdir(tmp_path)) == ["shared"]


def test_an_export_into_the_folder_the_shell_stands_in_replaces_its_files(trained, tmp_path, monkeypatch):
    """Swapped whole, the folder would be a new one, and the shell left in a deleted folder."""
    folder = tmp_path / "here"
    folder.mkdir()
    monkeypatch.chdir(folder)
    export.main([trained["hred"], "."])
    (folder / "critic.safetensors").write_bytes(b"an earlier export's critic")
    export.main([trained["vhred"], "."])
    assert os.path.samefile(os.getcwd(), folder) and vhred.load(".").config.arch.model == "vhred"
    assert sorted(os.listdir(".")) == ["README.md", "config.json", "model.safetensors", "tokenizer.model"]
    assert sorted(os.listdir(tmp_path)) == ["here"]


def dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)


def test_a_stale_half_export_of_a_killed_process_is_removed(trained, tmp_path):
    export.main([trained["hred"], str(tmp_path / "shared")])
    stale = tmp_path / "shared" / f"export.tmp{dead_pid()}"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    export.main([trained["vhred"], str(tmp_path / "shared")])
    assert sorted(os.listdir(tmp_path / "shared")) == ["README.md", "config.json", "model.safetensors", "tokenizer.model"]


def test_a_re_export_keeps_the_folders_own_mode(trained, tmp_path):
    """Replaced by a new folder, a private export became world-readable (and a mount point failed)."""
    folder = tmp_path / "private"
    export.main([trained["hred"], str(folder)])
    os.chmod(folder, 0o2750)
    export.main([trained["vhred"], str(folder)])
    assert oct(os.stat(folder).st_mode & 0o7777) == oct(0o2750) and vhred.load(str(folder)).config.arch.model == "vhred"


def test_an_export_into_an_earlier_one_it_may_not_change_is_refused_first(trained, tmp_path, monkeypatch, capsys):
    """chmod 555: the folder was replaced, then its old files could not be removed (exit 1 after the change)."""
    folder = tmp_path / "shared"
    export.main([trained["hred"], str(folder)])
    before = contents(folder)
    monkeypatch.setattr(export.os, "access", lambda path, mode: not os.path.samefile(path, folder))   # as for a user, not root
    with pytest.raises(SystemExit) as stopped:
        export.main([trained["vhred"], str(folder)])
    assert stopped.value.code == 1 and capsys.readouterr().err == f"error: Permission denied ({folder})\n"
    assert contents(folder) == before and os.listdir(tmp_path) == ["shared"]


def test_a_picture_that_fills_the_disk_is_a_named_error_and_the_old_picture_stays(trained, tmp_path):
    """matplotlib's own writers cut a JPEG short and exited 0, or hid the error behind zlib's."""
    run = tmp_path / "run"
    shutil.copytree(trained["vhred"], run)
    plot.plot(str(run))   # fonts and caches in place before the limit
    pictures = [run / "curves.png", *(tmp_path / f"latent.{kind}" for kind in ("jpg", "pdf", "png", "svg"))]
    for path in pictures:
        path.write_bytes(b"old picture")
    with files_at_most(2048):
        with pytest.raises(OSError) as failed:
            plot.plot(str(run))
        assert failed.value.filename == str(run / "curves.png")
        for path in pictures[1:]:
            with pytest.raises(OSError) as failed:
                latent.plot(torch.randn(60, 4), torch.rand(60, 4), list(range(60)), "t", "length", str(path))
            assert failed.value.filename == str(path)
    assert all(path.read_bytes() == b"old picture" for path in pictures)
    assert not [n for n in os.listdir(run) + os.listdir(tmp_path) if ".tmp" in n]


def test_the_latent_plot_is_drawn_in_the_format_its_name_says(tmp_path):
    for name, starts in [("a.svg", b"<?xml"), ("a.pdf", b"%PDF"), ("a.png", b"\x89PNG")]:
        latent.plot(torch.randn(6, 4), torch.rand(6, 4), [1, 2, 3, 4, 5, 6], "t", "length", str(tmp_path / name))
        assert (tmp_path / name).read_bytes().startswith(starts)


@pytest.mark.slow   # the rank command on the tiny run's test split
def test_rank_stopped_while_writing_leaves_the_old_report(trained, tmp_path, monkeypatch):
    from vhred import rank
    run = tmp_path / "run"
    shutil.copytree(trained["hred"], run)
    argv = ["--checkpoint", str(run), "--max-contexts", "3", "--distractors", "2", "--iw-samples", "1"]
    rank.main(argv)
    [report] = [n for n in os.listdir(run) if n.startswith("rank-")]
    before = (run / report).read_bytes()

    def half(obj, f, **kwargs):
        f.write('{"half": ')
        raise KeyboardInterrupt
    monkeypatch.setattr(rank.json, "dump", half)
    with pytest.raises(SystemExit) as stopped:
        rank.main(argv)
    assert stopped.value.code == 130 and (run / report).read_bytes() == before
    assert not [n for n in os.listdir(run) if ".tmp" in n]


def test_a_row_that_fills_the_disk_is_cut_off_again_and_named(tmp_path):
    """metrics.jsonl was left ending in half a row, and the error named no file."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n')
    with files_at_most(100):
        with pytest.raises(OSError) as failed:
            files.append_line(str(path), json.dumps({"step": 2, "loss": "x" * 200}))
    assert failed.value.filename == str(path) and path.read_text() == '{"step": 1}\n'
    files.append_line(str(path), '{"step": 2}')
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'


def test_a_report_of_several_files_is_replaced_all_together_or_not_at_all(tmp_path):
    """eval's samples, results and summary: a failure on the last left the new samples beside old results."""
    from vhred.evaluate import write_report
    results = {"protocol": "ours", "split": "test", "settings": {"tag": ""}, "metrics": {}}
    old = write_report(str(tmp_path), results, [{"reply": "old"}], "t")
    before = contents(tmp_path)
    with files_at_most(max(os.path.getsize(p) for p in old) + 100):
        with pytest.raises(OSError):
            write_report(str(tmp_path), {**results, "metrics": {"long": "x" * 5000}}, [{"reply": "new"}], "t")
    assert contents(tmp_path) == before


def test_an_output_folder_one_may_not_write_is_refused_before_the_work(tmp_path, monkeypatch):
    """bench ran its whole measurement, then lost it to a read-only --out folder."""
    monkeypatch.setattr(files.os, "access", lambda path, mode: False)   # as for a user, not root
    with pytest.raises(OSError) as failed:
        files.check_output(str(tmp_path / "bench.json"))
    assert failed.value.errno == errno.EACCES and failed.value.filename == str(tmp_path / "bench.json")


def test_a_checkpoint_that_cannot_be_written_is_named_not_its_temporary(tmp_path, monkeypatch):
    from vhred import checkpoint
    real_open = open

    def refused(path, mode="r", *a, **k):
        if "w" in mode:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, mode, *a, **k)
    monkeypatch.setattr(checkpoint, "open", refused, raising=False)
    with pytest.raises(OSError) as failed:
        checkpoint.save({"model": {"w": torch.zeros(3)}}, str(tmp_path / "best.pt"))
    assert failed.value.filename == str(tmp_path / "best.pt")


def test_compare_says_why_a_row_failed_not_only_where_its_log_is(tmp_path):
    from vhred import compare
    from vhred.errors import InputError
    log = tmp_path / "train.log"
    with pytest.raises(InputError, match=r"failed \(exit 2\): config file missing.yaml not found.*; see "):
        compare._python("vhred.train", "--config", "missing.yaml", log=str(log))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")   # the drop is the case
def test_a_dropped_sigterm_still_stops_the_command_before_its_file_is_replaced(tmp_path, capsys):
    """A SIGTERM that lands in a __del__ is dropped by Python ("Exception ignored in"): the command
    went on, wrote its file and exited 0."""
    out = tmp_path / "out.json"
    out.write_text("old")

    class Dropping:
        def __del__(self):
            stops._raise_terminated(signal.SIGTERM, None)   # as the signal handler, inside __del__

    @cli.command
    def main(argv=None):
        with files.output_file(str(out)) as f:
            f.write("new")
            Dropping()

    with pytest.raises(SystemExit) as stop:
        main([])
    assert stop.value.code == 143 and capsys.readouterr().err.endswith("interrupted\n")
    assert out.read_text() == "old" and os.listdir(tmp_path) == ["out.json"]


def test_compare_stops_the_commands_its_other_rows_run_when_one_fails(tmp_path, monkeypatch):
    """A stop or a failure waited for every training already running to end at its full steps."""
    from vhred import compare
    from vhred.errors import InputError
    (tmp_path / "sleeper.py").write_text("import time\ntime.sleep(120)\n")
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{ROOT}")

    def row(i):
        if i == 0:
            return compare._python("sleeper", log=str(tmp_path / "sleeper.log"))
        time.sleep(1)
        raise InputError("row 1 failed")
    t0 = time.monotonic()
    with pytest.raises(InputError, match="row 1 failed"):
        compare._in_parallel(2, row, [0, 1])
    assert time.monotonic() - t0 < 60 and not compare._CHILDREN


def test_compare_starts_no_row_a_thread_took_as_another_row_failed(tmp_path, monkeypatch):
    """The thread of the row that failed took the next row from the queue before the rows were
    stopped: its training started unlisted, unsignalled, and compare waited for all of it."""
    from vhred import compare
    from vhred.errors import InputError
    (tmp_path / "sleeper.py").write_text("import time\ntime.sleep(120)\n")
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{ROOT}")
    failed = threading.Event()

    def row(i):
        if i == 1:
            time.sleep(0.5)
            failed.set()
            raise InputError("row 1 failed")
        if i == 2:   # taken from the queue as row 1 failed; its own work (makedirs...) before its command
            failed.wait()
            time.sleep(0.3)
        return compare._python("sleeper", log=str(tmp_path / f"row{i}.log"))
    t0 = time.monotonic()
    with pytest.raises(InputError, match="row 1 failed"):
        compare._in_parallel(2, row, [0, 1, 2])
    assert time.monotonic() - t0 < 60 and not compare._CHILDREN and not (tmp_path / "row2.log").exists()


@pytest.mark.parametrize("module", ["evaluate", "rank"])
def test_eval_and_rank_refuse_an_unwritable_results_folder_before_loading(trained, tmp_path, monkeypatch, module, capsys):
    """They evaluated or scored everything first, then could not write what they had measured."""
    import importlib
    from vhred import loading
    command = importlib.import_module(f"vhred.{module}")
    run = tmp_path / "run"
    shutil.copytree(trained["hred"], run)
    monkeypatch.setattr(files.os, "access", lambda path, mode: not os.path.samefile(path, run))   # as for a user, not root
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("loaded before the folder was checked"))
    with pytest.raises(SystemExit) as stopped:
        command.main(["--checkpoint", str(run), "--max-contexts", "2"])
    assert stopped.value.code == 1 and "Permission denied" in capsys.readouterr().err


def test_a_ctrl_c_landing_while_a_command_sets_its_handlers_is_one_line(monkeypatch, capsys):
    """The handlers were set before the command's try: a KeyboardInterrupt there (the signal
    handled a moment after Ctrl-C's own handler took over) came out as a traceback."""
    def stopped():
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "sigterm_as_ctrl_c", stopped)

    @cli.command
    def main(argv):
        pytest.fail("the command ran after the stop")
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 130 and capsys.readouterr().err == "interrupted\n"



@pytest.mark.parametrize("rank", ["0", "1"])
def test_a_training_stopped_under_torchrun_says_so_once(rank, monkeypatch, capsys):
    """torchrun hands a Ctrl-C to every process: each printed "interrupted before any checkpoint",
    the second copy marked [rank 1]. Process 0 alone says it; all end with 130."""
    from vhred import train
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)

    def stopped(cfg, log=print):
        raise KeyboardInterrupt
    monkeypatch.setattr(train, "train", stopped)
    monkeypatch.setattr(cli, "PEER_LINE_WAIT", 0)
    with pytest.raises(SystemExit) as e:
        train.main(["--config", os.path.join(ROOT, "configs", "tiny.yaml"), "out_dir=/nonexistent/runs"])
    err = capsys.readouterr().err
    assert e.value.code == 130
    assert err == ("interrupted before any checkpoint\n" if rank == "0" else ""), err
