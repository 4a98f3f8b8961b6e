"""Multi-process training and the GPU path: ranks that decide together, GRUs in the asked dtype, bench counting."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from vhred import checkpoint, device
from vhred.config import ModelConfig
from vhred.model import VHRED

from .conftest import ROOT, child_errors

# lr so small that no fp32 weight moves: every validation gives the same ELBO, so with patience 1
# the run must stop after epoch 2 of 4 -- on every rank at once (HRED: no noise in the step)
FROZEN = ["model=hred", "word_dropout=0", "lr=1e-30", "lr_warmup_steps=0", "max_dialogues=24",
          "epochs=3", "patience=1", "log_every=1", "save_every=1000"]


def run_training(data_dir, out, name, nproc, env):
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                if nproc > 1 else [sys.executable])
    cmd = launcher + ["-m", "vhred.train", "--config", os.path.join(ROOT, "configs", "tiny.yaml"),
                      f"data_dir={data_dir}", f"out_dir={out}", f"name={name}", *FROZEN]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.slow   # two commands as a user runs them, one under torchrun
def test_two_processes_stop_early_together_and_keep_the_best_of_one(dailydialog_zip, data_dir, tmp_path):
    # PYTHONFAULTHANDLER: a rank that aborts (SIGABRT, seen in two full runs of the suite,
    # "terminate called without an active exception") prints every thread's Python stack first
    env = {**os.environ, "DAILYDIALOG_SRC": dailydialog_zip, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    for name, nproc in (("one", 1), ("two", 2)):
        r = run_training(data_dir, tmp_path, name, nproc, env)
        assert r.returncode == 0, child_errors(r)
        assert "early stop after 1 epochs" in r.stdout, r.stdout[-1000:]
    last = {n: checkpoint.load(str(tmp_path / n / "last.pt")) for n in ("one", "two")}
    assert last["one"]["progress"]["epoch"] == last["two"]["progress"]["epoch"] == 2
    assert last["one"]["progress"]["best_epoch"] == last["two"]["progress"]["best_epoch"] == 1
    best = {n: checkpoint.load(str(tmp_path / n / "best.pt")) for n in ("one", "two")}
    for key, w in best["one"]["model"].items():   # the same epoch's weights (lr 1e-30 moves zeros only)
        assert torch.allclose(w, best["two"]["model"][key], rtol=0, atol=1e-20), key
    # validation split over the two ranks and summed: the whole split, the same figures
    val = {n: [json.loads(line) for line in open(tmp_path / n / "metrics.jsonl") if '"val"' in line]
           for n in ("one", "two")}
    assert [v["tokens"] for v in val["two"]] == [v["tokens"] for v in val["one"]]
    assert [v["elbo_per_token"] for v in val["two"]] == pytest.approx([v["elbo_per_token"] for v in val["one"]], rel=1e-9)
    # every rank's generator states travel with last.pt, so a resume continues each rank's stream
    assert len(last["two"]["rng"]) == 2 and not torch.equal(last["two"]["rng"][0]["cpu"], last["two"]["rng"][1]["cpu"])


@pytest.mark.slow   # torchrun, as a user runs it
def test_no_rank_tears_down_while_rank_0_still_writes(dailydialog_zip, data_dir, tmp_path):
    env = {**os.environ, "DAILYDIALOG_SRC": dailydialog_zip, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "tests", "fixtures", "ranks_teardown.py"), "--config", os.path.join(ROOT, "configs", "tiny.yaml"),
           f"data_dir={data_dir}", f"out_dir={tmp_path}", "name=teardown", "model=hred", "max_dialogues=24", "epochs=1"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-1500:] + child_errors(r)
    # the ranks share stdout: one's line may run into the other's, so no line anchors
    saved = [float(t) for t in re.findall(r"saved last.pt (\d+\.\d{6})", r.stdout)]
    cleanups = dict(re.findall(r"cleanup rank (\d) (\d+\.\d{6})", r.stdout))
    assert saved and set(cleanups) == {"0", "1"}, r.stdout[-1000:]
    assert float(cleanups["1"]) > saved[-1], f"rank 1 tore down {saved[-1] - float(cleanups['1']):.3f} s before rank 0's last write ended"
    # the group's threads end with it: left running, they met the interpreter's exit and
    # sometimes aborted a finished run ("terminate called without an active exception")
    left = dict(re.findall(r"gloo threads left rank (\d) (-?\d+)", r.stdout))
    assert set(left) == {"0", "1"}, r.stdout[-1000:]
    if sys.platform.startswith("linux"):
        assert left == {"0": "0", "1": "0"}, left


@pytest.mark.slow   # torchrun, as a user runs it
def test_two_processes_end_extra_critic_steps_with_one_critic(dailydialog_zip, data_dir, tmp_path):
    """DialogWAE's extra critic steps run outside data-parallel's hooks: each rank draws its own
    noise, so without averaging their gradients the ranks' critics would part after one step; its
    generators' batch norms move with each rank's own data, so their statistics are averaged."""
    env = {**os.environ, "DAILYDIALOG_SRC": dailydialog_zip, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "tests", "fixtures", "ranks_critic.py"), os.path.join(ROOT, "configs", "tiny.yaml"),
           f"data_dir={data_dir}", f"out_dir={tmp_path}", "name=critic", "model=dialogwae", "critic_steps=3"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, child_errors(r)
    assert "ranks 2 same critic True" in r.stdout, r.stdout[-1000:]
    assert "norm statistics moved True same True" in r.stdout, r.stdout[-1000:]   # its generators' batch norms


def gru_output_dtypes(precision: str) -> dict:
    """The dtype each GRU of a tiny VHRED returns in a training forward under `precision`."""
    model = VHRED(ModelConfig(emb_dim=8, utt_hidden=8, ctx_hidden=8, dec_hidden=8, z_dim=4, latent_hidden=8), 50)
    seen = {}
    for name in ("utt_rnn", "ctx_rnn", "dec_rnn"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: seen.update({name: o[1].dtype}))
    tokens = torch.tensor([[2, 5, 6, 3], [2, 7, 3, 0], [2, 8, 9, 3]])
    lens, turns = torch.tensor([4, 3, 4]), torch.tensor([3])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = model(tokens, lens, turns)
    (out["nll"].sum() + out["kl"].sum()).backward()
    assert all(p.dtype == torch.float32 for p in model.parameters())   # the weights stay fp32
    assert model.utt_rnn.weight_ih_l0.grad is not None and torch.isfinite(model.utt_rnn.weight_ih_l0.grad).all()
    return seen


def test_grus_run_in_the_configured_dtype():
    assert set(gru_output_dtypes("fp32").values()) == {torch.float32}
    assert set(gru_output_dtypes("bf16").values()) == {torch.bfloat16}   # CPU autocast alone leaves them fp32


def test_auto_precision_takes_native_bf16_only(monkeypatch):
    cuda = torch.device("cuda")
    emulated = lambda including_emulation=True: including_emulation   # a V100 or T4: bf16 by emulation only
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", emulated)
    assert not device.use_bf16("auto", cuda, device.BF16_MIN_BATCH)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)   # an A100, H100
    assert device.use_bf16("auto", cuda, device.BF16_MIN_BATCH)
    assert not device.use_bf16("auto", cuda, device.BF16_MIN_BATCH - 1)   # small batches: fp32 measured faster
    assert not device.use_bf16("auto", torch.device("cpu"), 10 ** 6)
    assert device.use_bf16("bf16", torch.device("cpu"), 1) and not device.use_bf16("fp32", cuda, 10 ** 6)


def test_a_gpu_that_is_not_there_or_not_a_gpu_name_is_one_line(monkeypatch):
    """On a machine with one GPU, --device cuda:abc reached torch.device, whose error is a traceback."""
    from vhred.errors import ConfigError
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for name in ("cuda:abc", "cuda:-1", "cuda:", "cuda0", "cuda:0 "):
        with pytest.raises(ConfigError, match=r"device must be auto, cpu or cuda \(cuda:N for the N-th GPU\)"):
            device.pick_device(name)
    with pytest.raises(ConfigError, match="device=cuda:1, but this machine has 1 GPU\\(s\\), cuda:0 to cuda:0"):
        device.pick_device("cuda:1")
    assert device.pick_device("cuda:0") == torch.device("cuda:0")


def test_tf32_is_set_by_training_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        assert device.pick_device("cuda").type == "cuda"   # what vhred.load and evaluation call
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        device.use_tf32_for_training(torch.device("cuda"))
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_bench_measures_the_setting_given_and_no_more_steps_than_batches(tiny_cfg):
    from vhred.bench import parse_args, sweep, train_throughput
    from vhred.errors import ConfigError, InputError
    c = "configs/tiny.yaml"
    assert sweep(parse_args(["--configs", c])) == [(c, ["precision=fp32"]), (c, ["precision=bf16"])]
    assert sweep(parse_args(["--configs", c, "precision=bf16"])) == [(c, [])]   # one row, as asked
    assert sweep(parse_args(["--configs", c, "batch_size=4", "--precisions", "fp32"])) == [(c, ["precision=fp32"])]
    assert sweep(parse_args(["--configs", c, "--precisions", "auto", "--batch-sizes", "4", "8"])) == [
        (c, ["precision=auto", "batch_size=4"]), (c, ["precision=auto", "batch_size=8"])]
    with pytest.raises(ConfigError, match="c.yaml not found"):   # before the report's folder is made
        parse_args(["--configs", "c.yaml"])
    # a step time over more steps than were timed would come out too short: refused
    with pytest.raises(InputError, match=r"--steps 100000 needs 100003 batches and the training split gives \d+ of batch_size=8"):
        train_throughput(tiny_cfg("max_dialogues=24"), 100_000)


def test_bench_chat_turn_times_greedy_draws_and_p95_stays_within_the_observed(tiny_cfg, monkeypatch):
    """The chat-turn column is 10 replies of 30 tokens, greedy per z, as its tables were measured
    (not the default beam search, 2-3 times the cost); a p95 of 4 latencies is no more than the
    slowest (the exclusive quantile extrapolated past it)."""
    from vhred import bench, candidates
    asked = []
    monkeypatch.setattr(candidates, "generate", lambda model, contexts, opts, *a, **k: asked.append(opts) or [[]])
    bench.chat_latency(tiny_cfg(), 300, repeats=1)
    assert {(o.method, o.num_samples, o.max_len, o.min_len) for o in asked} == {("greedy", 10, 30, 30)}
    assert bench.p95([0.1, 0.2, 0.3, 0.4]) <= 0.4 and bench.p95([0.3]) == 0.3
    assert bench.p95([i / 100 for i in range(1, 101)]) == pytest.approx(0.9505)


def test_bench_counts_each_kernel_once_and_every_launch_kind():
    from types import SimpleNamespace as Row

    from torch.autograd import DeviceType

    from vhred.bench import kernel_time_and_launches
    rows = [Row(key="aten::mm", device_type=DeviceType.CPU, self_device_time_total=40.0, count=2),  # its kernels' time
            Row(key="ampere_sgemm_128x64", device_type=DeviceType.CUDA, self_device_time_total=40.0, count=2),
            Row(key="void gru_cell_forward", device_type=DeviceType.CUDA, self_device_time_total=10.0, count=5),
            Row(key="cudaLaunchKernel", device_type=DeviceType.CPU, self_device_time_total=0.0, count=5),
            Row(key="cuLaunchKernelEx", device_type=DeviceType.CPU, self_device_time_total=0.0, count=2),
            Row(key="cudaMemcpyAsync", device_type=DeviceType.CPU, self_device_time_total=0.0, count=3)]
    assert kernel_time_and_launches(rows) == (50.0, 7)


@pytest.mark.slow   # trains four tiny runs
def test_gpu_check_runs_its_checks_on_the_cpu(dailydialog_zip, data_dir, tmp_path, monkeypatch):
    from vhred import gpu_check
    monkeypatch.setenv("DAILYDIALOG_SRC", dailydialog_zip)
    gpu_check.main(["--device", "cpu", "--no-bench", "--out", str(tmp_path), f"data_dir={data_dir}", "max_dialogues=24"])
    report = json.load(open(tmp_path / "gpu-check.json"))
    assert set(report["gru"]["output_dtypes"].values()) == {"torch.bfloat16"}
    assert report["resume"]["rerun_max_abs_diff"] == report["resume"]["resumed_max_abs_diff"] == 0.0


@pytest.mark.slow   # torchrun, as a user runs it
def test_two_processes_train_a_model_that_retrieves_and_copies(dailydialog_zip, data_dir, tmp_path):
    """Each rank indexes the training split alike; the index is never sent (broadcast_buffers
    off) and the run's checkpoint holds it."""
    env = {**os.environ, "DAILYDIALOG_SRC": dailydialog_zip, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "vhred.train", "--config", os.path.join(ROOT, "configs", "tiny.yaml"), f"data_dir={data_dir}",
           f"out_dir={tmp_path}", "name=copy", "max_dialogues=24", "max_steps=4", "attention=8", "retrieve=true", "copy=true"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, child_errors(r)
    assert "deprecated" not in r.stderr, child_errors(r)   # PyTorch's note on broadcast_buffers, once a rank
    assert r.stdout.count("exchanges of the training split indexed") == 1, r.stdout[-1000:]   # rank 0 logs
    state = checkpoint.load(str(tmp_path / "copy" / "last.pt"))
    assert len(state["model"]["retrieval.turn_ends"]) > 20 and state["progress"]["step"] == 4


@pytest.mark.slow   # torchrun, as a user runs it
def test_a_mistake_under_torchrun_is_one_line_from_one_process(dailydialog_zip, data_dir, tmp_path):
    """Data that rank 0 cannot find (the others wait for it), a batch too small to share: the
    error once, and no rank's traceback of the connection rank 0 closed as it exited."""
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "vhred.train",
            "--config", os.path.join(ROOT, "configs", "tiny.yaml"), f"out_dir={tmp_path}", "max_steps=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cases = {"does not exist": ({**env, "DAILYDIALOG_SRC": str(tmp_path / "missing.zip")},
                                [f"data_dir={tmp_path / 'fresh'}", "name=nodata"]),
             "batch_size=1 is smaller than the 2 processes": ({**env, "DAILYDIALOG_SRC": dailydialog_zip},
                                                             [f"data_dir={data_dir}", "name=small", "batch_size=1"])}
    for expected, (case_env, args) in cases.items():
        r = subprocess.run(base + args, cwd=ROOT, env=case_env, capture_output=True, text=True, timeout=240)
        assert r.returncode != 0 and r.stderr.count("error: ") == 1 and expected in r.stderr, child_errors(r)
        assert "[rank" not in r.stderr and "Connection closed" not in r.stderr, child_errors(r)
        assert not (tmp_path / "small" / "best.pt").exists()   # never a run of no steps called done
    # a run resumed with another model: rank 0 says so, the other rank exits quietly
    alone = [sys.executable] + base[base.index("vhred.train") - 1:]   # the same command in one process
    first = subprocess.run(alone + [f"data_dir={data_dir}", "name=other"], cwd=ROOT,
                           env={**env, "DAILYDIALOG_SRC": dailydialog_zip}, capture_output=True, text=True, timeout=240)
    assert first.returncode == 0, child_errors(first)
    r = subprocess.run(base + [f"data_dir={data_dir}", "name=other", "z_dim=5"], cwd=ROOT,
                       env={**env, "DAILYDIALOG_SRC": dailydialog_zip}, capture_output=True, text=True, timeout=240)
    assert r.returncode != 0 and r.stderr.count("error: ") == 1 and "holds a run with other z_dim" in r.stderr, child_errors(r)
    assert "[rank" not in r.stderr, child_errors(r)


