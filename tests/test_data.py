"""Sources, preparation and batching on the DailyDialog archive (or the stand-in corpus in its layout)
and small hand-made files."""
import io
import json
import os
import re
import zipfile

import numpy as np
import pytest

from vhred import cache, sources
from vhred.dataset import DialogueData, prepare, windows
from vhred.sources import DataError
from vhred.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def dd(dailydialog_zip):
    return sources.read_dailydialog(dailydialog_zip)


def test_split_sizes_and_parsing(dd, corpus, dailydialog_zip):
    assert {s: len(d) for s, d in dd.items()} == corpus["sizes"]
    first = dd["validation"][0]
    if corpus["real"]:
        assert first[0] == "Good morning , sir . Is there a bank near here ?"
        assert first[-1] == "1000 Yuan.Here you are ."
    else:   # the stand-in's first line, split by hand
        line = sources._split_bytes(dailydialog_zip)["validation"].decode().splitlines()[0]
        assert first == [u.strip() for u in line.split("__eou__")[:-1]]
    assert all(u and "__eou__" not in u and "  " not in u for d in dd["train"][:500] for u in d)


def test_a_folder_of_extracted_split_files_reads_the_same(dd, dailydialog_zip, tmp_path):
    for split, data in sources._split_bytes(dailydialog_zip).items():
        os.makedirs(tmp_path / split)
        (tmp_path / split / f"dialogues_{split}.txt").write_bytes(data)
    manifest = sources.standin_manifest(dailydialog_zip)
    if manifest:   # the stand-in says what it is beside its split folders
        (tmp_path / sources.STANDIN_MANIFEST).write_text(json.dumps(manifest))
    assert sources.read_dailydialog(str(tmp_path)) == dd


def test_a_folder_sources_identity_follows_the_files_inside_it(tiny_cfg, tmp_path, monkeypatch):
    """A split file rewritten in place leaves the folder's own size and time as they were: the
    cache key must still change (the stand-in corpus is regenerated so), and stay when nothing did."""
    from vhred.dataset import _source
    folder = tmp_path / "dd"
    (folder / "train").mkdir(parents=True)
    split = folder / "train" / "dialogues_train.txt"
    split.write_text("Hi . __eou__ Hello . __eou__\n")
    monkeypatch.setenv("DAILYDIALOG_SRC", str(folder))
    cfg = tiny_cfg()
    before, folder_stat = _source(cfg)[2], os.stat(folder)
    assert _source(cfg)[2] == before
    split.write_text("Hey . __eou__ Hello . __eou__\n")
    assert os.stat(folder).st_mtime_ns == folder_stat.st_mtime_ns and _source(cfg)[2] != before


def test_truncated_archive_is_a_clear_error(dailydialog_zip, tmp_path):
    bad = tmp_path / "ijcnlp_dailydialog.zip"
    bad.write_bytes(open(dailydialog_zip, "rb").read()[:5000])
    with pytest.raises(DataError, match="not a readable zip archive"):
        sources.read_dailydialog(str(bad))


def test_wrong_split_sizes_are_a_clear_error(tmp_path):
    path = tmp_path / "fake.zip"
    with zipfile.ZipFile(path, "w") as z:
        for split in sources.SPLITS:
            z.writestr(f"{split}/dialogues_{split}.txt", "Hi . __eou__ Hello . __eou__\n")
    with pytest.raises(DataError, match="train split has 1 dialogues, DailyDialog has 11118"):
        sources.read_dailydialog(str(path))
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("readme.txt", "not dialogues")
    with pytest.raises(DataError, match="does not hold DailyDialog"):
        sources.read_dailydialog(str(tmp_path / "other.zip"))


def test_offline_without_a_local_copy_says_where_to_put_the_archive(tmp_path, monkeypatch):
    monkeypatch.delenv("DAILYDIALOG_SRC", raising=False)
    with pytest.raises(DataError, match=r"put ijcnlp_dailydialog.zip in .*raw/dailydialog/"):
        sources.find_dailydialog(str(tmp_path), url="http://127.0.0.1:9/ijcnlp_dailydialog.zip")
    assert not os.path.exists(tmp_path / "raw")   # no partial file, no empty folder left behind


