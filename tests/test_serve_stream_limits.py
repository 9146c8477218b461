"""serve.limits.max_streams_per_key: open event and audio streams per key (or client address).

Streams are driven as raw ASGI calls: Starlette's TestClient reads a response to its end, and
a stream of a job that waits never ends; here a client can stay, and leave, mid-stream."""

from __future__ import annotations

import asyncio
import hashlib

from serve_helpers import make_settings, served

from musicgen_train.serve.app import create_app

KEYS = {"TEST_STREAM_KEYS": "key-one,key-two"}


class Client:
    """One HTTP request held open: its status and headers once it starts; ``leave()`` is the
    client disconnecting."""

    def __init__(self, app, method: str, path: str, key: str | None, address: str, body=b""):
        headers = [(b"x-api-key", key.encode())] if key else []
        if body:
            headers.append((b"content-type", b"application/json"))
        self.scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": (address, 50000),
            "server": ("testserver", 80),
        }
        self.app, self.body, self.asked = app, body, False
        self.left = asyncio.Event()
        self.started = asyncio.get_running_loop().create_future()
        self.chunks: list[bytes] = []

    async def receive(self):
        if not self.asked:
            self.asked = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self.left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message):
        if message["type"] == "http.response.start" and not self.started.done():
            self.started.set_result(message)
        elif message["type"] == "http.response.body":
            self.chunks.append(message.get("body", b""))

    async def start(self) -> int:
        self.task = asyncio.create_task(self.app(self.scope, self.receive, self.send))
        start = await asyncio.wait_for(self.started, 30)
        self.headers = {k.decode(): v.decode() for k, v in start["headers"]}
        return start["status"]

    async def leave(self) -> None:
        self.left.set()
        await asyncio.wait_for(self.task, 30)


def identity(key: str) -> str:
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]


def test_a_key_holds_at_most_max_streams_and_gets_its_slots_back(
    tmp_path, tiny_model_dir, tiny_loaded, monkeypatch
):
    """Each stream of a waiting job polls the database 4 times a second: one key could open
    hundreds. The third stream of a key is 429 with Retry-After; another key has its own
    slots; a client that leaves, or a stream that ends, frees its slot."""
    monkeypatch.setenv("TEST_STREAM_KEYS", KEYS["TEST_STREAM_KEYS"])
    settings = make_settings(
        tmp_path,
        tiny_model_dir,
        auth={"api_keys_env": "TEST_STREAM_KEYS"},
        limits={"max_streams_per_key": 2},
    )
    app = create_app(settings, served(tiny_loaded))  # no worker: the job stays queued
    svc = app.state.service
    job = svc.store.create(
        model="tiny", prompt="a", params={"duration": 0.2}, fmt="wav", stream=False
    )
    events, stream = f"/v1/generations/{job.id}/events", f"/v1/generations/{job.id}/stream"

    async def scenario():
        listeners = [Client(app, "GET", path, "key-one", "10.0.0.1") for path in (events, stream)]
        assert [await c.start() for c in listeners] == [200, 200]
        refused = Client(app, "GET", events, "key-one", "10.0.0.1")
        assert await refused.start() == 429
        await refused.task
        assert refused.headers["retry-after"] == "5"
        assert b"too many open streams (2 of at most 2 per API key)" in b"".join(refused.chunks)
        other_key = Client(app, "GET", events, "key-two", "10.0.0.1")
        assert await other_key.start() == 200

        await listeners[1].leave()  # the audio stream's client disconnects
        assert svc.stream_slots.count(identity("key-one")) == 1
        again = Client(app, "GET", stream, "key-one", "10.0.0.1")
        assert await again.start() == 200

        svc.store.cancel(job.id)  # the event streams end with their job, no client leaving
        await asyncio.wait_for(asyncio.gather(listeners[0].task, other_key.task), 30)
        assert svc.stream_slots.count(identity("key-two")) == 0
        await again.leave()
        assert svc.stream_slots.count(identity("key-one")) == 0

    asyncio.run(scenario())


def test_an_open_service_counts_per_address_and_a_refused_stream_makes_no_job(
    tmp_path, tiny_model_dir, tiny_loaded, monkeypatch
):
    monkeypatch.delenv("MUSICGEN_SERVE_API_KEYS", raising=False)
    settings = make_settings(tmp_path, tiny_model_dir, limits={"max_streams_per_key": 1})
    app = create_app(settings, served(tiny_loaded))
    svc = app.state.service
    job = svc.store.create(
        model="tiny", prompt="a", params={"duration": 0.2}, fmt="wav", stream=False
    )
    body = b'{"prompt": "b", "duration": 0.2}'

    async def scenario():
        listener = Client(app, "GET", f"/v1/generations/{job.id}/events", None, "10.0.0.1")
        assert await listener.start() == 200
        # At its cap, a streamed generation is refused before its job is queued.
        refused = Client(app, "POST", "/v1/generations/stream", None, "10.0.0.1", body)
        assert await refused.start() == 429
        assert svc.store.count("queued") == 1
        # Another address has its slot; a stream that fails to start (not ready: no worker)
        # gives it back at once.
        elsewhere = Client(app, "POST", "/v1/generations/stream", None, "10.0.0.2", body)
        assert await elsewhere.start() == 503
        assert svc.stream_slots.count("addr:10.0.0.2") == 0
        await listener.leave()
        assert svc.stream_slots.count("addr:10.0.0.1") == 0

    asyncio.run(scenario())
