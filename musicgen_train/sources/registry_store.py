"""The MLflow Model Registry: a local SQLite store by default, any tracking server when configured.

Each export is a new version of a registered model, logged as an MLflow pyfunc model whose one
artifact is the Hugging Face model folder. Registration happens last and is rolled back if any
step of it fails, so a failed export never leaves a version behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# A registry that cannot be reached should fail in seconds, not after MLflow's default of
# several retries with back-off; no progress bars in logs. Set before mlflow reads them.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import mlflow  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param  # noqa: E402
from mlflow.entities.model_registry import ModelVersion  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

from musicgen_train.sources.checksums import file_digests  # noqa: E402
from musicgen_train.sources.registry_errors import (  # noqa: E402
    RegistryError,
    quiet_known_database_errors,
    registry_failure,
)
from musicgen_train.sources.registry_errors import short as _short  # noqa: E402
from musicgen_train.sources.registry_location import local_artifact_root  # noqa: E402

log = logging.getLogger(__name__)
quiet_known_database_errors()

DEFAULT_EXPERIMENT = "musicgen-train"
COMPLETE_TAG = "musicgen_train.export"  # set on a version whose export finished
ARTIFACT_KEY = "musicgen"  # the name of the model folder among a pyfunc model's artifacts
OWNER_HOST_TAG = "musicgen_train.host"  # who is exporting a version: an interrupted export
OWNER_PID_TAG = "musicgen_train.pid"  # is recognised by its process being gone
STALE_EXPORT_SECONDS = 24 * 3600
FILES_TAG = "model_files"  # {file: sha256} of the registered folder, as export wrote it


@dataclass(frozen=True)
class VersionRef:
    """``models:/name@alias``, ``models:/name/3`` or ``models:/name/latest``."""

    name: str
    alias: str | None = None
    version: str | None = None  # a number or "latest"

    @property
    def uri(self) -> str:
        if self.alias:
            return f"models:/{self.name}@{self.alias}"
        return f"models:/{self.name}/{self.version}"


class Registry:
    def __init__(self, tracking_uri: str, experiment: str = DEFAULT_EXPERIMENT):
        self.uri = tracking_uri
        self.experiment = experiment
        with self._errors("opening it"):  # a SQLite store is opened (and migrated) here
            if tracking_uri.startswith("sqlite:///"):
                Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(
                    parents=True, exist_ok=True
                )
            self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    # --- reading -------------------------------------------------------------------------

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Turn an unreachable, locked, read-only or full registry into one clear line."""
        try:
            yield
        except Exception as err:
            failure = registry_failure(self.uri, what, err)
            if failure is None:
                raise
            raise failure from err

    def _call(self, what: str, function, *args, **kwargs):
        """Run one MLflow call; see ``_errors``."""
        with self._errors(what):
            return function(*args, **kwargs)

    def models(self) -> list:
        return self._call("listing models", self.client.search_registered_models)

    def versions(self, name: str) -> list[ModelVersion]:
        self.model(name)
        found = self._call(
            "listing versions", self.client.search_model_versions, f"name = '{name}'"
        )
        return sorted(found, key=lambda v: int(v.version))

    def model(self, name: str):
        try:
            return self._call("reading a model", self.client.get_registered_model, name)
        except MlflowException as err:
            names = sorted(m.name for m in self.models())
            raise RegistryError(
                f"no registered model {name!r} in the registry at {self.uri} "
                f"(registered: {names or 'none'})"
            ) from err

    def resolve(self, ref: VersionRef) -> ModelVersion:
        """The version ``ref`` names, or a RegistryError that says what exists instead."""
        model = self.model(ref.name)
        aliases = dict(model.aliases or {})
        if ref.alias:
            if ref.alias not in aliases:
                raise RegistryError(
                    f"registered model {ref.name!r} has no alias {ref.alias!r} "
                    f"(aliases: {aliases or 'none'}; registry {self.uri})"
                )
            version = str(aliases[ref.alias])
        else:
            version = ref.version
        versions = self.versions(ref.name)
        numbers = [int(v.version) for v in versions]  # a server sends them as text
        complete = [int(v.version) for v in versions if _is_complete(v)]
        if version == "latest" and numbers:
            # An export killed half-way leaves a version without the complete tag: skip it.
            version = str(max(complete)) if complete else str(max(int(n) for n in numbers))
        if str(version) not in {str(n) for n in numbers}:
            raise RegistryError(
                f"registered model {ref.name!r} has no version {version} "
                f"(versions: {numbers or 'none'}; registry {self.uri})"
            )
        found = self._call("reading a version", self.client.get_model_version, ref.name, version)
        if (found.tags or {}).get(COMPLETE_TAG) != "complete":
            # Registration tags a version complete as its very last step (see register).
            raise RegistryError(
                f"version {version} of {ref.name!r} is an export that did not finish or was not "
                "made by musicgen-train export: export the checkpoint again"
            )
        return found

    def find_version(self, name: str, tag: str, value: str) -> ModelVersion | None:
        """The newest complete version of ``name`` whose tag ``tag`` is ``value``, if any."""
        if not self._call("reading a model", self._exists, name):
            return None
        found = [v for v in self.versions(name) if _is_complete(v) and v.tags.get(tag) == value]
        return found[-1] if found else None

    def aliases_of(self, version: ModelVersion) -> list[str]:
        model = self.model(version.name)
        return sorted(a for a, v in (model.aliases or {}).items() if str(v) == str(version.version))

    def download(self, version: ModelVersion, dest: Path) -> Path:
        """Copy the version's model folder into the empty folder ``dest``; return ``dest``."""
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".download-") as tmp:
            where = self._call(
                "locating a model",
                self.client.get_model_version_download_uri,
                version.name,
                version.version,
            )
            pyfunc_dir = Path(
                self._call(
                    "downloading a model",
                    mlflow.artifacts.download_artifacts,
                    artifact_uri=where,
                    dst_path=tmp,
                    tracking_uri=self.uri,
                )
            )
            folder = _model_folder_in(pyfunc_dir, version)
            for item in folder.iterdir():
                shutil.move(str(item), dest / item.name)
        return dest

    # --- writing -------------------------------------------------------------------------

    def set_alias(self, name: str, alias: str, version: str | int) -> None:
        self._call(
            "setting an alias", self.client.set_registered_model_alias, name, alias, str(version)
        )

    def delete_version(self, name: str, version: str | int) -> None:
        self._call("deleting a version", self.client.delete_model_version, name, str(version))

    def delete_alias(self, name: str, alias: str) -> None:
        self._call("deleting an alias", self.client.delete_registered_model_alias, name, alias)

    def _experiment_id(self) -> str:
        found = self._call(
            "reading the experiment", self.client.get_experiment_by_name, self.experiment
        )
        if found is not None:
            return found.experiment_id
        return self.client.create_experiment(
            self.experiment, artifact_location=local_artifact_root(self.uri)
        )

    def register(
        self,
        folder: Path,
        name: str,
        *,
        alias: str | None = None,
        tags: Mapping[str, str] = (),
        metrics: Mapping[str, float] = (),
        params: Mapping[str, str] = (),
        python_model,
        signature,
        requirements: list[str],
    ) -> ModelVersion:
        """Log ``folder`` as a pyfunc model (``python_model`` with ``signature``, the folder its
        ``ARTIFACT_KEY`` artifact) and make it the next version of ``name``.

        Only this client's URI is used (never MLflow's global tracking URI). Any failure on the
        way deletes what was created: the version, a registered model this call created, the
        logged model and the run.
        """
        with self._errors(f"registering {name}"):
            return self._register(
                folder, name, alias, tags, metrics, params, python_model, signature, requirements
            )

    def _register(
        self, folder, name, alias, tags, metrics, params, python_model, signature, requirements
    ) -> ModelVersion:
        tags = {k: str(v) for k, v in dict(tags).items()}
        # Every file's digest, kept by the registry: loading compares the files with it, so a
        # folder rewritten together with its checksums.json is refused.
        files = json.dumps(file_digests(folder), sort_keys=True, separators=(",", ":"))
        experiment_id = self._experiment_id()
        self.clean_interrupted(name)
        owner = {OWNER_HOST_TAG: socket.gethostname(), OWNER_PID_TAG: str(os.getpid())}
        run = self.client.create_run(
            experiment_id, run_name=f"export-{name}", tags={**tags, **owner}
        )
        run_id = run.info.run_id
        created_model = version = logged = None
        try:
            self._log_run_data(run_id, metrics, params)
            logged = self.client.create_logged_model(
                experiment_id, name="model", source_run_id=run_id
            )
            self._log_pyfunc(logged.model_id, folder, python_model, signature, requirements)
            self.client.finalize_logged_model(logged.model_id, "READY")
            if not self._exists(name):
                created_model = self.client.create_registered_model(name)
            version = self.client.create_model_version(
                name,
                source=self.client.get_logged_model(logged.model_id).artifact_location,
                run_id=run_id,
                tags={**tags, **owner, FILES_TAG: files},
                model_id=logged.model_id,
            )
            self.client.set_model_version_tag(name, version.version, COMPLETE_TAG, "complete")
            # The alias moves only to a complete version: a kill before this line leaves the
            # alias where it was, a kill after it leaves a complete version.
            if alias:
                self.set_alias(name, alias, version.version)
            self.client.set_terminated(run_id)
        except BaseException:
            self._roll_back(run_id, name, created_model, version, logged)
            raise
        return self.client.get_model_version(name, version.version)

    def _log_run_data(self, run_id: str, metrics: Mapping, params: Mapping) -> None:
        now = int(time.time() * 1000)
        metric_list = [Metric(k, float(v), now, 0) for k, v in dict(metrics).items()]
        param_list = [Param(k, str(v)) for k, v in dict(params).items()]
        self.client.log_batch(run_id, metrics=metric_list)
        for start in range(0, len(param_list), 100):  # MLflow takes at most 100 per batch
            self.client.log_batch(run_id, params=param_list[start : start + 100])

    def _log_pyfunc(self, model_id: str, folder: Path, python_model, signature, requirements):
        with tempfile.TemporaryDirectory(prefix="pyfunc-") as tmp, _quiet_logging():
            local = Path(tmp) / "model"
            mlflow.pyfunc.save_model(
                path=str(local),
                python_model=python_model,
                artifacts={ARTIFACT_KEY: str(folder)},
                signature=signature,
                pip_requirements=requirements,
            )
            self.client.log_model_artifacts(model_id, str(local))

    def _exists(self, name: str) -> bool:
        try:
            self.client.get_registered_model(name)
        except MlflowException:
            return False
        return True

    def clean_interrupted(self, name: str) -> list[str]:
        """Delete versions of ``name`` whose export was killed (no complete tag, and its process
        is gone from this host or it is a day old) and mark their runs failed; return them."""
        if not self._exists(name):
            return []
        cleaned = []
        for version in self.versions(name):
            if _is_complete(version) or not _owner_is_gone(version):
                continue
            log.warning(
                "removing version %s of %r: its export was interrupted", version.version, name
            )
            if version.run_id:
                with contextlib.suppress(MlflowException):
                    self.client.set_terminated(version.run_id, "FAILED")
            self.client.delete_model_version(name, version.version)
            cleaned.append(str(version.version))
        return cleaned

    def _roll_back(self, run_id, name, created_model, version, logged) -> None:
        steps = []
        if version is not None:
            steps.append(lambda: self.client.delete_model_version(name, version.version))
        if created_model is not None:
            steps.append(lambda: self.client.delete_registered_model(name))
        if logged is not None:
            steps.append(lambda: self.client.delete_logged_model(logged.model_id))
        steps.append(lambda: self.client.set_terminated(run_id, "FAILED"))
        steps.append(lambda: self.client.delete_run(run_id))
        for step in steps:
            try:
                step()
            except Exception as err:  # keep rolling back; the original error is what matters
                log.warning("could not undo part of a failed registration: %s", _short(err))


