"""``musicgen-train export``: a training checkpoint -> a model folder -> a registry version.

    musicgen-train export checkpoint=best registry.name=NAME [registry.alias=staging]

1. load the checkpoint (Lightning .ckpt or DeepSpeed folder), apply EMA, merge LoRA;
2. write the HF folder (weights, config, generation defaults, processor, model card, checksums)
   into a staging folder next to ``export.output``;
3. register it as the next version of ``registry.name`` (MLflow pyfunc + tags + alias), then
   move the folder into place;
4. optionally push it to the Hugging Face Hub.

The registry is checked before the slow part, and registration is the last step and undoes
itself on failure: an interrupted export leaves neither a version nor a half-written folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from musicgen_train.errors import UserError
from musicgen_train.registry.commands import (
    METRIC_PREFIX,
    copy_version,
    open_registry,
    registered_name,
)
from musicgen_train.registry.model_card import (
    ADAPTER_APART,
    flatten,
    render_model_card,
    report_metrics,
)
from musicgen_train.registry.pyfunc import pyfunc_flavor
from musicgen_train.sources import load_checkpoint
from musicgen_train.sources.checkpoint import (
    converted_name,
    pin_checkpoint,
    resolve_checkpoint,
    write_checkpoint_folder,
)
from musicgen_train.sources.checksums import CHECKSUM_FILE, has_checksums, sha256_file
from musicgen_train.sources.model_folder import atomic_folder, check_output_folder

log = logging.getLogger(__name__)

# The version tag that identifies an export (see export_key): the same key, the same version.
EXPORT_KEY_TAG = "export_key"
# Sections of the training config logged as MLflow params of the export run.
PARAM_SECTIONS = ("model", "finetune", "optim", "trainer", "strategy")


@dataclass(frozen=True)
class ExportResult:
    model_dir: Path
    uri: str  # models:/name/version
    version: int
    alias: str | None = None
    hub_url: str | None = None
    reused: bool = False  # the checkpoint was already registered with these settings

    @property
    def alias_uri(self) -> str | None:
        return f"{self.uri.rsplit('/', 1)[0]}@{self.alias}" if self.alias else None


def run(cfg: DictConfig) -> ExportResult:
    result = export_checkpoint(cfg, cfg.checkpoint)
    print(f"model folder: {result.model_dir}")
    print(f"registered:   {result.uri}")
    if result.alias:
        print(f"alias:        {result.alias_uri}")
    if result.hub_url:
        print(f"hub:          {result.hub_url}")
    return result


def export_checkpoint(
    cfg: DictConfig, checkpoint: str | Path, eval_report: dict | None = None
) -> ExportResult:
    """Export ``checkpoint`` (best | last | a path) and register it; see the module docstring.
    The same checkpoint bytes exported with the same settings return the version they made."""
    name = registered_name(cfg)
    registry = open_registry(cfg)
    registry.models()  # an unreachable registry fails now, not after minutes of export
    dest = Path(cfg.export.output or Path(cfg.work_dir) / "exports" / name).expanduser()
    check_output_folder(dest, "export.output")  # never replace a folder of the user's files
    path = resolve_checkpoint(str(checkpoint), cfg.run_dir)
    if eval_report is None:
        eval_report = given_eval_report(cfg)  # a bad path fails before the checkpoint is hashed
    options = {
        "merge_lora": bool(cfg.export.merge_lora),
        "use_ema": bool(cfg.export.use_ema),
        "generation": OmegaConf.to_container(cfg.export.generation, resolve=True),
    }
    with pin_checkpoint(path) as pinned:
        if eval_report is None:
            eval_report = find_eval_report(cfg, path, pinned.sha256)
        metrics = report_metrics(eval_report)
        key = export_key(pinned.sha256, options, metrics)
        existing = registry.find_version(name, EXPORT_KEY_TAG, key)
        if existing is not None and not OmegaConf.select(cfg, "export.new_version", default=False):
            return _already_registered(cfg, registry, existing, dest)
        log.info("exporting %s as %s", path, name)
        module = load_checkpoint(pinned)
    if not all(bool(p.isfinite().all()) for p in module.model.parameters()):
        raise UserError(f"{path} holds NaN or inf weights (training diverged): export another")
    train_cfg = module.cfg
    facts = _export_facts(module, train_cfg, path, options)
    readme = render_model_card(
        name=name,
        base_model=facts["base_model"],
        train_cfg=OmegaConf.to_container(train_cfg, resolve=True),
        prepare_report=_read_json(Path(str(train_cfg.data.output)) / "prepare_report.json"),
        eval_report=eval_report,
        export_info=facts,
        architecture=type(module.model).__name__,
        hub_repo=cfg.registry.hub_repo,
    )
    tags = {"checkpoint_sha256": pinned.sha256[:16], EXPORT_KEY_TAG: key}
    # Registered from the staging folder, which replaces ``dest`` only once the version exists:
    # a failure anywhere leaves the previous export in place and no version behind.
    with atomic_folder(dest) as folder:
        write_checkpoint_folder(folder, module, readme=readme, **options)
        version = registry.register(
            folder,
            name,
            alias=cfg.registry.alias,
            tags={**_version_tags(facts, train_cfg, folder, metrics), **tags},
            metrics=metrics,
            params=_params(train_cfg),
            **pyfunc_flavor(options["generation"]),
            requirements=[_requirement()],
        )
    result = ExportResult(
        model_dir=dest,
        uri=f"models:/{name}/{version.version}",
        version=int(version.version),
        alias=cfg.registry.alias,
    )
    log.info("registered %s in %s", result.uri, registry.uri)
    if cfg.registry.hub_repo:
        result = _push(cfg, result)
    return result


def export_key(checkpoint_sha256: str, options: dict, metrics: dict) -> str:
    """What makes two exports the same: the checkpoint's bytes, the export settings and the
    metrics (a new evaluation is news for the registry). Numbers compare as numbers, so
    ``duration=8`` and ``duration=8.0`` are one setting."""

    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return float(value) if isinstance(value, int | float) and value is not True else value

    same = {"checkpoint": checkpoint_sha256, "options": plain(options), "metrics": plain(metrics)}
    text = json.dumps(same, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _already_registered(cfg: DictConfig, registry, version, dest: Path) -> ExportResult:
    """The result of an export that ``version`` already holds: its alias set as asked, its
    folder at ``dest`` (copied from the registry unless ``dest`` already holds it)."""
    name, number = version.name, int(version.version)
    log.info(
        "already registered as %s version %s (same checkpoint content and export settings): "
        "nothing new to export; export.new_version=true registers a new version",
        name,
        number,
    )
    if cfg.registry.alias:
        registry.set_alias(name, cfg.registry.alias, number)
    if not (
        has_checksums(dest)
        and sha256_file(dest / CHECKSUM_FILE) == version.tags.get("model_sha256")
    ):
        copy_version(registry, version, dest)
    result = ExportResult(dest, f"models:/{name}/{number}", number, cfg.registry.alias, reused=True)
    return _push(cfg, result) if cfg.registry.hub_repo else result


def _export_facts(module, train_cfg: DictConfig, path: Path, options: dict) -> dict:
    """What the model card and the version's tags say about this export."""
    lora = OmegaConf.select(train_cfg, "finetune.name") == "lora"
    ema = getattr(module, "ema", None) is not None
    return {
        "base_model": str(train_cfg.model.id),
        "finetune": str(OmegaConf.select(train_cfg, "finetune.name")),
        "lora": ("merged" if options["merge_lora"] else ADAPTER_APART) if lora else "none",
        "weights": "EMA" if ema and options["use_ema"] else "last optimizer step",
        "checkpoint": str(path),
        "generation": options["generation"],
    }


