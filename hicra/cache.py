"""Model folders built once and cached on disk, complete or absent (the tiny policy, the converted SmolLM2)."""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.errors import HfHubHTTPError


def default_cache_dir() -> Path:
    """`$HICRA_CACHE`, else ~/.cache/hicra."""
    return Path(os.environ.get("HICRA_CACHE") or Path.home() / ".cache" / "hicra")


def build_once(target: Path, build: Callable[[Path], None], check: Callable[[Path], Path]) -> Path:
    """Return the folder `target`, running `build(folder)` into a fresh folder first if it does not exist.

    The build goes to a temporary folder beside the target and is renamed into place at the end, so a killed build
    leaves no half folder and concurrent builds of the same target are safe. An existing target goes through
    `check`, which returns it or raises.
    """
    if target.exists():
        return check(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(target)
    temp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    temp.mkdir()
    try:
        build(temp)
        try:
            temp.rename(target)
        except OSError:
            if not target.exists():  # a concurrent build of the same target may have won the race
                raise
            return check(target)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return target


def _remove_stale_temps(target: Path) -> None:
    """Delete temporary build folders of `target` whose process is gone (a build killed by SIGKILL leaves one)."""
    for temp in target.parent.glob(f".{target.name}.tmp-*"):
        try:
            os.kill(int(temp.name.rsplit("-", 2)[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(temp, ignore_errors=True)
        except (ValueError, PermissionError):  # not our naming, or a live process of another user
            continue


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model_path(path: str) -> Path:
    """The local HF folder of `model.path`: the folder itself, or for a hub id (`Qwen/Qwen3-4B-Base`) with no such
    local folder, its snapshot in the HF cache, downloaded now if missing (so validating a config never downloads)."""
    local = Path(path).expanduser()
    if (local / "config.json").is_file():
        return local
    if local.exists() or not HUB_ID.match(path):
        raise FileNotFoundError(f"model.path {path} is not an HF model folder (no config.json) nor a hub id")
    try:
        return Path(snapshot_download(repo_id=path, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))
    except (HfHubHTTPError, OSError, ValueError) as err:  # offline and not cached, unknown repository, ...
        raise FileNotFoundError(f"model.path {path}: not in the HF cache and not downloadable: {err}") from err