def _is_complete(version: ModelVersion) -> bool:
    return (version.tags or {}).get(COMPLETE_TAG) == "complete"


def _owner_is_gone(version: ModelVersion, *, max_age_s: float = STALE_EXPORT_SECONDS) -> bool:
    """An incomplete version is stale when the process that exported it has died on this host,
    or, from another host, when it is older than ``max_age_s`` (no export takes a day)."""
    tags = version.tags or {}
    age = time.time() - (version.creation_timestamp or 0) / 1000
    if tags.get(OWNER_HOST_TAG) != socket.gethostname() or not tags.get(OWNER_PID_TAG):
        return age > max_age_s
    try:
        os.kill(int(tags[OWNER_PID_TAG]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return age > max_age_s  # alive: still exporting, unless its pid was reused since


@contextmanager
def _quiet_logging() -> Iterator[None]:
    """Hide save_model's advice (input examples, models-from-code): the choices are deliberate.

    The pyfunc class is pickled by reference to musicgen_train, which must be installed to load it.
    """
    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        logger.setLevel(level)


def _model_folder_in(pyfunc_dir: Path, version: ModelVersion) -> Path:
    """The HF model folder inside a downloaded pyfunc model, as its MLmodel file records."""
    from mlflow.models import Model

    try:
        flavor = Model.load(str(pyfunc_dir)).flavors["python_function"]
        folder = pyfunc_dir / flavor["artifacts"][ARTIFACT_KEY]["path"]
    except (MlflowException, OSError, KeyError) as err:
        raise RegistryError(
            f"version {version.version} of {version.name!r} is not a musicgen-train export "
            f"(no {ARTIFACT_KEY!r} artifact in its MLmodel): {_short(err)}"
        ) from err
    if not folder.is_dir():
        raise RegistryError(f"version {version.version} of {version.name!r} has no model folder")
    return folder
