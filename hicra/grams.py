"""Strategic Grams (SGs): load a gram set, find grams in a response, and mark the tokens they cover.

The paper classifies a token as a strategic planning token when it is part of a Strategic Gram in its context
(docs/strategic-grams.md). Exact token-id matching is wrong (BPE gives "Wait", " wait" and "wait," different ids), so
the rule here works on characters: decode the response, find every case-insensitive, word-boundary match of every
gram in the decoded text (overlaps allowed), then mark each token whose character span overlaps a match.

Three parts, each linear in the length of a response:
- `GramMatcher.find`: one Aho-Corasick pass over a case-folded, whitespace-collapsed copy of the text, with every
  match mapped back to offsets in the original text and checked for word boundaries there;
- `token_char_spans`: the character span of every token in the decoded text, computed from the tokens' bytes for
  byte-level BPE and SentencePiece-style tokenizers, checked against the tokenizer's own decode, with an exact (but
  quadratic) prefix-decoding fallback for any tokenizer whose decoder it cannot replay;
- `planning_mask`: token starts and ends are sorted, so the tokens a match overlaps are found by bisection.

The decoded text is always `tokenizer.decode(token_ids, skip_special_tokens=True)`: response ids carry no eos, and
special tokens (skipped by that decode) get zero-width spans and are never planning tokens.

This module imports no torch, prefect or duckdb: a tokenizer object (transformers' `PreTrainedTokenizerFast`) is
passed in.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import operator
import os
import re
import weakref
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate, compress
from pathlib import Path
from typing import Any

import ahocorasick

PAPER_GRAMS = Path("data") / "strategic_grams" / "paper_appendix_a.json"
"""Path of the paper's list (Appendix A, 249 grams) relative to the shared folder."""

_ASCII_SPACES = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f"
_OTHER_SPACES = (
    "\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
"""Every whitespace character but the space (`str.isspace`, which is also `re`'s `\\s`): ASCII ones, then others."""

_SPACE_RUN = re.compile(" {2,}")
"""What `_collapse` shortens once all whitespace is spaces."""

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
"""A SentencePiece byte-fallback token, as tokenizers' `ByteFallback` decoder recognises it."""


@dataclass(frozen=True)
class Span:
    """One match of a Strategic Gram: `text[start:end]` in the original text, and the gram (folded, as in the set)."""

    start: int
    end: int
    gram: str


def _default_grams_path() -> Path:
    """The paper's list in the shared folder: `$HICRA_SHARED`, else `shared/` beside the repository."""
    shared = os.environ.get("HICRA_SHARED")
    root = Path(shared) if shared else Path(__file__).resolve().parents[2] / "shared"
    return root / PAPER_GRAMS


def load_grams(path: Path | None = None) -> list[str]:
    """Read a gram set, in file order.

    A `.json` file holds either a list of strings or an object with a `grams` list (and optionally a `count`, which
    must agree); any other file holds one gram a line (blank lines skipped; no comment syntax, since "## step" is a
    gram). With no path, the paper's list is read from the shared folder.
    """
    path = Path(path) if path is not None else _default_grams_path()
    if not path.is_file():
        raise FileNotFoundError(f"Strategic Gram file not found: {path}")
    raw = path.read_text(encoding="utf-8")
    if path.suffix.lower() != ".json":
        return [line.strip() for line in raw.splitlines() if line.strip()]
    data = json.loads(raw)
    grams = data.get("grams") if isinstance(data, dict) else data
    if not isinstance(grams, list) or not all(isinstance(g, str) for g in grams):
        raise ValueError(f"{path}: expected a list of strings or an object with a 'grams' list")
    if isinstance(data, dict) and "count" in data and data["count"] != len(grams):
        raise ValueError(f"{path}: 'count' is {data['count']} but the file lists {len(grams)} grams")
    return grams


def _fold_char(char: str) -> str:
    """Case-fold one character to exactly one character (full folding when it has length one, else simple lowering).

    Full case folding can lengthen a character ("ß" -> "ss", "İ" -> "i" + combining dot); keeping one character per
    character keeps every offset of the folded text an offset of the original text.
    """
    folded = char.casefold()
    if len(folded) == 1:
        return folded
    lowered = char.lower()
    return lowered if len(lowered) == 1 else lowered[0]


def _fold(text: str) -> str:
    """Case-fold `text` with one output character per input character (see `_fold_char`).

    `str.casefold` is context-free and never shortens a character, so an unchanged length proves it mapped every
    character to one; only texts with a lengthening character take the per-character path.
    """
    folded = text.casefold()
    if len(folded) == len(text):
        return folded
    return "".join(map(_fold_char, text))


def normalise_gram(gram: str) -> str:
    """The form a gram is matched in: folded, stripped, whitespace runs collapsed to one space."""
    return " ".join(_fold(gram).split())


def grams_version(grams: Sequence[str]) -> str:
    """A short, stable name for a gram set: a hash of its sorted, de-duplicated normalised grams ("sg-1a2b3c4d").

    Order, case and whitespace do not change the version, since they do not change what the set matches.
    """
    canonical = "\n".join(sorted({normalise_gram(g) for g in grams}))
    return "sg-" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:8]


