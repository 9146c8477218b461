"""The audio store: finished files by key, in a local folder or any fsspec URL (s3://, gs://, ...).

Keys are built here from server-generated job ids, never from request text, so no request can
name a path.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import fsspec

from musicgen_train.serve.jobs import is_job_id

CONTENT_TYPES = {"wav": "audio/wav", "flac": "audio/flac"}
OWNER_FOLDER = re.compile(r"key-[0-9a-f]{16}")  # auth.Guard's identity of an API key


def audio_key(job_id: str, fmt: str) -> str:
    if not is_job_id(job_id) or fmt not in CONTENT_TYPES:
        raise ValueError(f"not a job id and audio format: {job_id!r}, {fmt!r}")
    return f"{job_id}.{fmt}"


class AudioStore:
    """``location`` is a folder path or a URL; fsspec does the reading and writing."""

    def __init__(self, location: str | Path):
        location = str(location)
        self.fs, root = fsspec.core.url_to_fs(location)
        self.root = root.rstrip("/")
        self.location = location
        self.fs.makedirs(self.root, exist_ok=True)

    def _path(self, key: str) -> str:
        # Only keys of the form <uuid>.<ext> exist: checked again here as a second fence.
        job_id, _, fmt = key.partition(".")
        return f"{self.root}/{audio_key(job_id, fmt)}"

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp = path + ".part"
        with self.fs.open(tmp, "wb") as handle:
            handle.write(data)
        self.fs.mv(tmp, path)

    def get(self, key: str) -> bytes:
        with self.fs.open(self._path(key), "rb") as handle:
            return handle.read()

    def exists(self, key: str) -> bool:
        return self.fs.exists(self._path(key))

    # Uploaded audio (melody references, audio prompts), kept as uploaded under its id; the
    # upload of an API key in a folder of that key's own, which another key's request never
    # looks in (an open service's uploads have no owner, and sit in uploads/ itself).
    def _upload_path(self, upload_id: str, owner: str | None = None) -> str:
        if not is_job_id(upload_id):
            raise ValueError(f"not an upload id: {upload_id!r}")
        return f"{self._uploads_folder(owner)}/{upload_id}"

    def _uploads_folder(self, owner: str | None) -> str:
        if owner is None:
            return f"{self.root}/uploads"
        folder = owner.replace(":", "-")
        if not OWNER_FOLDER.fullmatch(folder):  # owners are key hashes, never request text
            raise ValueError(f"not an owner: {owner!r}")
        return f"{self.root}/uploads/{folder}"

    def put_upload(self, upload_id: str, data: bytes, owner: str | None = None) -> None:
        self.fs.makedirs(self._uploads_folder(owner), exist_ok=True)
        path = self._upload_path(upload_id, owner)
        with self.fs.open(path + ".part", "wb") as handle:
            handle.write(data)
        self.fs.mv(path + ".part", path)

    def get_upload(self, upload_id: str, owner: str | None = None) -> bytes | None:
        """The upload ``upload_id`` of ``owner``; None if that owner has none of that id."""
        path = self._upload_path(upload_id, owner)
        if not self.fs.exists(path):
            return None
        with self.fs.open(path, "rb") as handle:
            return handle.read()

    def count_uploads(self, owner: str | None = None) -> int:
        """How many uploads ``owner`` has stored now."""
        folder = self._uploads_folder(owner)
        if not self.fs.exists(folder):
            return 0
        names = (
            str(path).rstrip("/").rsplit("/", 1)[-1] for path in self.fs.ls(folder, detail=False)
        )
        return sum(1 for name in names if is_job_id(name))  # not .part files, nor key folders

    def delete_upload(self, upload_id: str, owner: str | None = None) -> bool:
        """Delete ``owner``'s upload ``upload_id``; False if that owner has none of that id."""
        path = self._upload_path(upload_id, owner)
        if not self.fs.exists(path):
            return False
        self.fs.rm(path)
        return True

    def delete_uploads(self, older_than: float) -> int:
        """Delete uploads (every owner's) last written before ``older_than`` (a timestamp);
        how many went."""
        folder = f"{self.root}/uploads"
        if not self.fs.exists(folder):
            return 0
        removed = 0
        for path in self.fs.find(folder):
            name = str(path).rstrip("/").rsplit("/", 1)[-1]
            if not is_job_id(name):  # a .part being written, or not ours
                continue
            if self.fs.modified(path).timestamp() < older_than:
                self.fs.rm(path)
                removed += 1
        return removed

    def delete(self, key: str) -> None:
        path = self._path(key)
        if self.fs.exists(path):
            self.fs.rm(path)


def delete_expired_audio(jobs, audio: AudioStore, retention_seconds: float) -> int:
    """Delete the audio of jobs finished more than ``retention_seconds`` ago (the jobs stay,
    marked as expired) and uploads older than that. Returns how many files went."""
    expired = jobs.expired_audio(older_than=time.time() - retention_seconds)
    for job in expired:
        audio.delete(job.audio_key)
        jobs.mark_audio_expired(job.id)
    # Uploads (melody references, audio prompts) go after the same time; a job still queued
    # with one that went fails with "the ... upload is gone".
    return len(expired) + audio.delete_uploads(time.time() - retention_seconds)
