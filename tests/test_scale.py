"""Preparation streams a corpus: a bounded tokenizer sample, the same splits and the same tables
as the in-memory logic it replaced, on tiny corpora made here (seconds, no DailyDialog needed)."""
import io
import json
import os

import numpy as np
import pytest
import sentencepiece as spm

from vhred import sources, tokenizer
from vhred.config import Config
from vhred.dataset import DialogueData, WindowWriter, _dialogues, prepare, windows
from vhred.tokenizer import BOS, EOS, PAD, UNK, load_tokenizer, sample_utterances, train_tokenizer

WORDS = "the a cat dog sat ran on mat home why yes no good bad big red slow fast".split()


def write_corpus(path, n: int, seed: int = 0) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    dialogues = [[" ".join(rng.choice(WORDS, int(rng.integers(1, 9)))) for _ in range(int(rng.integers(1, 9)))]
                 for _ in range(n)]
    with open(path, "w") as f:
        f.writelines(json.dumps({"dialog": d}) + "\n" for d in dialogues)
    return dialogues


def data_cfg(path, tmp_path, **kw) -> Config:
    return Config(data=str(path), data_dir=str(tmp_path / "data"), vocab_size=60, max_utt_len=6,
                  max_context=3, seed=3, **kw)


def test_reservoir_sample_is_bounded_seeded_and_whole_when_small():
    stream = [f"u{i}" for i in range(5000)]
    sample, seen = sample_utterances(iter(stream), 300, seed=0)
    assert seen == 5000 and len(sample) == 300 and len(set(sample)) == 300
    assert sample == sample_utterances(iter(stream), 300, seed=0)[0]
    assert sample != sample_utterances(iter(stream), 300, seed=1)[0]
    assert np.mean([int(u[1:]) for u in sample]) == pytest.approx(2500, rel=0.1)   # not the first 300
    assert sample_utterances(iter(stream[:200]), 300)[0] == stream[:200]            # all, in order


def test_the_tokenizer_sees_at_most_its_sample(tmp_path, monkeypatch):
    seen = []
    real = spm.SentencePieceTrainer.train

    def counting(**kw):   # what SentencePiece is given, counted on the way through
        sentences = list(kw.pop("sentence_iterator"))
        seen.append(len(sentences))
        return real(sentence_iterator=iter(sentences), **kw)
    monkeypatch.setattr(tokenizer.spm.SentencePieceTrainer, "train", counting)
    rng = np.random.default_rng(0)
    utts = (" ".join(rng.choice(WORDS, 6)) for _ in range(4000))   # a stream, never a list
    info = train_tokenizer(utts, 60, str(tmp_path / "t.model"), max_sentences=700)
    assert seen == [700] and info == {"sentences": 700, "of": 4000, "seed": 0}
    assert load_tokenizer(str(tmp_path / "t.model")).encode("the cat sat")


def test_streamed_splits_are_the_seeded_per_line_splits_as_before(tmp_path):
    path = tmp_path / "c.jsonl"
    dialogues = write_corpus(path, 200)
    # the split of line n depends on (seed, n) alone; these are the splits from before streaming
    assert "".join(sources._hash_split(1337, n)[0] for n in range(1, 61)) == \
        "tttttttttttttttvtttttttttttttvtttttttttttttttttttttttttvtttt"
    want = [(sources._hash_split(3, n), d) for n, d in enumerate(dialogues, 1) if len(d) > 1]
    assert list(_dialogues(str(path), str(path), 3, 0)) == want
    assert list(_dialogues(str(path), str(path), 3, 0, splits=("train",))) == [w for w in want if w[0] == "train"]
    first = list(_dialogues(str(path), str(path), 3, 4))   # max_dialogues: each split's first 4
    for s in sources.SPLITS:
        assert [d for t, d in first if t == s] == [d for t, d in want if t == s][:4]


def pieces(sp) -> list[tuple[str, float]]:
    return [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]


