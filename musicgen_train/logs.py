"""How the project logs: one prefix, library chatter turned down. A utility every layer may use."""

from __future__ import annotations

import logging
import os


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="[musicgen-train] %(message)s", force=True)
    # transformers warns that MusicGen's pad id lies outside the codebook: it does by design.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
