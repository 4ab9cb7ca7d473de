"""Benchmark: Strategic Gram annotation throughput, Aho-Corasick (`hicra.grams`) versus one regex per gram.

Builds N synthetic responses of realistic length (300-800 words: math filler, Strategic Gram phrases with sentence
capitals and punctuation, line breaks, a few non-ASCII characters), trains a byte-level BPE tokenizer on some of them
(locally, no download), and times, over the same token ids and decoded texts:
  (a) `GramMatcher.find` + `planning_mask`;
  (b) a loop of one compiled regular expression per gram (the baseline, below) + the same `planning_mask`.
The two run interleaved in chunks, so a neighbour's load on the shared cores hits both alike.

Run: `python bench/annotate.py` (10,000 responses: about 8 minutes on 2 shared cores, nearly all of it the regex
baseline) or `python bench/annotate.py --n 300` for a quick run.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from hicra.grams import GramMatcher, Span, load_grams, planning_mask  # noqa: E402

FILLER = [
    "the", "of", "and", "a", "to", "is", "we", "that", "x", "y", "n", "it", "for", "in", "this", "are", "with",
    "value", "sum", "equation", "number", "so-called", "integer", "equal", "term", "terms", "side", "both", "each",
    "total", "product", "factor", "root", "square", "cube", "times", "divide", "multiply", "add", "subtract",
    "result", "solution", "answer", "then", "gives", "get", "have", "has", "which", "where", "because", "let", "be",
    "as", "on", "at", "by", "from", "into", "its", "our", "first", "second", "third", "last", "count", "case",
    "cases", "odd", "even", "prime", "digit", "digits", "remainder", "modulo", "function", "derivative", "area",
    "triangle", "circle", "radius", "angle", "length", "width", "height", "probability", "expected", "coordinate",
    "point", "line", "slope", "butter", "sofa", "nowhere", "buttress", "thereafter", "wait_time", "step_size",
    "okay-ish", "2", "3", "4", "5", "7", "10", "12", "15", "24", "100", "x^2", "2x+1", "(a+b)", "\\frac{1}{2}",
    "\\sqrt{3}", "=", "+", "-", "<", ">", "≤", "π", "café", "数", "😀",
]  # fmt: skip
"""Filler words: math prose, numbers and formulas, near-misses of grams ("butter", "nowhere"), a little Unicode."""

ENDINGS = [". ", ". ", ". ", "? ", ".\n", ".\n\n", ":\n", ", ", ".\n\n## Step 2\n"]


def make_response(rng: random.Random, grams: Sequence[str]) -> str:
    """One response of 300-800 words: sentences of filler, about half opening with a gram, some with one inside."""
    target = rng.randint(300, 800)
    words: list[str] = []
    parts: list[str] = []
    while len(words) < target:
        sentence = [rng.choice(FILLER) for _ in range(rng.randint(6, 18))]
        if rng.random() < 0.3:
            sentence.insert(rng.randrange(len(sentence)), rng.choice(grams))
        if rng.random() < 0.5:
            sentence.insert(0, rng.choice(grams))
        text = " ".join(sentence)
        text = text[0].upper() + text[1:]
        words += text.split()
        parts.append(text + rng.choice(ENDINGS))
    return "".join(parts).strip()


def train_tokenizer(corpus: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE (GPT-2/Qwen/Llama-3 style) trained on `corpus`."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|eos|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|eos|>")


class RegexMatcher:
    """The baseline: one compiled, case-insensitive regular expression per gram, each scanned over the text.

    Same rules as `GramMatcher` (word boundaries by lookarounds, a space in a gram matches any whitespace run);
    it finds non-overlapping occurrences of each gram, which differs from `GramMatcher` only where a gram overlaps
    itself ("step by step" twice in "step by step by step").
    """

    def __init__(self, grams: Sequence[str]):
        self.patterns = [
            (re.compile(r"(?<!\w)" + r"\s+".join(map(re.escape, g.lower().split())) + r"(?!\w)", re.IGNORECASE), g)
            for g in dict.fromkeys(g.lower().strip() for g in grams)
        ]

    def find(self, text: str) -> list[Span]:
        """All matches, sorted by (start, end)."""
        found = [(m.start(), m.end(), gram) for pattern, gram in self.patterns for m in pattern.finditer(text)]
        found.sort()
        return [Span(s, e, g) for s, e, g in found]


def machine() -> str:
    """The machine this ran on: CPU model, usable and total cores, Python."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        model = names[0] if names else model
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}; {usable} usable of {os.cpu_count()} cores; Python {platform.python_version()}"


