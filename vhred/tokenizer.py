"""SentencePiece tokenizer, trained on the training split only.

Ids: 0 pad, 1 unk, 2 bos, 3 eos. An utterance is encoded without specials; the model adds
<bos> in front of the decoder input and <eos> at the end of every utterance (end of turn).
"""
import io
import os
import random

import sentencepiece as spm

from .files import write_bytes

PAD, UNK, BOS, EOS = 0, 1, 2, 3


# The tokenizer learns from a bounded random sample of training utterances, so its memory and
# time stay flat however large the corpus: SentencePiece holds every sentence it trains on
# (about 1.5 KB each, measured at a 5k unigram vocabulary: 200,000 took 0.3 GB). 100,000 is a
# little more than DailyDialog's training utterances, so DailyDialog is tokenised from all of them.
TOKENIZER_SENTENCES = 100_000
TOKENIZER_SEED = 0   # the sample's seed; fixed, so a corpus always gets the same tokenizer


def sample_utterances(utterances, n: int, seed: int = TOKENIZER_SEED) -> tuple[list[str], int]:
    """(a uniform random sample of at most n utterances, how many there were), in one pass.

    Reservoir sampling (Vitter's algorithm R): memory holds n strings, never the stream. When
    there are n or fewer, the sample is all of them, in their order.
    """
    rng = random.Random(seed)
    sample, seen = [], 0
    for u in utterances:
        if seen < n:
            sample.append(u)
        else:
            j = rng.randrange(seen + 1)   # keep the new one with probability n / (seen + 1)
            if j < n:
                sample[j] = u
        seen += 1
    return sample, seen


def train_tokenizer(utterances, vocab_size: int, path: str, max_sentences: int = TOKENIZER_SENTENCES,
                    seed: int = TOKENIZER_SEED, model_type: str = "unigram") -> dict:
    """Train a SentencePiece model (unigram, bpe or word) on a sample of an iterator of strings;
    write it to path. "word" keeps the vocab_size most frequent whitespace-separated words (text
    spaced as DailyDialog writes it, as vhred spaces a user's text); any other word reads <unk>.

    Returns what it was trained on: {"sentences": sampled, "of": seen, "seed": seed}.
    """
    sample, seen = sample_utterances(utterances, max_sentences, seed)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sample), model_writer=model, vocab_size=vocab_size,
        model_type=model_type, character_coverage=1.0,
        pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS,
        hard_vocab_limit=False,             # a small corpus gets a smaller vocabulary, not an error
        input_sentence_size=max_sentences,  # already sampled: SentencePiece keeps all of it
        shuffle_input_sentence=True, num_threads=os.cpu_count() or 1,
        minloglevel=2)
    write_bytes(path, model.getvalue())   # whole or not at all
    return {"sentences": len(sample), "of": seen, "seed": seed}


def load_tokenizer(path: str | None = None, model_bytes: bytes | None = None) -> spm.SentencePieceProcessor:
    sp = spm.SentencePieceProcessor()
    if model_bytes is not None:
        sp.LoadFromSerializedProto(model_bytes)
    else:
        sp.Load(path)
    if (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) != (PAD, UNK, BOS, EOS):
        raise ValueError("tokenizer does not use vhred's special ids (pad 0, unk 1, bos 2, eos 3)")
    return sp
