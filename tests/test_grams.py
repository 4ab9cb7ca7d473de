"""Tests for `hicra.grams`: Strategic Gram loading, matching, token spans and the planning-token mask.

Tokenizers of each common family are trained here on a small local corpus (no download): byte-level BPE
(GPT-2/Qwen/Llama-3 style, also with transformers' clean-up of spaces as Llama-3 sets it), SentencePiece-style BPE
with byte fallback (Llama 2/Mistral: normalizer + Replace/ByteFallback/Fuse/Strip decoder), a Metaspace
pre-tokenizer/decoder BPE, and a WordPiece one (no fast path: prefix-decoding fallback).
"""

from __future__ import annotations

import json
import pickle
import re
from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from hicra import grams as grams_module
from hicra.grams import GramMatcher, Span, annotate, grams_version, load_grams, planning_mask, token_char_spans

PAPER = load_grams()
EXTRA = ["let's try", "step by step", "by step"]
"""Test grams: a two-word gram for whitespace runs, and grams that overlap each other and themselves."""
GRAMS = PAPER + EXTRA
MATCHER = GramMatcher(GRAMS)

FILLER = [
    "the", "x", "= 42", "butter", "so_far", "also", "nowhere", "sofa", "café", "naïve", "数学", "😀", "İf", "ß",
    "Straße", "2x+1", "é", "ok", "#", "—",
]  # fmt: skip
"""Filler words: near-misses of grams ("butter" holds "but", "so_far" holds "so"), accents, CJK, emoji, and
characters whose lower case or case folding is longer than they are ("İ", "ß")."""
SEPARATORS = [" ", " ", " ", "  ", "\n", "\n\n", "\t", " \n\t ", "", ",", ", ", ". ", "_", "-", "\u00a0", "\u3000"]

CORPUS = [
    "Wait, no. Let's check the constraints again: x = 42 and y = 7.",
    "But wait, the butter is also on the sofa, so far so good.",
    "Hmm, let me verify this result step by step. Therefore the answer is 12.",
    "Okay, so we need to find the value of 2x + 1 when x = 3.",
    "Alternatively, we can use the fact that the sum of the digits is 9.",
    "## Step 1: Understand the problem. The problem asks for the number of primes.",
    "Let's try a different angle. Maybe I can factor the quadratic.",
    "This means that n is even; thus n = 2k. Now we need to check if k is odd.",
    "A naïve café approach: é, è, ü. Let me pause and think.",
]


@cache
def byte_level(cleanup: bool = False) -> PreTrainedTokenizerFast:
    """GPT-2/Qwen/Llama-3 style byte-level BPE; emoji and CJK are not in its corpus, so they split into byte tokens.

    With `cleanup`, transformers' `clean_up_tokenization_spaces` is on (Llama 3 sets it), so decode deletes spaces
    (transformers >= 5.2x skips it for BPE models unless told to apply it anyway, as here; older versions apply it).
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|eos|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(CORPUS * 4, trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|eos|>", clean_up_tokenization_spaces=cleanup
    )
    wrapped.clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output = cleanup
    wrapped.add_tokens(["<think>"])  # an added, non-special token: decoded as its content
    return wrapped


@cache
def sentencepiece() -> PreTrainedTokenizerFast:
    """Llama 2/Mistral style: "▁" for spaces by a normalizer, BPE with byte fallback, a Strip decoder."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    ascii_corpus = [line.encode("ascii", "ignore").decode() for line in CORPUS]
    tokenizer.train_from_iterator(ascii_corpus * 4, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>"]))
    spec = json.loads(tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    size = len(vocab)
    vocab.update({f"<0x{b:02X}>": size + b for b in range(256)})  # byte tokens are ordinary vocabulary
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)), unk_token="<unk>", eos_token="</s>"
    )