def _version_tags(facts: dict, train_cfg, folder: Path, metrics: dict) -> dict:
    """Base model, data hash, git commit, model fingerprint and metrics of one version."""
    return {
        **{k: v for k, v in flatten(facts).items() if not k.startswith("generation.")},
        "data_hash": data_hash(Path(str(train_cfg.data.output))),
        "git_commit": git_commit() or "unknown",
        "model_sha256": sha256_file(folder / CHECKSUM_FILE),
        "recipe": str(train_cfg.get("recipe", "")),
        **{f"{METRIC_PREFIX}{k}": f"{v:.6g}" for k, v in metrics.items()},
    }


def _push(cfg: DictConfig, result: ExportResult) -> ExportResult:
    from dataclasses import replace

    from musicgen_train.registry.hub import push_to_hub

    try:
        url = push_to_hub(
            result.model_dir,
            cfg.registry.hub_repo,
            private=bool(cfg.registry.hub_private),
            message=f"musicgen-train export {result.uri}",
        )
    except UserError as err:
        raise UserError(f"{result.uri} is registered, but the Hub push failed: {err}") from err
    return replace(result, hub_url=url)


def given_eval_report(cfg: DictConfig) -> dict | None:
    """The report named by ``export.eval_report``, if one is."""
    if not cfg.export.eval_report:
        return None
    path = Path(cfg.export.eval_report).expanduser()
    report = _read_json(path)
    if report is None:
        raise UserError(f"export.eval_report={path}: no readable JSON report there")
    return report


