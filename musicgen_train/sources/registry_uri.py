"""``models:/name@alias`` and ``models:/name/version`` -> a verified local model folder.

A version is downloaded once into the cache (``$MUSICGEN_TRAIN_CACHE/registry``) and its
checksums are verified on every resolve, so a copy damaged after download is refused too: first
against the folder's own ``checksums.json`` (consistency), then against the digests export
recorded in the registry itself (authenticity: rewriting the files and ``checksums.json``
together does not pass).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from musicgen_train.errors import UserError
from musicgen_train.model.tiny import cache_root
from musicgen_train.sources.checksums import (
    CHECKSUM_FILE,
    ChecksumError,
    sha256_file,
    verify_against_record,
    verify_checksums,
)
from musicgen_train.sources.model_folder import atomic_folder
from musicgen_train.sources.registry_location import default_tracking_uri
from musicgen_train.sources.registry_store import FILES_TAG, Registry, RegistryError, VersionRef

_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+|latest))$")


def parse_registry_uri(uri: str) -> VersionRef:
    match = _URI.match(uri.strip())
    if not match:
        raise UserError(
            f"{uri!r} is not a registry URI: write models:/NAME@ALIAS, models:/NAME/VERSION "
            "or models:/NAME/latest"
        )
    return VersionRef(match["name"], alias=match["alias"], version=match["version"])


def _cache_folder(registry: Registry, version) -> Path:
    # The same name and number can mean different models in two registries (or in a registry
    # that was deleted and created again): the key includes the registry and the logged source.
    key = f"{registry.uri}|{version.name}|{version.version}|{version.source}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_root() / "registry" / f"{version.name}-v{version.version}-{digest}"


def download_registry_model(uri: str, tracking_uri: str | None = None) -> Path:
    """The verified model folder of the version ``uri`` names (downloaded once, then cached)."""
    tracking_uri = tracking_uri or default_tracking_uri()
    ref = parse_registry_uri(uri)
    database = Path(tracking_uri.removeprefix("sqlite:///").split("?", 1)[0])
    if tracking_uri.startswith("sqlite:///") and not database.is_file():
        # Opening it would create an empty registry there, as a side effect of a read.
        raise RegistryError(
            f"cannot load {uri}: there is no MLflow registry at {database} (registry.uri / "
            "MLFLOW_TRACKING_URI / MUSICGEN_TRAIN_HOME name where models were exported)"
        )
    registry = Registry(tracking_uri)
    version = registry.resolve(ref)
    folder = _cache_folder(registry, version)
    if not folder.is_dir():
        with atomic_folder(folder) as tmp:
            registry.download(version, tmp)
            verify_checksums(tmp)
    try:
        verify_checksums(folder)
        verify_registry_record(folder, version, uri)
    except ChecksumError as err:
        # Refused, as any damaged model is; but "download it again" alone would find the same
        # cached copy again: say which folder to delete.
        raise ChecksumError(
            f"{err} (this is the cached download of {uri}: delete {folder} and it is "
            "downloaded from the registry again)"
        ) from err
    return folder


def verify_registry_record(folder: Path, version, uri: str) -> None:
    """The folder's files against what export recorded in the registry for this version."""
    tags = version.tags or {}
    where = f"recorded in the registry for {uri} (version {version.version})"
    if FILES_TAG in tags:
        verify_against_record(folder, json.loads(tags[FILES_TAG]), where)
    elif "model_sha256" in tags and sha256_file(folder / CHECKSUM_FILE) != tags["model_sha256"]:
        # Versions exported before per-file records: the digest of their checksums.json.
        raise ChecksumError(
            f"model file {folder / CHECKSUM_FILE} does not match the sha256 {where}: the "
            "model was rewritten after export; download or export the model again"
        )
