"""The vLLM rollout worker: `PYTHON hicra/vllm_worker.py REQUEST.json RESULT.json`, run by the vLLM environment.

vLLM pins its own torch and transformers, so it lives in a second Python environment (`make vllm-env`) and this
script imports only vllm and the standard library. One process per rollout stage: it loads the policy's HF folder in
a fresh engine, samples every request, writes the result file and exits, which frees the accelerator's memory for
the update. `VLLMGenerator` (hicra/generate.py) writes the request and reads the result.

Request (JSON): model (folder), prompt_token_ids (one list per sample), seeds (one per sample), max_new_tokens,
temperature, top_p, engine (keyword arguments of `vllm.LLM`: tensor_parallel_size, gpu_memory_utilization, dtype,
max_num_seqs). Result (JSON): generations, one {token_ids, logprobs, finish_reason} per sample in request order, and
seconds {load, generate}; written atomically (a crashed worker leaves none).

Seeds: one request per sample with `SamplingParams(n=1, seed=...)`, so each sample draws from its own generator
seeded from (run, iteration, prompt, sample): its random draws do not depend on which other samples share the
batch (its logits may, by float rounding).
Log-probs: `logprobs=0` returns the sampled token's log-prob only; `logprobs_mode="processed_logprobs"` takes it
after temperature and top-p, the distribution that was sampled from (the default, raw log-probs, ignores both).

Exit codes: 0 done, 3 the request or engine settings were rejected (a ValueError: retrying cannot help), anything
else a crash (worth a retry).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

REJECTED = 3


def _exit_with_parent() -> None:
    """End this process when the stage that started it dies (even by SIGKILL), so no orphan engine holds memory."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def generate(request: dict) -> dict:
    """Sample one response per (prompt, seed) pair of the request with a fresh `vllm.LLM`; the result's content."""
    started = time.perf_counter()
    from vllm import LLM, SamplingParams

    llm = LLM(model=request["model"], logprobs_mode="processed_logprobs", **request["engine"])
    loaded = time.perf_counter()
    params = [
        SamplingParams(
            n=1,
            seed=seed,
            temperature=request["temperature"],
            top_p=request["top_p"],
            max_tokens=request["max_new_tokens"],
            logprobs=0,
            detokenize=False,  # the caller decodes with its own tokenizer, as for the transformers backend
        )
        for seed in request["seeds"]
    ]
    prompts = [{"prompt_token_ids": ids} for ids in request["prompt_token_ids"]]
    outputs = llm.generate(prompts, params, use_tqdm=False)
    generations = []
    for output in outputs:
        sample = output.outputs[0]
        token_ids = list(sample.token_ids)
        logprobs = [float(step[token].logprob) for step, token in zip(sample.logprobs, token_ids, strict=True)]
        generations.append({"token_ids": token_ids, "logprobs": logprobs, "finish_reason": sample.finish_reason})
    seconds = {"load": loaded - started, "generate": time.perf_counter() - loaded}
    return {"generations": generations, "seconds": seconds}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: vllm_worker.py REQUEST.json RESULT.json", file=sys.stderr)
        return 2
    _exit_with_parent()
    request_path, result_path = map(Path, argv)
    request = json.loads(request_path.read_text())
    try:
        result = generate(request)
    except ValueError as err:
        print(f"vLLM rejected the request: {err}", file=sys.stderr)
        return REJECTED
    partial = result_path.with_suffix(".partial")
    partial.write_text(json.dumps(result))
    os.replace(partial, result_path)
    return 0


if __name__ == "__main__":  # vLLM may start worker processes that import this module: keep the guard
    sys.exit(main(sys.argv[1:]))
