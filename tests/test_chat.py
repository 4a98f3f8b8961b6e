"""The chat driven through a pipe, as a script would."""
import json
import subprocess
import sys

from tests.conftest import ROOT
from vhred.chat import pretty, spaced


def chat(lines, *args):
    r = subprocess.run([sys.executable, "-m", "vhred.chat", *args], cwd=ROOT, capture_output=True,
                       text=True, input="\n".join(lines) + "\n", timeout=120)
    return r.returncode, r.stdout.splitlines(), r.stderr


def test_a_piped_conversation(trained):
    long_line = "tell me more " * 400   # 5,200 characters
    code, out, err = chat(["Hi , how are you ?", "Fine . Where are you going ?", "/samples 3", "",
                           "/reset", "I love it 😀🎉 ünïcödé", long_line, "/history", "/quit", "never read"],
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
    assert len(turns) == 4
    assert all(1 <= len(t) <= 2 for t in turns[:2]) and all(1 <= len(t) <= 3 for t in turns[2:])
    assert any(len(t) == 3 for t in turns[2:])           # /samples 3 took effect
    assert "(showing 3 candidates per turn)" in err and "(conversation reset)" in err
    assert "the model reads the first" in err   # the long line was cut, with a note
    history = [line for line in out if line.startswith(("you: ", "bot: "))]
    assert len(history) == 4 and history[0].startswith("you: I love it 😀🎉")   # only after /reset
    assert not any("never read" in line for line in out)
    assert all("▁" not in line and "</s>" not in line for line in out)


def test_json_lines_and_hred(trained):
    code, out, err = chat(["Hello !", "What time is it ?"], "--checkpoint", trained["hred"], "--json")
    rows = [json.loads(line) for line in out]
    assert code == 0 and [r["user"] for r in rows] == ["Hello !", "What time is it ?"]
    assert all(len(r["responses"]) == 1 for r in rows)   # HRED: one greedy response by default


def test_missing_checkpoint_is_one_line(tmp_path):
    code, out, err = chat(["hi"], "--checkpoint", str(tmp_path / "nope.pt"))
    assert code == 2 and out == [] and err.count("\n") == 1 and "not found" in err


def test_punctuation_spacing_round_trip():
    assert spaced("Hi, how are you? Fine.") == "Hi , how are you ? Fine ."
    assert spaced("It costs 3.50 dollars") == "It costs 3.50 dollars"
    assert pretty("Hi , how are you ? Fine .") == "Hi, how are you? Fine."
    assert pretty("I ’ m sure it 's fine") == "I'm sure it's fine"
