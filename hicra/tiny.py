"""The embedded default policy: a synthetic math task, a locally trained tokenizer and a tiny Llama warmed up by SFT.

Everything is built on the CPU from nothing (no hub download), deterministically from a seed, and cached on disk,
so the project's flows run with no GPU and no network. Worked solutions use Strategic Gram phrases (paper,
Appendix A) at their decision points, so HICRA has planning tokens to credit.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from hicra.cache import build_once, default_cache_dir
from hicra.prompts import PLAIN_TEMPLATE
from schemas.config import TinyModelSection

TASK_VERSION = "strategy-v2"
"""Bump when the task text, tokenizer recipe or training recipe changes: it is part of the cache key."""

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
VOCAB_SIZE = 1000
TOKENIZER_CORPUS = 2000  # train problems the tokenizer is trained on
EVAL_SHARE = 5  # one (template, numbers) combination in EVAL_SHARE belongs to the eval split
MAX_POSITIONS = 192
MANIFEST = "hicra_tiny.json"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}Question: {{ message['content'] }}\nSolution:"
    "{% elif message['role'] == 'assistant' %} {{ message['content'] }}{{ eos_token }}\n"
    "{% endif %}{% endfor %}"
)
"""Maps a chat onto the plain format the model was trained on, so chat-template users get the same prompt."""

STRATEGIES = {
    "add": "Let's break it down into manageable steps and add one {container} at a time:",
    "multiply": "A more direct approach is to multiply the {containers} by the {items}:",
}
"""The two solution methods and the planning phrase that announces each (each holds a Strategic Gram: `break it
down into manageable steps`, `a more direct approach is`). Repeated addition takes k - 1 running sums whose count
the model must keep; multiplication takes one table fact. The phrase is the first thing a solution says, so the
choice of method is the policy's first decision."""
CONCLUSION = "So the answer is"

NAMES = ["Tom", "Sara", "Ben", "Mia", "Leo", "Ana", "Sam", "Eva"]
TEMPLATES = [
    ("bag", "bags", "apples"),
    ("box", "boxes", "pens"),
    ("tray", "trays", "cookies"),
    ("shelf", "shelves", "books"),
    ("pack", "packs", "cards"),
]
"""(container, containers, items) of the word problems: `k containers with b items in each`."""

Progress = Callable[[int, int, float], None]
DEFAULT = TinyModelSection()
"""The default settings (`model.tiny` of the run config): the one place they are written."""


def _split_of(template: int, numbers: list[int]) -> str:
    """Assign a (template, numbers) combination to a split by a fixed hash, so eval problems are never trained on."""
    key = f"{template}:{','.join(map(str, numbers))}".encode()
    return "eval" if zlib.crc32(key) % EVAL_SHARE == 0 else "train"


def _solution(strategy: str, k: int, b: int, words: dict[str, str]) -> str:
    """The worked solution of `k containers with b items in each` by one method."""
    parts = [STRATEGIES[strategy].format(**words)]
    if strategy == "add":
        sums = [f"{b * i} + {b} = {b * (i + 1)}" for i in range(1, k)]
        parts.append(", ".join(sums) + ".")
    else:
        parts.append(f"{k} * {b} = {k * b}.")
    parts.append(f"{CONCLUSION} \\boxed{{{k * b}}}.")
    return " ".join(parts)


def _problem(seed: int, split: str, index: int) -> dict:
    """Draw problem `index` of a split; only (seed, split, index) decide it. The method of its worked solution is
    drawn 50/50, so the warm-up teaches both and leaves the choice to RL."""
    rng = random.Random(f"hicra-tiny:{seed}:{split}:{index}")
    while True:
        template = rng.randrange(len(TEMPLATES))
        k, b = rng.randint(3, 9), rng.randint(2, 9)
        if _split_of(template, [k, b]) == split:
            break
    container, containers, items = TEMPLATES[template]
    words = {"container": container, "containers": containers, "items": items}
    name = rng.choice(NAMES)
    problem = f"{name} has {k} {containers} with {b} {items} in each {container}. How many {items} does {name} have?"
    strategy = rng.choice(sorted(STRATEGIES))
    solution = _solution(strategy, k, b, words)
    return {"id": f"synth-{split}-{index}", "problem": problem, "answer": str(k * b), "solution": solution,
            "strategy": strategy}  # fmt: skip


_STRATEGY_PATTERNS = {
    name: re.compile(re.escape(phrase.split("{")[0].strip()), re.IGNORECASE) for name, phrase in STRATEGIES.items()
}


def strategy_of(response: str) -> str | None:
    """The method a response announces first (a key of STRATEGIES), or None when it announces none."""
    found = [(m.start(), name) for name, pattern in _STRATEGY_PATTERNS.items() if (m := pattern.search(response))]
    return min(found)[1] if found else None


