"""Whether the Hugging Face Hub can be used, asked once per process before loading a hub id.

Without network (and without ``HF_HUB_OFFLINE=1``), ``from_pretrained`` retries every file it
looks for with growing back-off: about 45 s and twenty log lines per model before it falls back
to the cache or fails. One short connection attempt tells the same in a moment; when the hub
cannot be reached, models load from the local cache only (``local_files_only=True``), at once,
and a missing one fails with the loader's one-line message.
"""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

REACH_TIMEOUT_SECONDS = 3.0


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` says so: nothing is downloaded."""
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


@functools.cache
def hub_reachable(timeout: float = REACH_TIMEOUT_SECONDS) -> bool:
    """A TCP connection to the hub (``HF_ENDPOINT``, else huggingface.co) opens."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_kwargs(source: str) -> dict:
    """``from_pretrained`` keywords for ``source``: cache only when it is a hub id and the hub
    cannot be used; nothing for a local folder or a reachable hub."""
    if Path(str(source)).expanduser().exists():
        return {}
    if hub_offline() or not hub_reachable():
        return {"local_files_only": True}
    return {}