def test_bench_serve_refuses_settings_a_checkpoint_would_ignore():
    """key=value settings size the untrained model --serve makes without --checkpoint: with one
    they were dropped without a word."""
    from vhred.bench import parse_args
    from vhred.errors import InputError
    with pytest.raises(InputError, match="batch_size=4: key=value settings make the untrained model"):
        parse_args(["--serve", "--checkpoint", "runs/x", "batch_size=4"])


def test_bench_refuses_an_out_that_would_overwrite_what_it_measures(tmp_path):
    """--out best.pt replaced the trained model with the report, and --out the config measured the
    config; an earlier report is the only file the report may replace."""
    from vhred.bench import parse_args
    from vhred.errors import InputError
    ckpt, config, report = tmp_path / "best.pt", tmp_path / "my.yaml", tmp_path / "bench.json"
    ckpt.write_bytes(b"PK\x03\x04 weights")
    config.write_text(open(os.path.join(ROOT, "configs", "tiny.yaml")).read())
    for argv, out in ((["--serve", "--checkpoint", str(ckpt)], ckpt), (["--configs", str(config)], config)):
        with pytest.raises(InputError, match=f"--out {out} exists and is not a bench report: writing the report would lose it"):
            parse_args([*argv, "--out", str(out)])
        assert out.exists() and out.stat().st_size > 10
    report.write_text(json.dumps({"machine": {"cpu": "x86_64"}, "results": []}))
    assert parse_args(["--configs", str(config), "--out", str(report)]).out == str(report)


