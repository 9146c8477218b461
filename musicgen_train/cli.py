"""The ``musicgen-train`` console script: ``musicgen-train STAGE [ACTION] [key=value ...]``.

Every stage takes Hydra overrides over the same config tree; ``recipe=NAME`` picks a recipe.
"""

from __future__ import annotations

import importlib
import inspect
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
  registry  list | show | promote | download | delete      (registry.name=... registry.alias=...)
  import    audiocraft fine-tune -> HF model [+ registry]  (source=... base=... registry.name=...)
  serve     HTTP inference service                         (model=models:/name@alias serve.port=...)
  run       prepare -> train -> evaluate -> export, what `python train.py` does
  generate  text -> wav with the generation engine        (model=... prompt="..." duration=12)

options (after the stage): --help, -h   this text
                           --cfg [job]  print the composed config and stop (as Hydra's --cfg job)
settings: key=value, the keys of `musicgen-train STAGE --cfg`; docs/ explains each stage
"""


def run_stage(stage: str, args: Sequence[str]):
    """Compose the config for ``args`` and run ``stage``; returns what the stage returns."""
    from musicgen_train.config import load_config

    if stage not in STAGES:
        raise UserError(f"unknown stage {stage!r}: choose one of {list(STAGES)}")
    actions = [a for a in args if "=" not in a]
    overrides = [a for a in args if "=" in a]
    options = [a for a in actions if a.startswith("-")]
    if options:
        return _run_option(stage, options, overrides)
    cfg = load_config(overrides)
    from musicgen_train.generation.config import export_defaults

    export_defaults(cfg)  # generation.precision/threads reach every stage that generates
    module_name, function_name = STAGES[stage].split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    if actions and not _takes_actions(function):
        raise UserError(
            f"{stage} takes no action word, got {' '.join(actions)!r}: settings are key=value"
            f" (musicgen-train {stage} --cfg lists them)"
        )
    return function(cfg, *actions)


def _run_option(stage: str, options: list[str], overrides: list[str]) -> None:
    """``--help`` prints the usage; ``--cfg [job]`` the config these overrides compose."""
    from musicgen_train.config import load_config

    if options[0] in ("-h", "--help"):
        print(USAGE)
        return None
    if options[0] in ("--cfg", "-c"):
        from omegaconf import OmegaConf

        # Unvalidated: the point is often to see why a setting is refused.
        print(OmegaConf.to_yaml(load_config(overrides, validate=False)), end="")
        return None
    raise UserError(f"unknown option {options[0]!r} for {stage}: the options are --help and --cfg")


def _takes_actions(function) -> bool:
    """Whether a stage's ``run(cfg, ...)`` accepts action words after its config."""
    parameters = list(inspect.signature(function).parameters.values())[1:]
    return bool(parameters)


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
