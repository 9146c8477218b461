"""The server takes its start-up heap out of the garbage collector's sight before it serves:
a full collection that walked it was a half-second stall of every request."""

from __future__ import annotations

import gc

from backend_servers import free_port
from serve_helpers import make_settings

from musicgen_train.serve import main
from musicgen_train.serve.settings import ServeSettings


def test_the_server_freezes_its_heap_before_it_serves(monkeypatch, tmp_path, tiny_model_dir):
    settings = make_settings(tmp_path, tiny_model_dir, port=free_port())
    monkeypatch.setattr(ServeSettings, "from_config", classmethod(lambda cls, cfg: settings))
    seen = {}

    def serve(self, sockets):  # instead of uvicorn's loop: what the collector sees then
        seen["frozen"] = gc.get_freeze_count()
        seen["tracked"] = len(gc.get_objects())
        sockets[0].close()

    monkeypatch.setattr(main.GracefulServer, "run", serve)
    assert gc.get_freeze_count() == 0
    try:
        main.run(None)
    finally:
        gc.unfreeze()
    # torch, transformers and the app (far more than 10^5 objects) are frozen; a collection
    # now walks only what was made after
    assert seen["frozen"] > 100_000
    assert seen["tracked"] < seen["frozen"] / 10