class GramMatcher:
    """Finds every occurrence of a set of Strategic Grams in a text with one Aho-Corasick automaton.

    Matching is case-insensitive (per-character Unicode case folding) and requires word boundaries: the characters
    just outside a match are the text's ends or not word characters (`str.isalnum` or "_", as `re`'s `\\w`). A
    whitespace run inside a gram matches any whitespace run in the text. Overlapping matches are all reported (both
    "but" and "but wait").
    """

    def __init__(self, grams: Sequence[str]):
        self.grams: dict[str, str] = {}
        """Normalised gram -> the gram reported in `Span.gram` (the first spelling in the input, folded)."""
        for gram in grams:
            key = normalise_gram(gram)
            if not key:
                raise ValueError(f"empty Strategic Gram: {gram!r}")
            self.grams.setdefault(key, _fold(gram.strip()))
        self._automaton = ahocorasick.Automaton()
        for key, label in self.grams.items():
            self._automaton.add_word(key, (len(key), label))
        self._automaton.make_automaton()
        self.version = grams_version(list(self.grams))

    def find(self, text: str) -> list[Span]:
        """All matches in `text`, with offsets into `text` itself, sorted by (start, end)."""
        if not self.grams:
            return []
        norm, run_starts, run_shifts = _collapse(_fold(text))
        size = len(text)
        found = []
        for last, (length, gram) in self._automaton.iter(norm):
            start, end = last - length + 1, last + 1
            if run_starts:  # map back through the collapsed whitespace runs (a gram never starts or ends on one)
                k = bisect_left(run_starts, start)
                start += run_shifts[k - 1] if k else 0
                k = bisect_left(run_starts, last)
                end += run_shifts[k - 1] if k else 0
            if start and ((before := text[start - 1]).isalnum() or before == "_"):
                continue
            if end < size and ((after := text[end]).isalnum() or after == "_"):
                continue
            found.append((start, end, gram))
        found.sort()
        return [Span(start, end, gram) for start, end, gram in found]


