"""bench/gpu_check.sh end to end in its CPU smoke mode: a tiny Qwen3 through generation and the DeepSpeed update."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT, child_env


def test_gpu_check_smoke_writes_its_figures(tmp_path):
    out = tmp_path / "check.json"
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--smoke", "--out", str(out)],
        env=child_env(PYTHON=sys.executable),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert result["smoke"] is True and result["model"]["architecture"] == "Qwen3ForCausalLM"
    hf = result["generation_hf"]
    assert 0 < hf["generated_tokens"] <= 4 * 8 and hf["tokens_per_s"] > 0
    update = result["update"]
    assert update["optimizer_steps"] == 2 and len(update["loss"]) == 2
    assert update["tokens_per_s"] > 0 and update["training_flops"] > 6 * result["model"]["parameters"] * 8 * 32
    assert update["mfu"] is None  # no bf16 peak for a CPU
    assert "update (fp32, ZeRO-2)" in done.stdout
