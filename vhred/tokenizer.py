"""SentencePiece tokenizer, trained on the training split only.

Ids: 0 pad, 1 unk, 2 bos, 3 eos. An utterance is encoded without specials; the model adds
<bos> in front of the decoder input and <eos> at the end of every utterance (end of turn).
"""
import io
import os

import sentencepiece as spm

PAD, UNK, BOS, EOS = 0, 1, 2, 3


def train_tokenizer(utterances, vocab_size: int, path: str, seed_sentences: int = 2_000_000) -> None:
    """Train a unigram SentencePiece model on an iterator of strings and write it to path."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(utterances), model_writer=model, vocab_size=vocab_size,
        model_type="unigram", character_coverage=1.0,
        pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS,
        hard_vocab_limit=False,              # a small corpus gets a smaller vocabulary, not an error
        input_sentence_size=seed_sentences,  # sample this many utterances from a huge corpus
        shuffle_input_sentence=True, num_threads=os.cpu_count() or 1,
        minloglevel=2)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(model.getvalue())
    os.replace(tmp, path)


def load_tokenizer(path: str | None = None, model_bytes: bytes | None = None) -> spm.SentencePieceProcessor:
    sp = spm.SentencePieceProcessor()
    if model_bytes is not None:
        sp.LoadFromSerializedProto(model_bytes)
    else:
        sp.Load(path)
    if (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) != (PAD, UNK, BOS, EOS):
        raise ValueError("tokenizer does not use vhred's special ids (pad 0, unk 1, bos 2, eos 3)")
    return sp
