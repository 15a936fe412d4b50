"""Hub ids, written `hf:org/name`: download with `huggingface_hub.snapshot_download`, or say clearly why not.

The prefix is required: a bare "org/name" is a local path, so a typo in "runs/gpt-mini" is reported as a missing
folder instead of fetching a stranger's repository.

Only what lmforge reads is fetched: config and tokenizer files and the safetensors weights (the .bin weights
only when the repository has no safetensors). With HF_HUB_OFFLINE=1 only the local Hugging Face cache is used.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import CheckpointError
from ..io import HUB_ID

HUB_PREFIX = "hf:"
METADATA = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "chat_template.jinja", "*.safetensors", "model.safetensors.index.json"]
BIN_FILES = ["pytorch_model.bin", "pytorch_model-*.bin", "pytorch_model.bin.index.json"]


def hub_repo(path: str | os.PathLike | None) -> str | None:
    """The repository of a hub id `hf:org/name` (None for anything else); a malformed one is an error."""
    text = str(path) if path is not None else ""
    if not text.startswith(HUB_PREFIX):
        return None
    repo = text[len(HUB_PREFIX):]
    if not HUB_ID.match(repo):
        raise CheckpointError(f"{text!r} is not a hub id; write hf:ORG/NAME, e.g. hf:HuggingFaceTB/SmolLM2-135M")
    return repo


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def download(repo_id: str, revision: str | None = None) -> Path:
    """The local folder of `repo_id` (downloaded, or from the cache when offline)."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                            RevisionNotFoundError)
    except ImportError:
        raise CheckpointError(f"{repo_id!r} is not a local folder and huggingface_hub is not installed; "
                              "pip install huggingface_hub, or pass a local folder") from None
    local_only = offline()
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=METADATA,
                                        local_files_only=local_only))
        if not any(folder.glob("*.safetensors")):
            folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=METADATA + BIN_FILES,
                                            local_files_only=local_only))
    except (RepositoryNotFoundError, GatedRepoError) as e:
        kind = "is gated: accept its license on huggingface.co and log in (hf auth login)" if isinstance(
            e, GatedRepoError) else "does not exist on the Hugging Face hub (or is private: log in with hf auth login)"
        raise CheckpointError(f"{repo_id!r} is not a local folder, and the repository {kind}") from None
    except RevisionNotFoundError:
        raise CheckpointError(f"{repo_id!r}: revision {revision!r} does not exist on the hub") from None
    except LocalEntryNotFoundError:
        why = ("HF_HUB_OFFLINE=1 is set and it is not in the local Hugging Face cache" if local_only else
               "lmforge cannot reach the Hugging Face hub (no network?) and it is not in the local cache")
        raise CheckpointError(f"{repo_id!r} is not a local folder and {why}; download it where there is a network "
                              "(hf download ORG/NAME --local-dir DIR) and pass the local folder") from None
    except Exception as e:  # connection errors, timeouts, proxies: all say the same to the user
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{repo_id!r} is not a local folder and lmforge cannot reach the Hugging Face hub "
                              f"({type(e).__name__}: {first}); pass a local folder, or set HF_HUB_OFFLINE=1 to use "
                              "the local cache") from None
    return folder


__all__ = ["hub_repo", "download", "offline", "HUB_PREFIX"]
