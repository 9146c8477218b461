"""One token cache, one source: a cache prepared from one folder is not silently turned over to
another that reuses its ``data.name``.

The cache folder is named after ``data.name`` and the model, so two collections prepared under one
name (``data.name=mine`` for a folder, then for another) shared a cache: the second prepare dropped
every file of the first from it as "no longer in the source" and its codes were gone. A folder
that was moved or renamed is not that case (its old path no longer exists, and its files' codes
are reused by content), nor is a source that is not a local path (a dataset id, ``demo``).
"""

from __future__ import annotations

import json
from pathlib import Path

from musicgen_train.errors import UserError


def local_source(source) -> str | None:
    """``source`` as an absolute path when it names a local file or folder, else None."""
    path = Path(str(source)).expanduser()
    return str(path.resolve()) if path.exists() else None


def check_same_source(report_path: Path, source, overwrite: bool) -> None:
    """Refuse to prepare ``source`` into a cache whose last report names another local source
    that still exists (unless ``data.overwrite=true``)."""
    if overwrite or not report_path.exists():
        return
    try:
        previous = json.loads(report_path.read_text()).get("source_path")
    except (OSError, ValueError, AttributeError):
        return  # an unreadable report: nothing to compare with
    current = local_source(source)
    if previous is None or current is None or previous == current or not Path(previous).exists():
        return
    raise UserError(
        f"the token cache {report_path.parent} holds {previous}, not data.source={source}: "
        "preparing it here would drop the other collection's codes. Give this data its own "
        "data.name (the cache is named after it), or set data.overwrite=true to rebuild the "
        "cache from this source"
    )