class _CutShortResponse(io.BytesIO):
    """What urlopen gives when the server promised `promised` bytes and sent fewer; `then`, raised
    at the second read, stands for a Ctrl-C in the middle."""
    def __init__(self, body: bytes, promised: int, then=None):
        super().__init__(body)
        self.headers, self.then, self.reads = {"Content-Length": str(promised)}, then, 0

    def read(self, n=-1):
        self.reads += 1
        if self.then and self.reads == 2:
            raise self.then
        return super().read(n)


@pytest.mark.parametrize("then", [None, KeyboardInterrupt()])
def test_a_download_cut_short_leaves_nothing_a_later_run_would_read(tmp_path, monkeypatch, then):
    monkeypatch.delenv("DAILYDIALOG_SRC", raising=False)
    monkeypatch.setattr(sources.urllib.request, "urlopen",
                        lambda url, timeout: _CutShortResponse(b"PK" + bytes(1 << 17), 5_000_000, then))
    with pytest.raises(KeyboardInterrupt if then else DataError, match=None if then else "closed after 131074 of 5000000"):
        sources.find_dailydialog(str(tmp_path))
    assert not os.path.exists(tmp_path / "raw")   # neither a .part nor an archive taken for whole


def test_a_partial_download_left_by_a_kill_is_fetched_again_and_a_damaged_copy_named(tmp_path, monkeypatch):
    monkeypatch.delenv("DAILYDIALOG_SRC", raising=False)
    local = tmp_path / "raw" / "dailydialog"
    local.mkdir(parents=True)
    (local / "ijcnlp_dailydialog.zip.part").write_bytes(b"PK")   # SIGKILL gives no time to clean
    with pytest.raises(DataError, match="could not download"):   # fetched again, not read as the data
        sources.find_dailydialog(str(tmp_path), url="http://127.0.0.1:9/ijcnlp_dailydialog.zip")
    (local / "ijcnlp_dailydialog.zip").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(DataError, match=re.escape(str(local / "ijcnlp_dailydialog.zip")) + " is not a readable zip"):
        sources.read_dailydialog(sources.find_dailydialog(str(tmp_path)))


def test_missing_dailydialog_src_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("DAILYDIALOG_SRC", str(tmp_path / "nope.zip"))
    with pytest.raises(DataError, match="DAILYDIALOG_SRC=.* does not exist"):
        sources.find_dailydialog(str(tmp_path))


def test_windows_make_every_later_utterance_a_target_once():
    assert windows(3, 5) == [(0, 3)]
    assert windows(9, 4) == [(0, 4), (3, 7), (6, 9)]
    targets = [i for s, e in windows(23, 5) for i in range(s + 1, e)]
    assert targets == list(range(1, 23))


def test_jsonl_malformed_lines_are_reported_with_line_numbers(tmp_path, capsys):
    path = tmp_path / "mine.jsonl"
    good = [json.dumps({"dialog": [f"hello {i}", f"hi there {i}", "bye"]}) for i in range(40)]
    lines = good[:3] + ['{"dialog": ["cut short'] + good[3:6] + ['{"dialog": "just a string"}', json.dumps({"dialog": ["one"]})] \
        + good[6:] + [json.dumps({"dialog": ["a", "b"], "split": "validation"})]
    path.write_text("\n".join(lines) + "\n")
    scan = sources.scan_jsonl(str(path), seed=1)
    err = capsys.readouterr().err
    assert "mine.jsonl: line 4: skipped" in err and "line 8: skipped" in err and "line 9: skipped" in err
    # the JSON error's position within the line, never json's "line 2" (the line's own newline)
    assert "not valid JSON: Unterminated string at column 13" in err and "line 2" not in err
    assert scan["skipped_lines"] == 3 and sum(scan["dialogues"].values()) == 41
    again = [s for s, _ in sources.iter_jsonl(str(path), seed=1)]
    assert again == [s for s, _ in sources.iter_jsonl(str(path), seed=1)]   # seeded split repeats
    assert again[-1] == "validation"                                        # an explicit split wins


