"""``musicgen-train registry list | show | promote | download``.

    musicgen-train registry list [registry.name=NAME]
    musicgen-train registry show registry.name=NAME [registry.version=N | registry.alias=A]
    musicgen-train registry promote registry.name=NAME registry.version=N registry.alias=production
    musicgen-train registry promote registry.name=NAME registry.from_alias=staging \
        registry.alias=production
    musicgen-train registry download registry.name=NAME registry.alias=A registry.output=DIR
    musicgen-train registry delete registry.name=NAME (registry.version=N | registry.alias=A)
"""

from __future__ import annotations

import re
import shutil
from datetime import datetime, timezone
from pathlib import Path

import yaml
from omegaconf import DictConfig

from musicgen_train.errors import UserError
from musicgen_train.sources.checksums import verify_checksums
from musicgen_train.sources.model_folder import atomic_folder
from musicgen_train.sources.registry_location import configured_tracking_uri

METRIC_PREFIX = "metric."


def open_registry(cfg: DictConfig):
    from musicgen_train.sources.registry_store import Registry

    uri = configured_tracking_uri(cfg.registry.uri, cfg.work_dir)
    return Registry(uri, cfg.registry.experiment)


def _when(millis: int | None) -> str:
    if not millis:
        return "-"
    return datetime.fromtimestamp(millis / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def describe(registry, version) -> dict:
    tags = dict(version.tags or {})
    return {
        "name": version.name,
        "version": int(version.version),
        "uri": f"models:/{version.name}/{version.version}",
        "aliases": registry.aliases_of(version),
        "created": _when(version.creation_timestamp),
        "base_model": tags.get("base_model", "-"),
        "metrics": {
            k.removeprefix(METRIC_PREFIX): v for k, v in tags.items() if k.startswith(METRIC_PREFIX)
        },
        "run_id": version.run_id,
        "source": version.source,
        "tags": tags,
    }


def registered_name(cfg: DictConfig) -> str:
    """``registry.name`` (validated with the config), else ``musicgen-<run_name>`` made into a
    valid name: a run name such as ``my jazz run`` gives ``musicgen-my-jazz-run``, a name the
    registry commands and ``models:/`` URIs accept."""
    if cfg.registry.name:
        return cfg.registry.name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"musicgen-{cfg.run_name}")[:200].rstrip("-.")


def _ref(cfg: DictConfig, *, alias_key: str = "alias"):
    from musicgen_train.sources.registry_store import VersionRef

    name, alias = registered_name(cfg), cfg.registry.get(alias_key)
    if cfg.registry.version is not None:
        return VersionRef(name, version=str(cfg.registry.version))
    if alias:
        return VersionRef(name, alias=alias)
    return VersionRef(name, version="latest")


def list_models(cfg: DictConfig, registry) -> list[dict]:
    names = [cfg.registry.name] if cfg.registry.name else [m.name for m in registry.models()]
    rows = [describe(registry, v) for name in names for v in registry.versions(name)]
    print(f"registry: {registry.uri}")
    if not rows:
        print("no registered models")
    for row in rows:
        metrics = ", ".join(f"{k}={v}" for k, v in sorted(row["metrics"].items())) or "-"
        aliases = ",".join(row["aliases"]) or "-"
        print(
            f"{row['uri']:<40} aliases: {aliases:<20} {row['created']}  "
            f"base: {row['base_model']}  metrics: {metrics}"
        )
    return rows


def show_version(cfg: DictConfig, registry) -> dict:
    info = describe(registry, registry.resolve(_ref(cfg)))
    print(yaml.safe_dump(info, sort_keys=False).rstrip())
    return info


def promote(cfg: DictConfig, registry) -> dict:
    """Point ``registry.alias`` at a version named by number or by another alias."""
    if not cfg.registry.alias:
        raise UserError("promote needs the alias to move: registry.alias=production")
    if (cfg.registry.version is None) == (not cfg.registry.from_alias):  # neither, or both
        raise UserError(
            "promote needs one version to point at: registry.version=N or "
            "registry.from_alias=A, not both"
        )
    version = registry.resolve(_ref(cfg, alias_key="from_alias"))
    name, alias = version.name, cfg.registry.alias
    before = dict(registry.model(name).aliases or {}).get(alias)
    registry.set_alias(name, alias, version.version)
    was = f" (was version {before})" if before is not None else ""
    print(f"models:/{name}@{alias} -> version {version.version}{was}")
    return {"name": name, "alias": alias, "version": int(version.version), "previous": before}


def download(cfg: DictConfig, registry) -> Path:
    """Copy a verified version to ``registry.output``; an existing folder is never overwritten."""
    if not cfg.registry.output:
        raise UserError("download needs the folder to write: registry.output=DIR")
    output = Path(cfg.registry.output).expanduser()
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise UserError(f"registry.output={output} already exists and is not empty")
    ref = _ref(cfg)
    version = registry.resolve(ref)
    copy_version(registry, version, output)
    print(f"{ref.uri} (version {version.version}) -> {output}")
    return output


def copy_version(registry, version, output: Path) -> None:
    """Put a verified copy of ``version``'s model folder at ``output`` (replacing it)."""
    from musicgen_train.sources.registry_uri import download_registry_model

    source = download_registry_model(f"models:/{version.name}/{version.version}", registry.uri)
    if output.is_dir() and not any(output.iterdir()):
        output.rmdir()  # empty: atomic_folder puts the complete copy in its place
    with atomic_folder(output) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        verify_checksums(tmp)


def delete(cfg: DictConfig, registry) -> dict:
    """Delete one version (``registry.version=N``) or one alias (``registry.alias=A``) of the
    model named explicitly; a version an alias still names is refused, so that no alias (and
    no service loading it) is left pointing at nothing."""
    name, number, alias = cfg.registry.name, cfg.registry.version, cfg.registry.alias
    if not name or (number is None) == (not alias):
        raise UserError(
            "delete needs registry.name=NAME and one of registry.version=N (a version) or "
            "registry.alias=A (an alias; its version stays)"
        )
    aliases = dict(registry.model(name).aliases or {})
    if alias:
        if alias not in aliases:
            raise UserError(
                f"registered model {name!r} has no alias {alias!r} (aliases: {aliases or 'none'})"
            )
        registry.delete_alias(name, alias)
        print(f"deleted alias models:/{name}@{alias} (was version {aliases[alias]})")
        return {"name": name, "alias": alias, "version": int(aliases[alias])}
    numbers = [int(v.version) for v in registry.versions(name)]
    if int(number) not in numbers:
        raise UserError(f"registered model {name!r} has no version {number} (versions: {numbers})")
    naming = sorted(a for a, v in aliases.items() if int(v) == int(number))
    if naming:
        raise UserError(
            f"version {number} of {name!r} is named by alias {', '.join(naming)}: promote "
            f"another version to it, or delete the alias first (registry delete "
            f"registry.name={name} registry.alias={naming[0]})"
        )
    registry.delete_version(name, number)
    print(f"deleted models:/{name}/{number}")
    return {"name": name, "version": int(number)}


ACTIONS = {
    "list": list_models,
    "show": show_version,
    "promote": promote,
    "download": download,
    "delete": delete,
}


def run(cfg: DictConfig, action: str | None = None, *rest: str):
    if action not in ACTIONS or rest:
        given = " ".join(a for a in (action, *rest) if a) or "nothing"
        raise UserError(f"registry takes one action of {list(ACTIONS)}, got {given}")
    return ACTIONS[action](cfg, open_registry(cfg))