def reference_tables(path, cfg, folder) -> dict:
    """The logic before streaming: whole splits in lists, the tokenizer on every training utterance,
    then each dialogue encoded on its own."""
    splits = {s: [] for s in sources.SPLITS}
    for s, d in sources.iter_jsonl(str(path), cfg.seed):
        splits[s].append(d)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([u for d in splits["train"] for u in d]), model_writer=model,
        vocab_size=cfg.vocab_size, model_type="unigram", character_coverage=1.0, pad_id=PAD, unk_id=UNK,
        bos_id=BOS, eos_id=EOS, hard_vocab_limit=False, input_sentence_size=2_000_000,
        shuffle_input_sentence=True, num_threads=os.cpu_count() or 1, minloglevel=2)
    sp = load_tokenizer(model_bytes=model.getvalue())
    # the same pieces and scores (the file's bytes also hold the trainer's options, which differ)
    assert pieces(sp) == pieces(load_tokenizer(os.path.join(folder, "tokenizer.model")))
    out = {}
    for s, dialogues in splits.items():
        rows = []
        for d in dialogues:
            ids = [u[:cfg.max_utt_len] for u in sp.encode(d)]
            rows += [ids[a:b] for a, b in windows(len(ids), cfg.max_context + 1)]
        out[s] = rows
    return out


def test_prepared_tables_are_those_of_the_in_memory_logic(tmp_path):
    path = tmp_path / "c.jsonl"
    write_corpus(path, 400)
    cfg = data_cfg(path, tmp_path)
    folder = prepare(cfg, log=lambda *_: None)
    meta = json.load(open(os.path.join(folder, "meta.json")))
    want = reference_tables(path, cfg, folder)
    for s in sources.SPLITS:
        data = DialogueData(folder, s)
        assert data.ds[:]["ids"] == want[s]
        assert meta["windows"][s] == len(data) and meta["target_tokens"][s] == int(data.n_tokens.sum())
        assert data.n_turns.tolist() == [len(w) for w in want[s]]
        assert data.max_len.tolist() == [max(len(u) for u in w) for w in want[s]]
    assert meta["tokenizer_sample"]["sentences"] == meta["tokenizer_sample"]["of"]   # all of them


def test_window_tables_do_not_depend_on_the_chunk_size(tmp_path):
    dialogues = [d for d in write_corpus(tmp_path / "c.jsonl", 100) if len(d) > 1]
    train_tokenizer((u for d in dialogues for u in d), 60, str(tmp_path / "t.model"))
    sp = load_tokenizer(str(tmp_path / "t.model"))
    tables = []
    for chunk in (7, 1000):
        w = WindowWriter(str(tmp_path / f"c{chunk}"), sp, 6, 3, chunk=chunk)
        for d in dialogues:
            w.add(d)
        w.close()
        tables.append(DialogueData(str(tmp_path), f"c{chunk}").ds[:])
        assert w.dialogues == len(dialogues) and w.windows == len(tables[-1]["ids"])
    assert tables[0] == tables[1]


def test_a_sampled_tokenizer_is_recorded_and_keys_its_cache(tmp_path):
    path = tmp_path / "c.jsonl"
    write_corpus(path, 300)
    cfg = data_cfg(path, tmp_path)
    cfg.tokenizer_sentences = 150   # until Config has the field, prepare reads it with getattr
    folder = prepare(cfg, log=lambda *_: None)
    meta = json.load(open(os.path.join(folder, "meta.json")))
    assert meta["tokenizer_sample"]["sentences"] == 150 < meta["tokenizer_sample"]["of"]
    assert prepare(data_cfg(path, tmp_path), log=lambda *_: None) != folder


def test_word_and_bpe_tokenizers_key_their_own_caches_and_read_whole_words(tmp_path):
    """tokenizer=word keeps whitespace-separated words whole (a word outside its vocabulary reads
    <unk>); bpe and word caches live apart from the unigram one, whose folder name is unchanged."""
    from vhred.config import ConfigError, validate
    path = tmp_path / "c.jsonl"
    write_corpus(path, 300)
    folders = {}
    for kind in ("unigram", "bpe", "word"):
        folders[kind] = prepare(data_cfg(path, tmp_path, tokenizer=kind), log=lambda *_: None)
    assert len(set(folders.values())) == 3
    assert folders["unigram"] == prepare(data_cfg(path, tmp_path), log=lambda *_: None)
    sp = load_tokenizer(os.path.join(folders["word"], "tokenizer.model"))
    text = " ".join(WORDS[:3])
    assert sp.encode(text, out_type=str) == ["\u2581" + w for w in WORDS[:3]]
    assert sp.encode(text + " zzzqqq")[-1] == UNK
    with pytest.raises(ConfigError, match="tokenizer must be"):
        validate(data_cfg(path, tmp_path, tokenizer="chars"))