def test_a_turn_of_invisible_marks_alone_is_an_empty_turn():
    """A zero-width space, a direction mark or a BOM shows nothing and SentencePiece reads
    nothing: such a turn is dropped as a blank one is, not kept as an empty utterance; joiners
    inside words stay."""
    dialog = ["\u200b", "Are you there?", "\u200e \ufeff", "Hello?", "caf\u00e9\u200d"]
    line = json.dumps({"dialog": dialog})
    turns, _ = sources._parse_jsonl_line(line)
    assert turns == ["Are you there ?", "Hello ?", "caf\u00e9\u200d"]
    assert sources.normalise("a\u200bb \u2066c\u2069") == "a b c"


def test_jsonl_as_editors_save_it_and_a_file_of_one_split(tmp_path):
    """A UTF-8 byte-order mark (Windows Notepad) is read past, at the file's start or a line's;
    UTF-16 and a file without a validation split are refused in one line that says what to do."""
    from vhred.errors import DataError
    lines = [json.dumps({"dialog": [f"hello {i}", f"hi there {i}"]}) for i in range(40)]
    plain, bom = tmp_path / "plain.jsonl", tmp_path / "bom.jsonl"
    plain.write_text("\n".join(lines) + "\n")
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    assert list(sources.iter_jsonl(str(bom), seed=1)) == list(sources.iter_jsonl(str(plain), seed=1))
    # two Notepad files put together (cat a.jsonl b.jsonl): the second's BOM starts a line inside
    half = len(lines) // 2
    joined = tmp_path / "joined.jsonl"
    joined.write_bytes(b"\xef\xbb\xbf" + "".join(x + "\n" for x in lines[:half]).encode()
                       + b"\xef\xbb\xbf" + "".join(x + "\n" for x in lines[half:]).encode())
    assert list(sources.iter_jsonl(str(joined), seed=1)) == list(sources.iter_jsonl(str(plain), seed=1))
    for encoding in ("utf-16", "utf-16-le"):   # with its BOM, and without: NUL bytes give it away
        wide = tmp_path / f"{encoding}.jsonl"
        wide.write_text("\n".join(lines) + "\n", encoding=encoding)
        with pytest.raises(DataError, match="is UTF-16 text .*: save it as UTF-8"):
            sources.scan_jsonl(str(wide), seed=1)
    train_only = tmp_path / "train.jsonl"
    train_only.write_text("".join(json.dumps({"dialog": ["a", "b"], "split": "train"}) + "\n" for _ in range(5)))
    with pytest.raises(DataError, match='found .*: mark some lines "split": "validation", or leave "split" out'):
        sources.scan_jsonl(str(train_only), seed=1)
    few = tmp_path / "few.jsonl"   # no "split" field: the seeded 90/5/5 rule put none of 3 in validation
    few.write_text("".join(json.dumps({"dialog": [f"hi {i}", "yes"]}) + "\n" for i in range(3)))
    assert "validation" not in {s for s, _ in sources.iter_jsonl(str(few), seed=1)}
    with pytest.raises(DataError, match=r'\(0 lines skipped\): the seeded 90/5/5 split of 3 dialogues put none in '
                                        r'validation: add dialogues .* or mark some lines "split": "validation"'):
        sources.scan_jsonl(str(few), seed=1)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match=r"\(0 lines skipped\): the file holds no dialogues: write one JSON object a line"):
        sources.scan_jsonl(str(empty), seed=1)
    empty.write_text("{}\n")
    with pytest.raises(DataError, match=r"\(1 line skipped\): no line held a dialogue; see the skipped lines above"):
        sources.scan_jsonl(str(empty), seed=1)