@pytest.mark.slow   # the benchmark end to end: a child process per row
def test_bench_makes_its_runs_folders_beside_the_report_not_in_the_working_folder(dailydialog_zip, data_dir, tmp_path):
    report = tmp_path / "reports" / "bench.json"
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": ROOT, "DAILYDIALOG_SRC": dailydialog_zip}
    proc = subprocess.run([sys.executable, "-m", "vhred.bench", "--configs", os.path.join(ROOT, "configs", "tiny.yaml"),
                           "--steps", "2", "--precisions", "fp32", "--out", str(report), f"data_dir={data_dir}",
                           "max_dialogues=48"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(report.read_text())["results"]
    assert [r["config"] for r in rows] == [os.path.join(ROOT, "configs", "tiny.yaml")] and rows[0]["train_tokens_per_s"] > 0
    assert (report.parent / "bench-tiny.yaml" / "config.json").exists()
    assert list(elsewhere.iterdir()) == []   # no runs/bench where the command was started


@pytest.mark.slow   # torchrun, as a user runs it
def test_a_rank_that_fails_alone_leaves_its_one_line_and_no_traceback_of_the_others(tmp_path):
    """data= relative to a folder that only rank 0's machine has: rank 1 said why in one line, and
    rank 0, waiting in a collective, printed a gloo traceback of the connection rank 1 closed."""
    import stat
    lines = [json.dumps({"dialog": [f"hello {i} .", f"hi {i} !", "bye ."]}) for i in range(60)]
    for rank in (0, 1):
        (tmp_path / f"node{rank}").mkdir()
    (tmp_path / "node0" / "chats.jsonl").write_text("\n".join(lines) + "\n")
    node = tmp_path / "node.sh"   # each rank starts in its own machine's folder
    node.write_text(f'#!/bin/sh\ncd "{tmp_path}/node$RANK" && exec "{sys.executable}" -m vhred.train "$@"\n')
    node.chmod(node.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--no-python",
                        str(node), "--config", os.path.join(ROOT, "configs", "tiny.yaml"), "data=chats.jsonl",
                        "vocab_size=60", f"data_dir={tmp_path / 'data'}", f"out_dir={tmp_path / 'runs'}", "max_steps=2"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    ours = r.stderr.split("torch/distributed/elastic")[0]   # before torchrun's own report of a failed child
    assert r.returncode != 0 and "[rank 1] error: data file chats.jsonl not found" in ours, child_errors(r)
    assert "Traceback" not in ours and "[rank0]" not in ours, child_errors(r)
    assert ours.count("\n") <= 3, child_errors(r)   # rank 1's line, rank 0's, the launcher's first