def _collapse(text: str) -> tuple[str, list[int], list[int]]:
    """Turn every whitespace run of `text` into one space, keeping what maps offsets back.

    Returns the collapsed text, the collapsed offsets of the spaces that replaced a run of two or more (ascending),
    and the total shift (original minus collapsed offset) after each of them; both lists are empty when no run was
    longer than one. Whitespace is first replaced by spaces one for one (`str.replace`, fast), so only runs of
    spaces are left to collapse.
    """
    for space in _ASCII_SPACES if text.isascii() else _ASCII_SPACES + _OTHER_SPACES:
        if space in text:
            text = text.replace(space, " ")
    parts: list[str] = []
    run_starts: list[int] = []
    run_shifts: list[int] = []
    shift = done = 0
    for match in _SPACE_RUN.finditer(text):
        begin, end = match.span()
        parts += (text[done:begin], " ")
        run_starts.append(begin - shift)
        shift += end - begin - 1
        run_shifts.append(shift)
        done = end
    if not run_starts:
        return text, run_starts, run_shifts
    parts.append(text[done:])
    return "".join(parts), run_starts, run_shifts


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, used by every byte-level BPE (tokenizers' `ByteLevel`)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_BYTE_OF_CHAR = {char: byte for byte, char in _bytes_to_unicode().items()}
_CONTINUATION_BYTES = bytes(range(0x80, 0xC0))
"""UTF-8 continuation bytes; every other byte of valid UTF-8 starts a character."""

_Bounds = tuple[list[int], list[int]]
"""Token starts and token ends, two lists: what `token_char_spans` zips."""


class _Replay:
    """What each token id contributes to the decoded text, for the decoders this module can replay.

    Modes: "bytes" (a `ByteLevel` decoder: each id is a byte string, the text is their lossy UTF-8 decoding) and
    "sentencepiece" (`Metaspace`, or `Replace("▁", " ")` with optional `ByteFallback`/`Fuse`/`Strip`: each id is a
    string with the meta-space replaced, or one byte as an int). Special tokens contribute nothing (decoding skips
    them). Any other decoder gives mode None, and the caller falls back to prefix decoding. The tables are built
    once per tokenizer; no reference to the tokenizer is kept, so it can die and take its table out of `_REPLAYS`.
    """

    def __init__(self, tokenizer: Any):
        self.mode, self.metaspace = _replay_mode(tokenizer)
        self.size = 0
        self.pieces: list[Any] = []
        """Per id: bytes ("bytes" mode), or a string or a byte value ("sentencepiece" mode)."""
        self.missing: set[int] = set()
        """Ids below `size` that the tokenizer has no token for."""
        self.leads: list[int] = []
        """Per id ("bytes" mode): how many characters its bytes start (the bytes that are not continuation bytes)."""
        self.continues: set[int] = set()
        """Ids ("bytes" mode) whose bytes start with a continuation byte: they finish a character begun before."""
        self.byte_ids: set[int] = set()
        """Ids ("sentencepiece" mode) of byte-fallback tokens."""
        if self.mode is not None:
            self._build(tokenizer)

    def _build(self, tokenizer: Any) -> None:
        """Tabulate every id of the tokenizer (vocabulary and added tokens)."""
        special = {i for i, added in tokenizer.added_tokens_decoder.items() if added.special}
        special |= set(tokenizer.all_special_ids)
        tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        self.size = len(tokens)
        self.missing = {i for i, token in enumerate(tokens) if token is None}
        tokens = ["" if token is None or i in special else token for i, token in enumerate(tokens)]
        if self.mode == "bytes":
            self.pieces = [_token_bytes(token) for token in tokens]
            self.leads = [len(piece.translate(None, _CONTINUATION_BYTES)) for piece in self.pieces]
            self.continues = {i for i, piece in enumerate(self.pieces) if piece[:1] and 0x80 <= piece[0] < 0xC0}
        else:
            self.pieces = [_sentencepiece_piece(token, self.metaspace) for token in tokens]
            self.byte_ids = {i for i, piece in enumerate(self.pieces) if isinstance(piece, int)}

    def replay(self, ids: list[int], tokenizer: Any) -> tuple[str, list[int], list[int]] | None:
        """The text the ids decode to and the token bounds in it, or None where some id cannot be replayed."""
        if self.mode is None:
            return None
        if len(tokenizer) != self.size:
            self._build(tokenizer)  # tokens were added since the table was built
        if max(ids) >= self.size or min(ids) < 0 or not self.missing.isdisjoint(ids):
            return None  # ids with no token (decode skips them): left to prefix decoding
        pieces = list(map(self.pieces.__getitem__, ids))
        if self.mode == "sentencepiece":
            if self.byte_ids.isdisjoint(ids):  # no byte fallback: the pieces are the text
                ends = list(accumulate(map(len, pieces)))
                return "".join(pieces), [0, *ends[:-1]], ends
            return _sentencepiece_bounds(pieces)
        try:
            text = b"".join(pieces).decode("utf-8")
        except UnicodeDecodeError:  # a response cut inside a character, say
            text, ends, joins = _incremental(pieces)
        else:  # valid UTF-8: a token ends after the characters that the bytes so far start
            ends = list(accumulate(map(self.leads.__getitem__, ids)))
            joins = []
            if not self.continues.isdisjoint(ids):
                for k in compress(range(len(ids)), map(self.continues.__contains__, ids)):
                    joins.append(k)
                    while k > 1 and not pieces[k - 1]:  # zero-width tokens inside the character join too
                        k -= 1
                        joins.append(k)
                joins.sort()
        starts = [0, *ends[:-1]]
        _join(starts, ends, joins)
        return text, starts, ends


def _token_bytes(token: str) -> bytes:
    """The bytes of a byte-level token; like tokenizers, a token with a character outside the table is UTF-8."""
    try:
        return bytes(map(_BYTE_OF_CHAR.__getitem__, token))
    except KeyError:
        return token.encode("utf-8")


def _sentencepiece_piece(token: str, metaspace: str) -> str | int:
    """The text of a SentencePiece token with its meta-space replaced, or the byte value of a byte-fallback token."""
    byte = _BYTE_TOKEN.fullmatch(token)
    return int(byte.group(1), 16) if byte else token.replace(metaspace, " ")


def _replay_mode(tokenizer: Any) -> tuple[str | None, str]:
    """Classify the tokenizer's decoder: ("bytes", ""), ("sentencepiece", meta-space character) or (None, "")."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = backend.decoder if backend is not None else None
    if decoder is None:
        return None, ""
    spec = json.loads(decoder.__getstate__())
    steps = spec["decoders"] if spec["type"] == "Sequence" else [spec]
    if [step["type"] for step in steps] == ["ByteLevel"]:
        return "bytes", ""
    metaspace = None
    for step in steps:
        if step["type"] == "Metaspace":
            metaspace = step["replacement"]
        elif step["type"] == "Replace" and step["content"] == " " and "String" in step["pattern"]:
            metaspace = step["pattern"]["String"]
        elif step["type"] == "Strip" and step["content"].isspace():
            continue  # stripped whitespace is realigned by `_deleted_positions`
        elif step["type"] not in ("ByteFallback", "Fuse"):
            return None, ""
    return ("sentencepiece", metaspace) if metaspace else (None, "")


def _join(starts: list[int], ends: list[int], joins: Sequence[int]) -> None:
    """Give every group of tokens one span, in place: token k joins token k-1 for each k in `joins` (ascending).

    Tokens that share a character (an emoji split into byte tokens; a token ending inside one character and the
    token after it) form a group, and each gets the whole group's span: the spans stay monotone and still tile the
    text, and a token holding part of a character covers that character.
    """
    i = 0
    while i < len(joins):
        first = last = joins[i]
        first -= 1
        while i + 1 < len(joins) and joins[i + 1] == last + 1:
            i, last = i + 1, last + 1
        starts[first : last + 1] = [starts[first]] * (last + 1 - first)
        ends[first : last + 1] = [ends[last]] * (last + 1 - first)
        i += 1


def _incremental(pieces: Sequence[bytes]) -> tuple[str, list[int], list[int]]:
    """Decode token bytes one token at a time, as lossy UTF-8 (invalid bytes -> U+FFFD, as Rust's decoder does).

    Returns the text, each token's end in it, and the tokens that join the one before (see `_join`): those that
    arrive while the bytes of an incomplete character are buffered.
    """
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    parts: list[str] = []
    ends: list[int] = []
    joins: list[int] = []
    pos = 0
    last = len(pieces) - 1
    for k, piece in enumerate(pieces):
        if decoder.getstate()[0]:
            joins.append(k)
        parts.append(decoder.decode(piece, final=k == last))
        pos += len(parts[-1])
        ends.append(pos)
    return "".join(parts), ends, joins


def _sentencepiece_bounds(pieces: Sequence[str | int]) -> tuple[str, list[int], list[int]]:
    """Replay a SentencePiece-style decoder: strings as they are, runs of byte tokens as tokenizers' `ByteFallback`,
    which decodes a run as UTF-8 when it is valid and otherwise turns each byte token of the run into one U+FFFD."""
    parts: list[str] = []
    ends: list[int] = []
    joins: list[int] = []
    run: list[int] = []
    for k, piece in enumerate(pieces):
        pos = ends[-1] if ends else 0
        if isinstance(piece, str):
            parts.append(piece)
            ends.append(pos + len(piece))
            continue
        run.append(piece)
        if k + 1 < len(pieces) and isinstance(pieces[k + 1], int):
            continue
        try:
            bytes(run).decode("utf-8")
        except UnicodeDecodeError:
            parts.append("\ufffd" * len(run))
            ends += range(pos + 1, pos + len(run) + 1)
        else:
            text, run_ends, run_joins = _incremental([bytes([b]) for b in run])
            parts.append(text)
            ends += [pos + end for end in run_ends]
            joins += [k + 1 - len(run) + j for j in run_joins]
        run.clear()
    starts = [0, *ends[:-1]]
    _join(starts, ends, joins)
    return "".join(parts), starts, ends


def _common_prefix(a: str, i: int, b: str, j: int) -> int:
    """Length of the longest common prefix of `a[i:]` and `b[j:]`, by galloping and bisection on slice equality."""
    limit = min(len(a) - i, len(b) - j)
    low, step = 0, 1
    while low + step <= limit and a[i + low : i + low + step] == b[j + low : j + low + step]:
        low += step
        step *= 2
    high = min(low + step, limit + 1)  # a[i:i+low] matches; a mismatch lies before i + high
    while high - low > 1:
        mid = (low + high) // 2
        if a[i + low : i + mid] == b[j + low : j + mid]:
            low = mid
        else:
            high = mid
    return low


def _deleted_positions(src: str, dst: str) -> list[int] | None:
    """Positions of whitespace characters of `src` whose deletion turns it into `dst`, or None when none do.

    The replayed text can differ from `tokenizer.decode` by deleted spaces only: a stripped leading space
    (SentencePiece) or transformers' `clean_up_tokenization_spaces` (" ." -> "."). Greedy alignment is exact when
    only whitespace may be deleted.
    """
    extra = len(src) - len(dst)
    if extra < 0:
        return None
    deleted: list[int] = []
    i = j = 0
    while True:
        same = _common_prefix(src, i, dst, j)
        i, j = i + same, j + same
        if j == len(dst):
            rest = range(i, len(src))
            return deleted + list(rest) if all(src[k].isspace() for k in rest) else None
        if i == len(src) or not src[i].isspace() or len(deleted) == extra:
            return None
        deleted.append(i)
        i += 1


def _shift_down(offsets: list[int], deleted: list[int]) -> list[int]:
    """Map ascending offsets into a text through the deletion of the characters at `deleted` (ascending)."""
    shifted: list[int] = []
    done = 0
    for gone, position in enumerate(deleted):
        k = bisect_right(offsets, position, done)  # offsets up to `position` lose the `gone` deletions before it
        shifted += [offset - gone for offset in offsets[done:k]]
        done = k
    shifted += [offset - len(deleted) for offset in offsets[done:]]
    return shifted


def _prefix_bounds(ids: list[int], tokenizer: Any, text: str) -> _Bounds:
    """Token bounds by decoding every prefix of `ids` (quadratic): the fallback for decoders with no replay.

    After token k the text is known up to `reach[k]`: the length of decode(ids[:k+1]) where that is a prefix of the
    text, else the length it shares with the text (a partial character, or a clean-up waiting for the next token).
    The boundary after token k is firm when decode(ids[:k+1]) is a prefix of the text and no later prefix reaches
    less (a byte-fallback run that turns invalid can revoke characters decoded before); a token whose boundary is
    not firm joins the next one (see `_join`).
    """
    prefixes: list[str] = []
    chunk = 256
    for first in range(1, len(ids) + 1, chunk):
        batch = [ids[:k] for k in range(first, min(first + chunk, len(ids) + 1))]
        prefixes += tokenizer.batch_decode(batch, skip_special_tokens=True)
    if prefixes[-1] != text:
        raise ValueError("text is not tokenizer.decode(token_ids, skip_special_tokens=True)")
    exact = [text.startswith(prefix) for prefix in prefixes]
    ends = [len(p) if ok else _common_prefix(p, 0, text, 0) for p, ok in zip(prefixes, exact, strict=True)]
    joins: list[int] = []
    later = len(text)  # the least reach after token k
    for k in range(len(ids) - 1, -1, -1):
        if not (exact[k] and ends[k] <= later):
            joins.append(k + 1)
        later = min(later, ends[k])
    joins.reverse()
    starts = [0, *ends[:-1]]
    _join(starts, ends, joins)
    return starts, ends


_REPLAYS: weakref.WeakKeyDictionary[Any, _Replay] = weakref.WeakKeyDictionary()
"""One `_Replay` table per live tokenizer object."""


def _token_bounds(ids: list[int], tokenizer: Any, text: str) -> _Bounds:
    """Token starts and ends in `text` (non-empty `ids`): replayed and checked where possible, else prefix-decoded."""
    replay = _REPLAYS.get(tokenizer)
    if replay is None:
        replay = _REPLAYS[tokenizer] = _Replay(tokenizer)
    replayed = replay.replay(ids, tokenizer)
    if replayed is not None:
        candidate, starts, ends = replayed
        if candidate == text:
            return starts, ends
        deleted = _deleted_positions(candidate, text)
        if deleted is not None:
            return _shift_down(starts, deleted), _shift_down(ends, deleted)
    return _prefix_bounds(ids, tokenizer, text)


def token_char_spans(token_ids: Sequence[int], tokenizer: Any, *, text: str | None = None) -> list[tuple[int, int]]:
    """The character span `(start, end)` of each token in `tokenizer.decode(token_ids, skip_special_tokens=True)`.

    Spans are monotone (starts and ends never decrease) and lie within the text; tokens with distinct spans tile the
    text exactly. Tokens that share a multi-byte character share one span covering it; skipped special tokens are
    zero-width. Pass `text` when the caller already decoded (it must be that decode). Byte-level BPE and
    SentencePiece-style tokenizers are replayed from per-id tables in linear time, and the replay is checked
    against the text; anything else (or a replay that does not reproduce the text up to deleted whitespace) falls
    back to exact, quadratic prefix decoding.
    """
    ids = list(token_ids)
    if not ids:
        return []
    if text is None:
        text = tokenizer.decode(ids, skip_special_tokens=True)
    return list(zip(*_token_bounds(ids, tokenizer, text), strict=True))


def planning_mask(token_ids: Sequence[int], text: str, spans: Sequence[Span], tokenizer: Any) -> list[int]:
    """One 0/1 per token: 1 where the token's character span overlaps a matched span (a zero-width token never).

    `text` must be `tokenizer.decode(token_ids, skip_special_tokens=True)` and `spans` matches in it. Token starts
    and ends are sorted, so the tokens overlapping a match are one slice, found by bisection.
    """
    ids = list(token_ids)
    mask = [0] * len(ids)
    if not ids or not spans:
        return mask
    starts, ends = _token_bounds(ids, tokenizer, text)
    for start, end in _merge(spans):
        first = bisect_right(ends, start)  # the first token ending after the match starts
        stop = bisect_left(starts, end, first)  # the first token starting at or after the match's end
        mask[first:stop] = [1] * (stop - first)
    if any(map(operator.eq, starts, ends)):
        for k, (start, end) in enumerate(zip(starts, ends, strict=True)):
            if start == end:
                mask[k] = 0
    return mask


def _merge(spans: Sequence[Span]) -> list[tuple[int, int]]:
    """The union of the spans as sorted, disjoint `(start, end)` intervals."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted((span.start, span.end) for span in spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def annotate(token_ids: Sequence[int], tokenizer: Any, matcher: GramMatcher) -> tuple[str, list[Span], list[int]]:
    """Decode a response (skipping special tokens), find its Strategic Grams, and mark its planning tokens."""
    text = tokenizer.decode(list(token_ids), skip_special_tokens=True)
    spans = matcher.find(text)
    return text, spans, planning_mask(token_ids, text, spans, tokenizer)
