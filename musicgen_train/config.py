"""Compose the Hydra config tree: recipe, config groups, command-line overrides, validation.

Configs and recipes are found in a checkout (``configs/``, ``recipes/`` at the top) and in an
installed wheel (packaged as ``musicgen_train.configs`` / ``musicgen_train.recipes``).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from musicgen_train.errors import ConfigError

DEFAULT_RECIPE = "demo"
# Short keys for what people type most: `musicgen-train serve host=0.0.0.0 port=8000`.
SHORTHANDS = {
    "host": "serve.host",
    "port": "serve.port",
    "prompt": "generation.prompt",
    "prompts": "generation.prompts",
    "duration": "generation.duration",
    "melody": "generation.melody",
    "audio_prompt": "generation.audio_prompt",
}
# Each stage package may hold a ``config.py`` with ``validate(cfg)``; all run after composing.
# Top-level keys of `musicgen-train import` (configs/config.yaml): null or a path / model source.
PATH_KEYS = ("source", "base", "output")
STAGE_PACKAGES = ("model", "generation", "data", "training", "evaluation", "registry", "serve")


def run_name(recipe: str, data_name: str) -> str:
    """``recipe`` on its own data, else ``recipe-data`` (a name safe in paths and registries)."""
    data = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(data_name)).strip("-.") or "data"
    return str(recipe) if data == str(recipe) else f"{recipe}-{data}"


OmegaConf.register_new_resolver("run_name", run_name, replace=True)


def _resource_dir(name: str) -> Path:
    checkout = Path(__file__).resolve().parent.parent / name
    if checkout.is_dir():
        return checkout
    spec = importlib.util.find_spec(f"musicgen_train.{name}")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"cannot find the {name}/ folder of musicgen-train")
    return Path(next(iter(spec.submodule_search_locations)))


def configs_dir() -> Path:
    return _resource_dir("configs")


def recipes_dir() -> Path:
    return _resource_dir("recipes")


def available_recipes() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (configs_dir() / group).glob("*.yaml"))


def _rewrite_model_override(override: str) -> list[str]:
    """``model=org/name`` (not a config name) becomes ``model=custom model.id=org/name``."""
    value = override.split("=", 1)[1]
    if value in group_options("model"):
        return [override]
    return ["model=custom", quote_if_needed(f"model.id={value}")]


def quote_if_needed(override: str) -> str:
    """``key=value`` as Hydra reads it: a value its grammar cannot take unquoted (a checkpoint
    path the project printed, ``best-step=25-val_ce=3.7799.ckpt``, a path with spaces) is
    quoted, so every path the project prints is accepted back as it is. So is a value Hydra
    reads as a sweep (``data.source=/music/Rock, Pop``, ``glob(...)``): a single run composes
    one config, where a sweep only fails as an "ambiguous value"."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    key, value = override.split("=", 1)
    if not value or value[0] in "'\"[{":
        return override
    try:
        if not OverridesParser.create().parse_override(override).is_sweep_override():
            return override
    except HydraException:
        pass
    escaped = value.replace("'", "\\'")  # Hydra: a backslash escapes only a quote
    return f"{key}='{escaped}'"


def split_overrides(overrides: Iterable[str]) -> tuple[str, list[str]]:
    """Take ``recipe=NAME`` out of the overrides and rewrite free-form ``model=`` values."""
    recipe, rest = DEFAULT_RECIPE, []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        if item.startswith("recipe="):
            recipe = item.split("=", 1)[1]
        elif item.startswith("model="):
            rest.extend(_rewrite_model_override(item))
        elif item.split("=", 1)[0] in SHORTHANDS:
            key, value = item.split("=", 1)
            rest.append(quote_if_needed(f"{SHORTHANDS[key]}={value}"))
        else:
            rest.append(quote_if_needed(item))
    return recipe, rest


def load_config(overrides: Sequence[str] = (), *, validate: bool = True) -> DictConfig:
    """The composed, resolved and validated config for ``recipe=...`` plus overrides."""
    recipe, rest = split_overrides(overrides)
    if recipe not in available_recipes():
        raise ConfigError(
            f"recipe={recipe!r} is not a shipped recipe: choose one of {available_recipes()}"
        )
    searchpath = f"hydra.searchpath=[file://{configs_dir()}]"
    try:
        with initialize_config_dir(config_dir=str(recipes_dir()), version_base="1.3"):
            cfg = compose(config_name=recipe, overrides=[searchpath, *rest])
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(_one_line(err)) from err
    if "hydra" in cfg:
        cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    if validate:
        validate_config(cfg)
    return cfg


def _one_line(err: Exception) -> str:
    text = str(err).split("Config search path")[0].strip().splitlines()
    return " ".join(line.strip() for line in text if line.strip() and "full_key" not in line)


def validate_config(cfg: DictConfig) -> None:
    for key in PATH_KEYS:
        check_path(cfg, key)
    # One seed for splits, training, sampling and generate: numpy and Lightning take 0..2^32-1.
    check_range(cfg, "seed", 0, 2**32 - 1, allow_none=True, integer=True)
    for package in STAGE_PACKAGES:
        name = f"musicgen_train.{package}.config"
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).validate(cfg)


# --- small checks the stage validators share -------------------------------------------------


def check_path(cfg: DictConfig, key: str) -> None:
    """``key`` is null or names something: a path, a hub id, a model source."""
    value = OmegaConf.select(cfg, key)
    if value is not None and not (isinstance(value, str) and value.strip()):
        raise ConfigError(f"{key}={value!r} is not allowed: it must be null or a path or name")


def check_choice(cfg: DictConfig, key: str, allowed: Sequence) -> None:
    value = OmegaConf.select(cfg, key)
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed: choose one of {list(allowed)}")


def check_range(
    cfg: DictConfig,
    key: str,
    low: float | None = None,
    high: float | None = None,
    *,
    allow_none: bool = False,
    integer: bool = False,
) -> None:
    """``key`` holds a number within ``[low, high]`` (a whole number with ``integer``)."""
    value = OmegaConf.select(cfg, key)
    if value is None and allow_none:
        return
    kinds = int if integer else int | float
    ok = isinstance(value, kinds) and not isinstance(value, bool)
    ok = ok and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        what = "a whole number" if integer else "a number"
        raise ConfigError(f"{key}={value!r} is not allowed: it must be {what} {bounds}")