def test_jsonl_text_is_read_as_the_chat_reads_it(tmp_path, tiny_cfg):
    """A JSONL corpus is spaced as the corpus and the chat write text, so a word-level vocabulary
    holds "fine" and "," rather than "fine,", and a training turn typed in the chat has no <unk>."""
    from vhred.render import encode_turns
    from vhred.sources import spaced
    path = tmp_path / "mine.jsonl"
    with open(path, "w") as f:
        for i in range(60):
            f.write(json.dumps({"dialog": ["I'm fine, thanks. And you?", f"It costs $10.50, Mr. Smith {i}."]}) + "\n")
    assert [d for _, d in sources.iter_jsonl(str(path), seed=1)][0] == [
        "I'm fine , thanks . And you ?", "It costs $ 10.50 , Mr . Smith 0 ."]
    folder = prepare(tiny_cfg(f"data={path}", "tokenizer=word", "vocab_size=200", "max_dialogues=0"), log=lambda *_: None)
    sp = load_tokenizer(os.path.join(folder, "tokenizer.model"))
    [ids] = encode_turns(sp, [spaced("I'm fine, thanks. And you?")], 30, 10)
    assert sp.unk_id() not in ids and sp.decode(ids) == "I'm fine , thanks . And you ?"


def test_jsonl_trains_the_same_way(tmp_path, tiny_cfg):
    path = tmp_path / "mine.jsonl"
    rng = np.random.default_rng(0)
    words = "the a cat dog sat ran on mat home why yes no good bad".split()
    with open(path, "w") as f:
        for i in range(300):
            dialog = [" ".join(rng.choice(words, 5)) for _ in range(int(rng.integers(2, 6)))]
            f.write(json.dumps({"dialog": dialog}) + "\n")
    cfg = tiny_cfg(f"data={path}", "vocab_size=40", "max_dialogues=0")
    folder = prepare(cfg, log=lambda *_: None)
    meta = json.load(open(os.path.join(folder, "meta.json")))
    assert sum(meta["dialogues"].values()) == 300 and meta["dialogues"]["train"] > 240
    assert meta["source_sha256"] == cache.file_sha256(str(path))
    # the lines shuffled, the size and time kept (cp -p, rsync -a): the line-number split moves, so
    # the cache of the old order must not be taken for it
    stat = os.stat(path)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[150:] + lines[:150]))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = prepare(cfg, log=lambda *_: None)
    assert again != folder and json.load(open(os.path.join(again, "meta.json")))["source_sha256"] == cache.file_sha256(str(path))


def test_prepare_caches_and_tokenizer_round_trips(tiny_cfg, dd):
    cfg = tiny_cfg()
    folder = prepare(cfg, log=lambda *_: None)
    assert prepare(cfg, log=lambda *_: (_ for _ in ()).throw(AssertionError("rebuilt"))) == folder
    meta = json.load(open(os.path.join(folder, "meta.json")))
    assert meta["dialogues"] == {"train": 120, "validation": 120, "test": 120}
    sp = load_tokenizer(os.path.join(folder, "tokenizer.model"))
    utt = dd["train"][0][0]
    assert sp.decode(sp.encode(utt)) == utt
    train = DialogueData(folder, "train")
    assert max(len(u) for u in train.ds[0]["ids"]) <= cfg.max_utt_len
    assert train.n_turns.max() <= cfg.max_context + 1


