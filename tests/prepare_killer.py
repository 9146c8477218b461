"""The child of tests/test_data_faults.py: a real ``prepare`` that kills itself with SIGKILL (no
handler, no cleanup can run) at the chosen point: during the n-th codec call, after the n-th part
is written but before its journal lines, half-way through the n-th journal write, after the n-th
shard of the final packing, or once the manifest is written but before the journal and parts are
removed. Point ``none`` runs to the end (the test kills it from outside)."""

from __future__ import annotations

import json
import os
import signal

from musicgen_train.config import load_config
from musicgen_train.data import cache as cache_module
from musicgen_train.data.encode import CodecEncoder
from musicgen_train.data.prepare import prepare


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def prepare_and_die(point: str, n: int, argv: list[str]) -> None:
    calls = {"n": 0}

    def nth() -> bool:
        calls["n"] += 1
        return calls["n"] == n

    cache = cache_module.TokenCache
    if point == "encode":
        encode = CodecEncoder.encode

        def patched_encode(self, audio):
            if nth():
                die()
            return encode(self, audio)

        CodecEncoder.encode = patched_encode
    elif point in ("before-journal", "torn-journal"):
        append = cache.append_journal

        def patched_append(self, entries):
            if nth():
                if point == "torn-journal":
                    text = "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries)
                    with open(self.journal_path, "a") as handle:
                        handle.write(text[: len(text) // 2])
                die()
            return append(self, entries)

        cache.append_journal = patched_append
    elif point == "pack":
        write_shard = cache.write_shard

        def patched_shard(self, number, codes):
            name = write_shard(self, number, codes)
            if nth():
                die()
            return name

        cache.write_shard = patched_shard
    elif point == "manifest":
        write = cache_module.atomic_write_bytes

        def patched_write(path, data):
            write(path, data)
            if path.name == "manifest.jsonl":
                die()

        cache_module.atomic_write_bytes = patched_write
    prepare(load_config(argv))