def synthetic_problems(n: int, seed: int, split: str = "train") -> list[dict]:
    """Return the first `n` problems of a split (dicts with id, problem, answer, solution), deterministically."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', not {split!r}")
    return [_problem(seed, split, i) for i in range(n)]


def train_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE with one token per digit (so arithmetic is learnable) and wrap it for transformers."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def _sft_batch(tokenizer: PreTrainedTokenizerFast, problems: list[dict]) -> dict[str, torch.Tensor]:
    """Tokenize prompt + " " + solution + EOS, right-padded; labels cover only the solution and EOS."""
    prompts = tokenizer([PLAIN_TEMPLATE.format(problem=p["problem"]) for p in problems])["input_ids"]
    answers = tokenizer([" " + p["solution"] for p in problems], add_special_tokens=False)["input_ids"]
    rows = [(p + a + [tokenizer.eos_token_id], len(p)) for p, a in zip(prompts, answers, strict=True)]
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, n_prompt) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def _lr_factor(step: int, total: int) -> float:
    """Linear warm-up over the first 5% of steps, then cosine decay to zero."""
    ramp = max(1, total // 20)
    if step < ramp:
        return (step + 1) / ramp
    return 0.5 * (1.0 + math.cos(math.pi * (step - ramp) / max(1, total - ramp)))


def _is_complete(folder: Path) -> bool:
    names = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", MANIFEST)
    return all((folder / name).is_file() for name in names)


def _build(folder: Path, settings: dict, progress: Progress | None) -> None:
    """Train the tokenizer and warm up the model into `folder` (which exists and is empty)."""
    started = time.monotonic()
    seed, steps, batch_size = settings["seed"], settings["warmup_steps"], settings["batch_size"]
    corpus = [
        f"{PLAIN_TEMPLATE.format(problem=p['problem'])} {p['solution']}"
        for p in synthetic_problems(TOKENIZER_CORPUS, seed, "train")
    ]
    tokenizer = train_tokenizer(corpus)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings["hidden_size"],
        intermediate_size=settings["intermediate_size"],
        num_hidden_layers=settings["num_layers"],
        num_attention_heads=settings["num_heads"],
        num_key_value_heads=settings["num_heads"],
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config._attn_implementation = "eager"  # for this size on the CPU, eager attention is about 25% faster than sdpa
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["lr"], betas=(0.9, 0.95), weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, steps))
    loss = float("nan")
    for step in range(steps):
        batch = _sft_batch(tokenizer, [_problem(seed, "train", step * batch_size + i) for i in range(batch_size)])
        out = model(**batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss = out.loss.item()
        if progress is not None:
            progress(step + 1, steps, loss)
    model.eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    seconds = round(time.monotonic() - started, 1)
    manifest = {**settings, "final_loss": loss, "parameters": model.num_parameters(), "build_seconds": seconds}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))


def build_tiny_policy(
    out_dir: Path | None = None,
    *,
    hidden_size: int = DEFAULT.hidden_size,
    num_layers: int = DEFAULT.num_layers,
    num_heads: int = DEFAULT.num_heads,
    intermediate_size: int = DEFAULT.intermediate_size,
    warmup_steps: int = DEFAULT.warmup_steps,
    batch_size: int = DEFAULT.batch_size,
    lr: float = DEFAULT.lr,
    seed: int = 0,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> Path:
    """Return a folder with the warmed-up tiny policy (transformers format), building it only if it is missing.

    The folder is `out_dir` if given, else `<cache_dir>/tiny-<hash of task version, settings and seed>`. The build
    goes to a temporary folder beside it and is renamed into place at the end, so a killed build leaves no half
    folder and concurrent builds of the same settings are safe.
    """
    settings = {
        "task_version": TASK_VERSION,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "intermediate_size": intermediate_size,
        "warmup_steps": warmup_steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
    }
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    target = Path(out_dir) if out_dir is not None else Path(cache_dir or default_cache_dir()) / f"tiny-{key}"
    return build_once(
        target, lambda folder: _build(folder, {**settings, "key": key}, progress), lambda t: _check_existing(t, key)
    )


def _check_existing(target: Path, key: str) -> Path:
    """Return an existing policy folder if it is complete and was built with the same settings, else refuse."""
    if _is_complete(target) and json.loads((target / MANIFEST).read_text()).get("key") == key:
        return target
    raise FileExistsError(f"{target} exists but is not a tiny policy built with these settings (key {key})")


_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def last_boxed(text: str) -> str | None:
    """Return the content of the last \\boxed{...} in `text` (no nested braces), or None."""
    found = _BOXED.findall(text)
    return found[-1].strip() if found else None


@torch.no_grad()
def tiny_samples(
    model_dir: Path, n: int = 200, temperature: float = 1.0, samples: int = 1, seed: int = 0, batch: int = 50
) -> list[tuple[str | None, bool]]:
    """(announced strategy, answer correct) of each sampled answer to `n` eval problems; temperature 0: greedy."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    problems = synthetic_problems(n, seed, "eval")
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature > 0 else {}
    torch.manual_seed(seed)
    results = []
    for start in range(0, n, batch):
        chunk = problems[start : start + batch]
        enc = tokenizer([PLAIN_TEMPLATE.format(problem=p["problem"]) for p in chunk], return_tensors="pt", padding=True)
        out = model.generate(
            **enc,
            max_new_tokens=MAX_POSITIONS - enc["input_ids"].shape[1],
            num_return_sequences=samples,
            pad_token_id=tokenizer.pad_token_id,
            **(sampling or {"do_sample": False}),
        )
        texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        results += [(strategy_of(t), last_boxed(t) == chunk[i // samples]["answer"]) for i, t in enumerate(texts)]
    return results


def tiny_accuracy(
    model_dir: Path, n: int = 200, temperature: float = 1.0, samples: int = 1, seed: int = 0, batch: int = 50
) -> float:
    """Share of sampled answers (last \\boxed{}) equal to the reference on `n` eval problems; temperature 0: greedy."""
    results = tiny_samples(model_dir, n, temperature, samples, seed, batch)
    return sum(correct for _, correct in results) / len(results)