def test_two_preparations_of_one_folder_at_once_build_it_once_and_both_read_it(tiny_cfg, tmp_path):
    """Two trainings that found no cache each built one and put it in place, deleting the other's
    (vhred compare trains two rows side by side): one failed reading a folder that was gone. Now
    the second waits for the first and reuses what it built."""
    import threading
    for attempt in range(3):   # a fresh data folder each time: both start with nothing to reuse
        cfg = tiny_cfg(f"data_dir={tmp_path / f'data{attempt}'}")
        start, said, got = threading.Barrier(2), [], []

        def run():
            start.wait()
            folder = prepare(cfg, log=said.append)
            got.append((folder, DialogueData(folder, "train").n_turns.sum()))

        threads = [threading.Thread(target=run) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert len(got) == 2 and got[0] == got[1], said
        assert sum(line.startswith("preparing ") for line in said) == 1, said
        assert sorted(os.listdir(os.path.dirname(got[0][0]))) == [os.path.basename(got[0][0]),
                                                                  os.path.basename(got[0][0]) + ".lock"]


def test_checkpoint_cache_timing_says_whether_the_cache_is_intact(tiny_cfg, tmp_path):
    import shutil
    from vhred.checkpoint import measure_cache
    from vhred.dataset import CACHE_FILES
    folder = shutil.copytree(prepare(tiny_cfg(), log=lambda *_: None), tmp_path / "cache")
    assert measure_cache(str(folder), repeat=1)["intact"] is True
    with open(folder / CACHE_FILES[0], "r+b") as f:   # cut short, as a full disk or a killed copy leaves it
        f.truncate(100)
    assert measure_cache(str(folder), repeat=1)["intact"] is False


def test_bucketed_batches_cover_every_window_once_and_pad_little(tiny_cfg):
    train = DialogueData(prepare(tiny_cfg(), log=lambda *_: None), "train")
    a = train.batches(8, seed=3, epoch=0)
    assert sorted(np.concatenate(a).tolist()) == list(range(len(train)))
    assert all(np.array_equal(x, y) for x, y in zip(a, train.batches(8, seed=3, epoch=0)))
    assert not all(np.array_equal(x, y) for x, y in zip(a, train.batches(8, seed=3, epoch=1)))

    def turn_padding(batches):   # empty (dialogue, turn) slots in the context RNN's input
        return sum(len(b) * train.n_turns[b].max() - train.n_turns[b].sum() for b in batches)
    rng = np.random.default_rng(0)
    unsorted = np.array_split(rng.permutation(len(train)), len(a))
    assert turn_padding(a) < 0.5 * turn_padding(unsorted)


def test_jsonl_in_the_chat_messages_format_reads_as_the_same_dialogues(tmp_path):
    """{"messages": [{"role", "content"}]} (fine-tuning files, Hugging Face chat datasets): the
    system prompt left out, one speaker's messages in a row one turn, the split as in "dialog"."""
    messages = [json.dumps({"messages": [{"role": "system", "content": "You are kind."},
                                         {"role": "user", "content": f"Hello {i}!"},
                                         {"role": "user", "content": "Are you there?"},
                                         {"role": "assistant", "content": "Hi, I'm here."},
                                         {"role": "user", "content": "Bye."}],
                            **({"split": "test"} if i == 3 else {})}) for i in range(10)]
    dialogs = [json.dumps({"dialog": [f"Hello {i}! Are you there?", "Hi, I'm here.", "Bye."],
                           **({"split": "test"} if i == 3 else {})}) for i in range(10)]
    (tmp_path / "m.jsonl").write_text("\n".join(messages) + "\n")
    (tmp_path / "d.jsonl").write_text("\n".join(dialogs) + "\n")
    read = list(sources.iter_jsonl(str(tmp_path / "m.jsonl"), seed=1))
    assert read == list(sources.iter_jsonl(str(tmp_path / "d.jsonl"), seed=1))
    assert read[0][1] == ["Hello 0 ! Are you there ?", "Hi , I'm here .", "Bye ."] and read[3][0] == "test"
    tools = {"messages": [{"role": "developer", "content": "Answer briefly."}, {"role": "user", "content": "Weather?"},
                          {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
                          {"role": "tool", "content": '{"temp_c": 21}'},
                          {"role": "assistant", "content": [{"type": "text", "text": "It is 21 degrees."}]}]}
    (tmp_path / "t.jsonl").write_text(json.dumps(tools) + "\n")   # tool calls and output are no one's turn
    assert [d for _, d in sources.iter_jsonl(str(tmp_path / "t.jsonl"), seed=1)] == [["Weather ?", "It is 21 degrees ."]]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"content": "hello"}]}) + "\n")
    why = []
    assert not list(sources.iter_jsonl(str(bad), seed=1, report=lambda n, w: why.append((n, w))))
    assert why == [(1, 'message 2 of "messages" has no "role" string')]
