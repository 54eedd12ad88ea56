"""The Hugging Face hub, when it cannot be reached: fail (or read the local cache) at once, not after retries.

Without a network, transformers and datasets retry every hub request for 25–55 s, printing each retry twice,
before they say that the files are not cached. One short connection probe before the first hub request
decides instead: if the hub is unreachable, the libraries are put in offline mode, so files already in the
local cache still load at once and missing ones fail at once, with one message that says why.
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 3.0
_TRUE = {"1", "ON", "YES", "TRUE"}


def offline_requested() -> bool:
    return any(os.environ.get(k, "").upper() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                                                                  "HF_DATASETS_OFFLINE"))


@functools.lru_cache(maxsize=1)
def reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub endpoint ($HF_ENDPOINT or huggingface.co) opens within `timeout`."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
        return True
    except OSError:  # no DNS, refused, unreachable or timed out
        return False


def go_offline() -> None:
    """Offline mode for huggingface_hub, transformers and datasets, also when they are already imported."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import huggingface_hub.constants as hub_constants

    hub_constants.HF_HUB_OFFLINE = True
    try:
        import datasets.config as datasets_config

        datasets_config.HF_HUB_OFFLINE = datasets_config.HF_DATASETS_OFFLINE = True
    except ImportError:  # pragma: no cover - datasets is a dependency, but keep the hub helper independent
        pass


def prepare(what: str) -> str:
    """Call before the first hub request for `what`; returns '' when the hub is reachable, else a sentence for
    the error message should the local cache not hold it."""
    if offline_requested():
        return f"offline mode is on (HF_HUB_OFFLINE) and {what} is not in the local hub cache"
    if reachable():
        return ""
    go_offline()
    return (f"the hub ({os.environ.get('HF_ENDPOINT') or 'huggingface.co'}) cannot be reached from this machine "
            f"and {what} is not in the local hub cache: download it where there is a network (or copy the "
            "folder here) and give its local path")


def check_push() -> None:
    """Before a run that ends with `train.push_to_hub`: the hub must be reachable and a token known, so that
    hours of training do not end in a failed upload."""
    from huggingface_hub import get_token

    from robalign.errors import ConfigError

    said = prepare("the upload target")
    if said:
        raise ConfigError("train.push_to_hub: " + said.split(" and ")[0] + "; train without --push-to-hub and "
                          "upload final/ later (huggingface_hub's upload_folder)")
    if not get_token():
        raise ConfigError("train.push_to_hub: no hub token found; log in (`hf auth login`) or set HF_TOKEN")


def push_folder(folder, repo_id: str, *, private: bool, message: str) -> str:
    """Creates `repo_id` (a bare name goes under the token's account) if needed and uploads `folder`; returns
    the repository id."""
    from huggingface_hub import HfApi

    api = HfApi()
    repo = api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo.repo_id, commit_message=message)
    return repo.repo_id