@cache
def metaspace() -> PreTrainedTokenizerFast:
    """Metaspace pre-tokenizer and decoder (prepend scheme "always"), no byte fallback."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(prepend_scheme="always")
    alphabet = sorted(set("".join(FILLER + SEPARATORS + CORPUS)))
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "</s>"], initial_alphabet=alphabet)
    tokenizer.train_from_iterator(CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", eos_token="</s>")


@cache
def wordpiece() -> PreTrainedTokenizerFast:
    """BERT-style WordPiece: its decoder joins tokens with spaces, which no fast path replays."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=["[UNK]", "[SEP]"])
    tokenizer.train_from_iterator(CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", sep_token="[SEP]")


FAST = {"byte_level": byte_level, "byte_level_cleanup": lambda: byte_level(True), "sentencepiece": sentencepiece}
FAST["metaspace"] = metaspace
ALL = {**FAST, "wordpiece": wordpiece}

EXAMPLES = [
    "Wait, no. That can't be right.",
    "But wait,   let's\n\ttry again: 😀 x = 42 数学 café.",
    " leading space, and trailing space ",
    "The butter is so good, so_far so fine. But",
    "😀wait😀 é but数学",
    "İf we consider Straße. ß, step by step by step",
    "x . y , z ! n't 's",
]


def encode(tokenizer: PreTrainedTokenizerFast, text: str) -> list[int]:
    """The response's ids, with no special tokens added."""
    return tokenizer.encode(text, add_special_tokens=False)


def check_spans(ids: list[int], tokenizer: PreTrainedTokenizerFast) -> tuple[str, list[tuple[int, int]]]:
    """Assert the span invariants: one per token, monotone, within the text, and the distinct ones tile the text."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    spans = token_char_spans(ids, tokenizer)
    assert len(spans) == len(ids)
    for (s0, e0), (s1, e1) in zip(spans, spans[1:], strict=False):
        assert s0 <= s1 and e0 <= e1
    assert all(0 <= s <= e <= len(text) for s, e in spans)
    distinct = [span for k, span in enumerate(spans) if span[0] < span[1] and (k == 0 or span != spans[k - 1])]
    assert "".join(text[s:e] for s, e in distinct) == text
    assert spans == token_char_spans(ids, tokenizer, text=text)
    return text, spans


def naive_mask(token_spans: list[tuple[int, int]], spans: list[Span]) -> list[int]:
    """The mask by definition: a token with a non-empty span overlapping some match."""
    return [int(s < e and any(m.start < e and s < m.end for m in spans)) for s, e in token_spans]


@cache
def reference_patterns() -> list[tuple[re.Pattern[str], str]]:
    """The slow reference: one regex per gram, lookarounds for the word boundaries, overlapping matches."""
    patterns = []
    for gram in dict.fromkeys(g.lower() for g in GRAMS):
        body = r"\s+".join(map(re.escape, gram.split()))
        patterns.append((re.compile(r"(?<!\w)(?=(" + body + r")(?!\w))", re.IGNORECASE), gram))
    return patterns


def reference_find(text: str) -> list[Span]:
    """All matches of all grams by the reference regexes."""
    found = {(m.start(1), m.end(1), gram) for pattern, gram in reference_patterns() for m in pattern.finditer(text)}
    return [Span(s, e, g) for s, e, g in sorted(found)]


# --- loading and versions ---------------------------------------------------------------------------------------


def test_load_paper_grams():
    assert len(PAPER) == 249
    assert {"but", "so", "wait", "let's", "wait, no", "## step", "hmm,"} <= set(PAPER)


def test_load_grams_formats(tmp_path: Path):
    (tmp_path / "g.txt").write_text("## step\n\n  Wait, no  \nlet's\n", encoding="utf-8")
    assert load_grams(tmp_path / "g.txt") == ["## step", "Wait, no", "let's"]
    (tmp_path / "list.json").write_text(json.dumps(["a b", "c"]), encoding="utf-8")
    assert load_grams(tmp_path / "list.json") == ["a b", "c"]
    (tmp_path / "bad.json").write_text(json.dumps({"count": 3, "grams": ["a"]}), encoding="utf-8")
    with pytest.raises(ValueError, match="count"):
        load_grams(tmp_path / "bad.json")


def test_load_grams_missing_names_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_grams(tmp_path / "nope.json")
    monkeypatch.setenv("HICRA_SHARED", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path))):
        load_grams()
    target = tmp_path / "data" / "strategic_grams" / "paper_appendix_a.json"
    target.parent.mkdir(parents=True)
    target.write_text(json.dumps({"grams": ["okay"]}), encoding="utf-8")
    assert load_grams() == ["okay"]


def test_grams_version_is_stable_and_canonical():
    version = grams_version(PAPER)
    assert re.fullmatch(r"sg-[0-9a-f]{8}", version)
    assert grams_version(list(reversed(PAPER))) == version
    assert grams_version([g.upper() for g in PAPER] + ["  but  "]) == version
    assert grams_version(PAPER[1:]) != version
    assert MATCHER.version == grams_version(GRAMS)


# --- matching ---------------------------------------------------------------------------------------------------


def found(text: str, matcher: GramMatcher = MATCHER) -> list[tuple[str, str]]:
    """(matched text, gram) pairs, in order."""
    return [(text[s.start : s.end], s.gram) for s in matcher.find(text)]


def test_find_capitals_punctuation_and_overlaps():
    assert found("Wait, no. That can't be right.") == [
        ("Wait", "wait"),
        ("Wait, no", "wait, no"),
        ("That can't be right", "that can't be right"),
    ]
    assert found("BUT WAIT") == [("BUT", "but"), ("BUT WAIT", "but wait"), ("WAIT", "wait")]


def test_find_at_start_and_end():
    text = "But the answer is 4, so"
    spans = MATCHER.find(text)
    assert spans[0] == Span(0, 3, "but") and spans[-1] == Span(len(text) - 2, len(text), "so")


def test_find_word_boundaries():
    assert found("butter so_far also nowhere sofa but2 _but wait_ okay-ish") == [("okay", "okay")]
    assert found("(but) [so]") == [("but", "but"), ("so", "so")]
    assert found("Hmm, let me") == [("Hmm,", "hmm,"), ("let me", "let me")]
    assert found("Hmm,x") == []  # the character after "hmm," is a word character
    assert found("## Step 2") == [("## Step", "## step")]


def test_find_whitespace_runs():
    text = "Let's \n\t try;\u00a0but\n\nwait"
    assert found(text) == [
        ("Let's", "let's"),
        ("Let's \n\t try", "let's try"),
        ("but", "but"),
        ("but\n\nwait", "but wait"),
        ("wait", "wait"),
    ]


def test_find_self_overlapping_gram():
    assert [s for s in found("step by step by step") if s[1] == "step by step"] == [
        ("step by step", "step by step"),
        ("step by step", "step by step"),
    ]
    assert [(s.start, s.end) for s in MATCHER.find("step by step by step") if s.gram == "step by step"] == [
        (0, 12),
        (8, 20),
    ]


def test_find_keeps_offsets_when_case_folding_lengthens():
    # "İ".lower() and "ß".casefold() are two characters long: offsets must still index the original text.
    text = "İİ Straße. İf we consider ß WAIT, NO"
    assert found(text) == [
        ("İf we consider", "if we consider"),
        ("WAIT", "wait"),
        ("WAIT, NO", "wait, no"),
    ]
    assert found("Ⅷ Wait") == [("Wait", "wait")]


def test_matcher_pickles():  # for process pools
    assert pickle.loads(pickle.dumps(MATCHER)).find("But wait, so") == MATCHER.find("But wait, so")


def test_matcher_edge_cases():
    assert GramMatcher([]).find("but wait") == []
    with pytest.raises(ValueError, match="empty"):
        GramMatcher(["but", "  "])
    matcher = GramMatcher(["Let's  Try", "let's try"])
    assert [s.gram for s in matcher.find("LET'S TRY")] == ["let's  try"]  # the first spelling, folded


texts = st.lists(
    st.tuples(
        st.sampled_from(GRAMS + FILLER),
        st.sampled_from([str, str.upper, str.title, str.capitalize]),
        st.sampled_from(SEPARATORS),
    ),
    max_size=25,
).map(lambda parts: "".join(case(word) + sep for word, case, sep in parts))
"""Random texts: grams and filler words, in various cases, joined by spaces, whitespace runs or punctuation."""


@settings(max_examples=300, deadline=None)
@given(texts)
def test_find_agrees_with_regex_reference(text: str):
    assert MATCHER.find(text) == reference_find(text)


# --- token spans ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("text", EXAMPLES)
def test_token_spans_tile_the_text(name: str, text: str):
    tokenizer = ALL[name]()
    check_spans(encode(tokenizer, text), tokenizer)


@pytest.mark.parametrize("name", sorted(FAST))
@pytest.mark.parametrize("text", EXAMPLES)
def test_fast_path_needs_no_prefix_decoding(name: str, text: str, monkeypatch: pytest.MonkeyPatch):
    tokenizer = FAST[name]()
    ids = encode(tokenizer, text)
    expected = token_char_spans(ids, tokenizer)

    def forbidden(*_: object) -> None:
        raise AssertionError("prefix decoding used")

    monkeypatch.setattr(grams_module, "_prefix_bounds", forbidden)
    assert token_char_spans(ids, tokenizer) == expected


@pytest.mark.parametrize("text", EXAMPLES)
def test_byte_level_fast_path_equals_prefix_decoding(text: str):
    tokenizer = byte_level()
    ids = encode(tokenizer, text)
    starts, ends = grams_module._prefix_bounds(ids, tokenizer, text)
    assert token_char_spans(ids, tokenizer) == list(zip(starts, ends, strict=True))


def test_split_characters_share_their_span():
    tokenizer = byte_level()
    text = "x 😀 数学 é"
    ids = encode(tokenizer, text)
    spans = token_char_spans(ids, tokenizer)
    emoji = text.index("😀")
    sharing = [span for span in spans if span[0] <= emoji < span[1]]
    assert len(sharing) > 1 and len(set(sharing)) == 1  # the emoji is several byte tokens with one span
    assert sharing[0] == (emoji, emoji + 1)


def test_sentencepiece_byte_fallback_and_stripped_space():
    tokenizer = sentencepiece()
    text = "Wait, 😀 no"
    ids = encode(tokenizer, text)
    assert tokenizer.convert_ids_to_tokens(ids)[0].startswith("▁")  # its space is stripped on decode
    assert tokenizer.decode(ids) == text
    _, spans = check_spans(ids, tokenizer)
    assert spans[0][0] == 0
    emoji = text.index("😀")
    assert [span for span in spans if span[0] <= emoji < span[1]] == [(emoji, emoji + 1)] * 4  # four byte tokens


def test_cleanup_deletes_spaces_and_spans_follow():
    tokenizer = byte_level(True)
    ids = encode(tokenizer, "x . y , z")
    text, spans = check_spans(ids, tokenizer)
    assert text == "x. y, z"
    pieces = [t.replace("Ġ", " ") for t in tokenizer.convert_ids_to_tokens(ids)]
    deleted = {k for k in range(1, len(pieces)) if pieces[k - 1] == " " and pieces[k] in ".,"}
    assert [text[s:e] for s, e in spans] == ["" if k + 1 in deleted else p for k, p in enumerate(pieces)]


def test_special_and_added_tokens():
    tokenizer = byte_level()
    eos = tokenizer.eos_token_id
    but, wait = encode(tokenizer, "but"), encode(tokenizer, " wait")
    ids = [*but, eos, *wait, *encode(tokenizer, " <think> ok")]
    text, spans = check_spans(ids, tokenizer)
    assert text == "but wait <think> ok"
    assert spans[len(but)] == (3, 3)
    mask = planning_mask(ids, text, MATCHER.find(text), tokenizer)
    assert mask[len(but)] == 0 and mask[: len(but)] == [1] * len(but)


def test_ids_without_token_are_zero_width():
    tokenizer = byte_level()
    ids = encode(tokenizer, "but wait")
    ids.insert(1, len(tokenizer) + 5)  # a model's padded vocabulary can sample an id the tokenizer lacks
    text, spans = check_spans(ids, tokenizer)
    assert text == "but wait" and spans[1][0] == spans[1][1]


def test_tokens_added_after_first_use(monkeypatch: pytest.MonkeyPatch):
    tokenizer = byte_level.__wrapped__()  # a fresh tokenizer, not the shared one
    check_spans(encode(tokenizer, "but wait"), tokenizer)
    tokenizer.add_tokens(["<tool>"])
    ids = encode(tokenizer, "but <tool> wait")
    assert len(tokenizer) - 1 in ids

    def forbidden(*_: object) -> None:
        raise AssertionError("prefix decoding used")

    monkeypatch.setattr(grams_module, "_prefix_bounds", forbidden)
    check_spans(ids, tokenizer)


def test_empty_response():
    tokenizer = byte_level()
    assert token_char_spans([], tokenizer) == []
    assert annotate([], tokenizer, MATCHER) == ("", [], [])


def test_wrong_text_is_rejected():
    tokenizer = wordpiece()
    with pytest.raises(ValueError, match="decode"):
        token_char_spans(encode(tokenizer, "but wait"), tokenizer, text="something else")


@pytest.mark.parametrize("name", sorted(ALL))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_token_spans_on_random_ids(name: str, data: st.DataObject):
    tokenizer = ALL[name]()
    ids = data.draw(st.lists(st.integers(0, len(tokenizer) - 1), max_size=40))
    check_spans(ids, tokenizer)


@settings(max_examples=100, deadline=None)
@given(ids=st.lists(st.integers(0, 399), max_size=40))
def test_byte_level_random_bytes_need_no_prefix_decoding(ids: list[int]):
    # Invalid UTF-8 included: Python's "replace" decoding is the same as the Rust decoder's lossy decoding.
    tokenizer = byte_level()
    text = tokenizer.decode(ids, skip_special_tokens=True)
    replayed = grams_module._REPLAYS[tokenizer].replay(ids, tokenizer) if ids else ("",)
    assert replayed is not None and replayed[0] == text


# --- planning mask ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ALL))
def test_annotate_marks_gram_tokens(name: str):
    tokenizer = ALL[name]()
    ids = encode(tokenizer, "Wait, the butter is so good.\n\nBut   wait, let's try. Okay")
    text, spans, mask = annotate(ids, tokenizer, MATCHER)
    token_spans = token_char_spans(ids, tokenizer)
    assert mask == naive_mask(token_spans, spans)
    assert mask[0] == 1 and mask[-1] == 1  # "Wait" opens it and "Okay" ends it
    covered = {i for (s, e), m in zip(token_spans, mask, strict=True) if m for i in range(s, e)}
    assert all(i in covered for span in spans for i in range(span.start, span.end))
    butter = text.index("butter")
    inside = [m for (s, e), m in zip(token_spans, mask, strict=True) if butter - 1 <= s and e <= butter + 6 and s < e]
    assert inside and not any(inside)  # "but" inside " butter" marks nothing


@pytest.mark.parametrize("name", sorted(ALL))
@settings(max_examples=40, deadline=None)
@given(text=texts)
def test_mask_matches_definition(name: str, text: str):
    tokenizer = ALL[name]()
    ids = encode(tokenizer, text)
    decoded, spans, mask = annotate(ids, tokenizer, MATCHER)
    assert spans == MATCHER.find(decoded)
    assert mask == naive_mask(token_char_spans(ids, tokenizer), spans)


PLACEBO_CORPUS = [
    "First, we need to add the apples and the pears. Then we count the boxes on the table.",
    "Let me check: the red boxes hold seven apples each, so the total is large.",
    "We need to find how many pears the farmer sold on the market before noon.",
    "Alternatively the farmer counts the apples in each crate and writes the number down.",
]


def test_placebo_has_the_sets_size_and_length_distribution_and_no_planning_phrase():
    from hicra.mining import NO_CLUSTER, gram_words, placebo_grams, word_ngrams

    strategic = ["we need to", "let me check", "first", "alternatively", "then", "the total is", "so the"]
    placebo = placebo_grams(strategic, PLACEBO_CORPUS, seed=3)
    assert len(placebo.grams) == len(strategic)
    assert sorted(map(gram_words, placebo.grams)) == sorted(map(gram_words, strategic))  # 1: 3, 2: 1, 3: 3
    ngrams = set().union(*(word_ngrams(text, 1, 3) for text in PLACEBO_CORPUS))
    matcher = GramMatcher(strategic)
    for gram in placebo.grams:
        assert gram in ngrams  # drawn from the corpus
        assert not matcher.find(gram), gram  # neither a Strategic Gram nor holding one
        assert placebo.doc_freq[gram] == sum(gram in word_ngrams(t, 1, 3) for t in PLACEBO_CORPUS)
    assert set(placebo.cluster.values()) == {NO_CLUSTER}
    assert placebo.params["of"] == grams_version(strategic) and placebo.version == grams_version(placebo.grams)
    # matched by the same annotator as the Strategic Grams: every placebo gram is found in the corpus
    found = {s.gram for text in PLACEBO_CORPUS for s in GramMatcher(placebo.grams).find(text)}
    assert found == set(placebo.grams)
    # seeded
    assert placebo_grams(strategic, PLACEBO_CORPUS, seed=3).grams == placebo.grams
    assert placebo_grams(strategic, PLACEBO_CORPUS, seed=4).grams != placebo.grams


def test_placebo_keeps_the_size_when_a_length_is_short():
    """Too few 2-word n-grams: the shortfall comes from the 1-word ones, recorded, so the set keeps its size."""
    from hicra.mining import placebo_grams

    placebo = placebo_grams(["a b", "c d", "e f", "g"], ["one two three"], seed=0)
    assert {"one two", "two three"} <= set(placebo.grams) and len(set(placebo.grams)) == 4
    assert placebo.params["short"] == {"2": 1}


def test_placebo_refuses_a_corpus_too_small():
    from hicra.mining import placebo_grams

    with pytest.raises(ValueError, match="has 3 grams but the corpus .* only 1 other distinct n-grams of 2-2 words"):
        placebo_grams(["a b", "c d", "e f"], ["one two"], seed=0)
    with pytest.raises(ValueError, match="empty"):
        placebo_grams([], PLACEBO_CORPUS, seed=0)


def test_placebo_set_is_stored_like_any_gram_set(tmp_path):
    from hicra.mining import NO_CLUSTER, placebo_grams
    from tasks.mining import store_grams, stored_clusters, stored_grams
    from warehouse.catalog import query
    from warehouse.store import Warehouse

    placebo = placebo_grams(["we need to", "first", "the total is"], PLACEBO_CORPUS, seed=0)
    assert store_grams.fn(str(tmp_path), placebo, "test corpus")
    assert not store_grams.fn(str(tmp_path), placebo, "test corpus")  # versioned: stored once
    store = Warehouse(tmp_path)
    assert stored_grams(store, placebo.version) == placebo.grams
    assert stored_clusters(store, placebo.version) == dict.fromkeys(placebo.grams, NO_CLUSTER)
    row = query(tmp_path, f"select * from strategic_grams where version = '{placebo.version}' limit 1").to_pylist()[0]
    assert json.loads(row["params"])["kind"] == "placebo" and row["corpus"] == "test corpus"
