"""How the project logs: one prefix, library chatter turned down. A utility every layer may use."""

from __future__ import annotations

import logging
import os
import sys


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="[musicgen-train] %(message)s", force=True)
    # transformers warns that MusicGen's pad id lies outside the codebook: it does by design.
    # Environment first, so a command that never loads a model never imports transformers.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:  # already imported: its settings were read, set them
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
