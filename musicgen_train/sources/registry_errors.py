"""One line for each way an MLflow registry cannot be used: unreachable, locked, read-only, full.

MLflow passes SQLAlchemy's errors of a local SQLite store through as they are (or wrapped in an
``MlflowException``), each a page of traceback; the user needs the store and what to do.
"""

from __future__ import annotations

import logging

from musicgen_train.errors import UserError


class RegistryError(UserError):
    """The registry cannot be reached, or the model, alias or version does not exist."""


# SQLite's words for a store that cannot be used now, and what the user can do about it.
DATABASE_TROUBLE = {
    "database is locked": "another process holds it: wait for it to finish, then run again",
    "readonly database": "its file or folder is read-only: make it writable or set registry.uri",
    "disk is full": "free disk space where it lives, then run again",
    "unable to open database file": "check that its folder exists and is writable",
    "file is not a database": "the file is damaged or not an MLflow database: set registry.uri",
}


def short(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if len(text) < 300 else text[:297] + "..."


def registry_failure(uri: str, what: str, err: Exception) -> RegistryError | None:
    """The one-line error for ``err``, raised by the registry at ``uri`` while doing ``what``;
    None for errors that mean something else (a missing model: the caller decides)."""
    from mlflow.exceptions import MlflowException

    text = str(err)
    for trouble, advice in DATABASE_TROUBLE.items():
        if trouble in text:
            return RegistryError(
                f"the MLflow registry at {uri} cannot be used ({what}): {trouble}; {advice}"
            )
    if isinstance(err, MlflowException) and ("API request to" in text or "Max retries" in text):
        return RegistryError(
            f"cannot reach the MLflow registry at {uri} ({what}): "
            "check registry.uri / MLFLOW_TRACKING_URI and that the server is running"
        )
    if isinstance(err, OSError):
        return RegistryError(f"the MLflow registry at {uri} failed ({what}): {short(err)}")
    return None


class _KnownTroubleFilter(logging.Filter):
    """MLflow logs a locked or read-only SQLite store with its whole traceback before it raises;
    the error is then said in one line by ``registry_failure``: drop those log records."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("SQLAlchemy database error"):
            return True
        text = " ".join(str(a) for a in (record.args or ()))
        return not any(trouble in text for trouble in DATABASE_TROUBLE)


def quiet_known_database_errors() -> None:
    """Install the filter once on MLflow's database logger."""
    logger = logging.getLogger("mlflow.store.db.utils")
    if not any(isinstance(f, _KnownTroubleFilter) for f in logger.filters):
        logger.addFilter(_KnownTroubleFilter())
