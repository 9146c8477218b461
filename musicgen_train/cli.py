"""The ``musicgen-train`` console script: ``musicgen-train STAGE [ACTION] [key=value ...]``.

Every stage takes Hydra overrides over the same config tree; ``recipe=NAME`` picks a recipe.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from musicgen_train.errors import UserError
from musicgen_train.logs import setup_logging

# stage -> "module:function"; modules are imported only when their stage runs.
STAGES = {
    "prepare": "musicgen_train.data.prepare:run",
    "train": "musicgen_train.training.train:run",
    "evaluate": "musicgen_train.evaluation.run:run",
    "export": "musicgen_train.registry.export:run",
    "registry": "musicgen_train.registry.commands:run",
    "import": "musicgen_train.registry.import_audiocraft:run",
    "serve": "musicgen_train.serve.main:run",
    "run": "musicgen_train.pipeline:run",
    "generate": "musicgen_train.generate:run",
}

USAGE = f"""usage: musicgen-train STAGE [ACTION] [key=value ...]

stages: {", ".join(STAGES)}
  prepare   audio -> validated, captioned token cache      (data.source=... data.output=...)
  train     fine-tune on the token cache                   (recipe=... trainer.max_steps=...)
  evaluate  generate for a prompt set, FAD + CLAP report   (model=... eval=...)
  export    checkpoint -> HF model + model card + registry (checkpoint=... registry.name=...)
  registry  list | show | promote | download               (registry.name=... registry.alias=...)
  import    audiocraft fine-tune -> HF model [+ registry]  (source=... base=... registry.name=...)
  serve     HTTP inference service                         (model=models:/name@alias serve.port=...)
  run       prepare -> train -> evaluate -> export, what `python train.py` does
  generate  text -> wav with the generation engine        (model=... prompt="..." duration=12)
"""


def run_stage(stage: str, args: Sequence[str]):
    """Compose the config for ``args`` and run ``stage``; returns what the stage returns."""
    from musicgen_train.config import load_config

    if stage not in STAGES:
        raise UserError(f"unknown stage {stage!r}: choose one of {list(STAGES)}")
    actions = [a for a in args if "=" not in a]
    overrides = [a for a in args if "=" in a]
    cfg = load_config(overrides)
    from musicgen_train.generation.config import export_defaults

    export_defaults(cfg)  # generation.precision/threads reach every stage that generates
    module_name, function_name = STAGES[stage].split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    return function(cfg, *actions)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    setup_logging()
    try:
        run_stage(argv[0], argv[1:])
    except UserError as err:
        print(f"musicgen-train: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("musicgen-train: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