def main() -> None:
    """Build the data, check that both methods agree, time them and print throughput."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000, help="number of responses (default 10,000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab-size", type=int, default=8000, help="tokenizer vocabulary (default 8,000)")
    parser.add_argument("--chunk", type=int, default=250, help="responses per timed chunk, alternating (a) and (b)")
    args = parser.parse_args()

    print(f"machine: {machine()}")
    grams = load_grams()
    rng = random.Random(args.seed)
    built = time.perf_counter()
    responses = [make_response(rng, grams) for _ in range(args.n)]
    tokenizer = train_tokenizer(responses[:1000], args.vocab_size)
    ids = [enc.ids for enc in tokenizer.backend_tokenizer.encode_batch(responses, add_special_tokens=False)]
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    tokens = sum(map(len, ids))
    words = sum(len(r.split()) for r in responses)
    print(
        f"data: {args.n} responses, {words / args.n:.0f} words and {tokens / args.n:.0f} tokens on average, "
        f"{sum(map(len, texts)) / args.n:.0f} characters; built in {time.perf_counter() - built:.1f} s"
    )

    start = time.perf_counter()
    matcher = GramMatcher(grams)
    setup_ac = time.perf_counter() - start
    start = time.perf_counter()
    baseline = RegexMatcher(grams)
    setup_re = time.perf_counter() - start
    print(f"setup: automaton {setup_ac * 1e3:.1f} ms, {len(baseline.patterns)} regexes {setup_re * 1e3:.1f} ms")

    planning_mask(ids[0], texts[0], [Span(0, 1, "")], tokenizer)  # builds the tokenizer's tables before timing
    cpu = {"a": 0.0, "b": 0.0, "mask": 0.0}
    wall = dict(cpu)
    differ = matches = marked = 0

    def timed(key: str, work: Callable[[], list[list[int]]]) -> list[list[int]]:
        """Run `work`, adding its CPU and wall-clock time to `key`."""
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        result = work()
        cpu[key] += time.process_time() - start_cpu
        wall[key] += time.perf_counter() - start_wall
        return result

    for first in range(0, args.n, args.chunk):
        batch = list(zip(ids[first : first + args.chunk], texts[first : first + args.chunk], strict=True))
        masks_a = timed("a", lambda b=batch: [planning_mask(i, t, matcher.find(t), tokenizer) for i, t in b])
        masks_b = timed("b", lambda b=batch: [planning_mask(i, t, baseline.find(t), tokenizer) for i, t in b])
        found = [(i, t, matcher.find(t)) for i, t in batch]
        timed("mask", lambda f=found: [planning_mask(i, t, s, tokenizer) for i, t, s in f])
        matches += sum(len(s) for _, _, s in found)
        marked += sum(map(sum, masks_a))
        differ += sum(a != b for a, b in zip(masks_a, masks_b, strict=True))

    print(
        f"matches: {matches / args.n:.1f} per response; planning tokens {marked / tokens:.1%}; "
        f"masks differing between (a) and (b): {differ} of {args.n}"
    )
    print("throughput in tokens/s of CPU time (process_time; wall-clock in brackets, slower when cores are shared):")
    print(f"(a) GramMatcher.find + planning_mask: {tokens / cpu['a']:>12,.0f}  ({tokens / wall['a']:,.0f})")
    print(f"(b) regex per gram + planning_mask:   {tokens / cpu['b']:>12,.0f}  ({tokens / wall['b']:,.0f})")
    print(f"    planning_mask alone:               {tokens / cpu['mask']:>12,.0f}  ({tokens / wall['mask']:,.0f})")
    per = 1e6 / args.n
    print(
        f"    per response (CPU): find {(cpu['a'] - cpu['mask']) * per:.0f} us, "
        f"regexes {(cpu['b'] - cpu['mask']) * per:.0f} us, planning_mask {cpu['mask'] * per:.0f} us"
    )
    print(f"speed-up (a) over (b): {cpu['b'] / cpu['a']:.1f}x CPU, {wall['b'] / wall['a']:.1f}x wall (goal >= 10x)")


if __name__ == "__main__":
    main()
