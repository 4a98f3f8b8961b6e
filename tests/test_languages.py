"""Text in other languages and scripts, as a user's own conversations bring it: the metrics
compare a reference with the model's text in the form the model writes (NFKC, SentencePiece's
normalisation), count a Chinese or Japanese character as a word, leave web and e-mail addresses
whole, and the shown text writes Chinese, Japanese and Arabic marks as those languages do."""
import unicodedata

import pytest

from vhred.render import pretty
from vhred.metrics import dialogwae
from vhred.metrics.protocol import sample_metrics
from vhred.metrics.surface import glued, lexicon, non_words, unglue
from vhred.metrics.text import tokenize
from vhred.sources import spaced


def as_the_model_writes(text: str) -> str:
    """A user's turn spaced as the corpus is, then through SentencePiece's NFKC, as a decoded reply."""
    return unicodedata.normalize("NFKC", spaced(text))


@pytest.mark.parametrize("reference", ["我想吃包子，你呢？", "東京へ行きます。", "L'élève prend un café.",
                                       unicodedata.normalize("NFD", "L'élève prend un café.")])
def test_a_reply_that_is_the_reference_scores_as_an_exact_copy(reference):
    """Full-width marks and decomposed accents were compared raw with the model's normalised text:
    an exact copy of "我想吃包子，你呢？" scored BLEU-4 0.096."""
    reply = as_the_model_writes(reference)
    assert tokenize(reply) == tokenize(reference)
    metrics = sample_metrics([[reply]], [reference])
    assert metrics["bleu-4-f1"] == pytest.approx(1.0)
    assert dialogwae.tokenize(reply) == dialogwae.tokenize(reference)   # their rule on the same form


def test_a_chinese_character_is_a_token_and_a_clause_is_not_one():
    assert tokenize("我想吃包子") == ["我", "想", "吃", "包", "子"]
    assert tokenize("ok我们") == ["ok", "我", "们"] and tokenize("I'm fine.") == ["i'm", "fine", "."]


def test_known_words_in_new_combinations_are_no_non_words():
    known = lexicon(["明天我们去上海。", "北京的饺子很好吃。", "L'élève boit un café."])
    assert non_words("明天我们去北京吃饺子。", known) == []        # each character seen: no clause is a "word"
    assert non_words(unicodedata.normalize("NFD", "élève café"), known) == []   # typed decomposed
    assert non_words("élèves cafés", known) == ["élèves", "cafés"]   # the check still checks


@pytest.mark.parametrize("text", ["Write to jean.dupont@example.fr today", "See https://shop.example.de/a?id=7 now",
                                  "Go to www.example.xyz/page please", "It is at stars.io"])
def test_addresses_are_no_glued_sentences_and_come_out_whole(text):
    assert glued(text) == [] and unglue(text) == text
    address = text.split()[-2] if text.endswith(("today", "now", "please")) else text.split()[-1]
    assert address in pretty(as_the_model_writes(text))


def test_a_glued_sentence_before_a_capitalised_word_like_an_ending_is_still_mended():
    """"TV", "Co", "AI" are web address endings in lower case only: "it.TV" is a glued sentence."""
    assert unglue("I never watch it.TV wastes time, prettier.Co") == "I never watch it. TV wastes time, prettier. Co"
    assert unglue("Try WWW.AMAZON.COM or stars.tv") == "Try WWW.AMAZON.COM or stars.tv"


def test_a_glued_sentence_in_any_spaced_script_is_seen_and_mended():
    assert glued("Привет.Как дела") == ["Привет.Как"] and unglue("Très.Bien") == "Très. Bien"
    assert unglue("It costs 25.How about you? Mr.Wory, a.m. and 3.5") == "It costs 25. How about you? Mr. Wory, a.m. and 3.5"


@pytest.mark.parametrize("typed, shown", [
    ("我不喜欢包子，我们去上海吃别的吧。", "我不喜欢包子，我们去上海吃别的吧。"),
    ("我有3个苹果，你呢？", "我有3个苹果，你呢？"),
    ("「こんにちは」と言った。", "「こんにちは」と言った。"),
    ("بخير، شكرا وأنت؟", "بخير، شكرا وأنت؟"),
    ("OK, 好的。", "OK, 好的。"),
    ("他说“你好”。（笑）好吧……我知道了。", '他说"你好"。(笑)好吧......我知道了。'),   # quotes, brackets, dots NFKC made ASCII
    ("I'm fine, it costs $60.", "I'm fine, it costs $60."),
])
def test_the_shown_text_writes_each_languages_marks_as_it_does(typed, shown):
    """The model writes "，" as "," (NFKC) and every mark spaced off: "我不喜欢包子 , 我们去吧 。"
    was shown as "我不喜欢包子, 我们去吧 。"."""
    assert pretty(as_the_model_writes(typed)) == shown


def test_an_emoji_keeps_its_selector():
    """nltk's tokenizer split "❤️" into the heart and its emoji selector, which then stood alone."""
    assert spaced("I love it ❤️!") == "I love it ❤️ !" and pretty(spaced("I love it ❤️!")) == "I love it ❤️!"


@pytest.mark.parametrize("typed", ["好的 :)", "太好了 :D 我们走吧", "I like Beijing :) 北京 :)"])
def test_an_emoticon_after_a_chinese_word_is_no_mark(typed):
    """close_up widened ":)" to "：)" after a Chinese character and took the space after it."""
    assert pretty(as_the_model_writes(typed)) == typed