def find_eval_report(cfg: DictConfig, checkpoint: Path, sha256: str) -> dict | None:
    """``export.eval_report``, else the newest report under the run's ``eval/`` folder whose
    model is this checkpoint's content (``sha256``)."""
    given = given_eval_report(cfg)
    if given is not None:
        return given
    found = sorted(
        (p for folder in _eval_folders(cfg, checkpoint) for p in folder.rglob("eval_report.json")),
        key=lambda p: p.stat().st_mtime,
    )
    reports = [r for r in map(_read_json, found) if r and _evaluated(r, checkpoint, sha256)]
    return reports[-1] if reports else None


def _eval_folders(cfg: DictConfig, checkpoint: Path) -> list[Path]:
    """Where evaluate writes a report of ``checkpoint``: the ``eval/`` of its run folder (also
    for ``checkpoints-<date>/``, where a later fresh run moved them) and of ``run_dir``."""
    folders = [Path(str(cfg.run_dir)).expanduser() / "eval"]
    parent = checkpoint.parent.name
    if parent == "checkpoints" or parent.startswith("checkpoints-"):
        folders.insert(0, checkpoint.parent.parent / "eval")
    unique = {folder.resolve(): folder for folder in folders if folder.is_dir()}
    return list(unique.values())


def _evaluated(report: dict, checkpoint: Path, sha256: str) -> bool:
    """Whether the report's (first) model is this checkpoint, not a base model or another one.

    Evaluate records the folder it loaded, named after the checkpoint's content digest: that
    matches wherever the file has moved since, and never matches another file that now has its
    old path (a later run's checkpoint of the same name). A report without it (written by
    hand) is matched by the path it names."""
    model = (report.get("models") or [{}])[0]
    if model.get("path"):
        return Path(str(model["path"])).name == converted_name(checkpoint, sha256)
    source = str(model.get("source", ""))
    return bool(source) and Path(source).expanduser().resolve() == checkpoint.resolve()


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def data_hash(cache: Path) -> str:
    """A fingerprint of the training data: the token cache's manifest (ids, captions, shards)."""
    manifest = cache / "manifest.jsonl"
    return sha256_file(manifest)[:16] if manifest.is_file() else "unknown"


def git_commit() -> str | None:
    """The commit of the musicgen-train checkout, when it runs from one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _params(train_cfg: DictConfig) -> dict[str, str]:
    plain = OmegaConf.to_container(train_cfg, resolve=True)
    sections = {k: plain[k] for k in PARAM_SECTIONS if k in plain}
    return {k: str(v)[:500] for k, v in flatten(sections).items()}


def _requirement() -> str:
    try:
        return f"musicgen-train=={metadata.version('musicgen-train')}"
    except metadata.PackageNotFoundError:
        return "musicgen-train"
