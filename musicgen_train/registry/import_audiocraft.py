"""``musicgen-train import``: an audiocraft MusicGen fine-tune -> a model folder [-> a version].

    musicgen-train import source=<state_dict.bin folder | checkpoint.th> [base=<any source>]
        [output=<folder>] [registry.name=NAME [registry.alias=staging]]

1. read the fine-tune (``sources.audiocraft``): exported ``state_dict.bin`` (+
   ``compression_state_dict.bin``) or a solver ``checkpoint.th``;
2. load the base (``base=``, any model source; none: the hub MusicGen of the fine-tune's shape)
   and replace its decoder and text projection (and codec, when the fine-tune has one);
3. write the folder (weights, generation defaults, processor, model card, checksums) all at once;
4. with ``registry.name``: register it as the next version, as ``export`` does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from musicgen_train.errors import UserError
from musicgen_train.registry.commands import open_registry
from musicgen_train.registry.export import git_commit
from musicgen_train.registry.model_card import flatten, render_model_card
from musicgen_train.registry.pyfunc import pyfunc_flavor
from musicgen_train.sources import load_musicgen, load_options
from musicgen_train.sources.audiocraft import content_key, import_audiocraft
from musicgen_train.sources.checksums import CHECKSUM_FILE, has_checksums, sha256_file
from musicgen_train.sources.model_folder import (
    atomic_folder,
    save_model_folder,
    set_generation_defaults,
)

log = logging.getLogger(__name__)

# The model card's first sentence, said of an import rather than a musicgen-train fine-tune.
CARD_INTRO = (
    "MusicGen fine-tuned with musicgen-train from",
    "MusicGen fine-tuned with audiocraft, imported by musicgen-train over",
)


@dataclass(frozen=True)
class ImportResult:
    model_dir: Path
    facts: dict
    uri: str | None = None  # models:/name/version when registered
    alias: str | None = None


def run(cfg: DictConfig) -> ImportResult:
    result = import_checkpoint(cfg)
    print(f"model folder: {result.model_dir}")
    if result.uri:
        print(f"registered:   {result.uri}")
    if result.alias:
        print(f"alias:        {result.uri.rsplit('/', 1)[0]}@{result.alias}")
    return result


def _output(cfg: DictConfig, source: Path) -> Path:
    name = cfg.registry.name or (source.name if source.is_dir() else source.parent.name)
    dest = Path(str(cfg.output or Path(cfg.work_dir) / "imports" / name)).expanduser()
    if dest.exists() and (not dest.is_dir() or (any(dest.iterdir()) and not has_checksums(dest))):
        raise UserError(
            f"output={dest} already exists and is not a model folder: give an empty or new folder"
        )
    return dest


def import_checkpoint(cfg: DictConfig) -> ImportResult:
    if not cfg.source:
        raise UserError("import needs the audiocraft checkpoint: source=<folder or checkpoint.th>")
    if cfg.registry.alias and not cfg.registry.name:
        raise UserError("registry.alias needs registry.name: the model to register the import as")
    source = Path(str(cfg.source)).expanduser()
    dest = _output(cfg, source)
    registry = None
    if cfg.registry.name:
        registry = open_registry(cfg)
        registry.models()  # an unreachable registry fails now, not after the conversion
    options = load_options(cfg)
    loaded, facts = import_audiocraft(source, lambda base: load_musicgen(base, **options), cfg.base)
    generation = OmegaConf.to_container(cfg.export.generation, resolve=True)
    set_generation_defaults(loaded.model, generation)
    name = cfg.registry.name or dest.name
    readme = render_model_card(
        name=name,
        base_model=facts["base_model"],
        train_cfg=_training(facts.pop("xp_cfg", {})),
        prepare_report=None,
        eval_report=None,
        export_info={**facts, "generation": generation},
    ).replace(*CARD_INTRO, 1)
    uri = None
    with atomic_folder(dest) as folder:
        save_model_folder(folder, loaded.model, loaded.processor, readme=readme)
        if registry is not None:
            version = registry.register(
                folder,
                name,
                alias=cfg.registry.alias,
                tags=_tags(facts, source, folder),
                **pyfunc_flavor(generation),
                requirements=[_requirement()],
            )
            uri = f"models:/{name}/{version.version}"
            log.info("registered %s in %s", uri, registry.uri)
    return ImportResult(model_dir=dest, facts=facts, uri=uri, alias=cfg.registry.alias)


def _training(xp_cfg: dict) -> dict:
    """audiocraft's training config under the model card's section names."""
    sections = {"seed": "seed", "model": "transformer_lm", "optim": "optim", "data": "dataset"}
    return {ours: xp_cfg[theirs] for ours, theirs in sections.items() if theirs in xp_cfg}


def _tags(facts: dict, source: Path, folder: Path) -> dict:
    return {
        **flatten(facts),
        "git_commit": git_commit() or "unknown",
        "checkpoint_sha256": content_key(source)[:16],
        "model_sha256": sha256_file(folder / CHECKSUM_FILE),
    }


def _requirement() -> str:
    try:
        return f"musicgen-train=={metadata.version('musicgen-train')}"
    except metadata.PackageNotFoundError:
        return "musicgen-train"
