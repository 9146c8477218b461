"""The web page at / in headless Chromium: type a prompt, choose a duration and the sampling
settings, hear the result and download it; /docs and /redoc render with no network."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import soundfile as sf
import uvicorn
from backend_servers import free_port
from serve_helpers import make_settings, one_torch_thread, served  # noqa: F401 - a fixture

from musicgen_train.serve.app import create_app

CHROMIUM = Path("/usr/bin/chromium")
NO_CHROMIUM = "needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=NO_CHROMIUM,
    ),
]


@pytest.fixture
def server_url(tmp_path, tiny_model_dir, tiny_loaded):
    yield from _serve(create_app(make_settings(tmp_path, tiny_model_dir), served(tiny_loaded)))


def _serve(app):
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)


def _csp_violations(page) -> list[str]:
    """What the page's Content-Security-Policy blocked, as the console reports it."""
    blocked = []
    page.on(
        "console",
        lambda message: (
            blocked.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    return blocked


def _browser(playwright):
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)


def test_web_page_generates_and_plays(server_url):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the browser extra")
    with sync_api.sync_playwright() as playwright:
        browser = _browser(playwright)
        try:
            page = browser.new_page()
            blocked = _csp_violations(page)
            page.goto(server_url + "/")
            assert page.title() == "musicgen-train"
            page.wait_for_function("() => document.querySelector('#model').options.length > 0")
            assert page.locator("#model").input_value() == "tiny"
            assert page.locator("#duration").get_attribute("max") == "2"  # the model's limit
            page.fill("#prompt", "gentle ambient pads")
            page.locator("#duration").fill("0.5")
            assert page.locator("#duration-value").text_content() == "0.5"
            page.fill("#seed", "42")
            page.locator("#guidance").fill("5.5")
            assert page.locator("#guidance-value").text_content() == "5.5"
            page.fill("#temperature", "0.8")
            page.fill("#top-k", "50")
            with page.expect_request(
                lambda r: r.method == "POST" and r.url.endswith("/v1/generations")
            ) as posted:
                page.click("#generate")
            sent = posted.value.post_data_json
            assert sent == {
                "prompt": "gentle ambient pads",
                "duration": 0.5,
                "guidance_scale": 5.5,
                "temperature": 0.8,
                "top_k": 50,
                "seed": 42,
                "model": "tiny",
            }
            page.wait_for_function(
                "() => document.querySelector('#status').textContent.startsWith('succeeded')",
                timeout=120_000,
            )
            assert page.locator("#status").text_content() == (
                "succeeded: 0.5 s of audio (seed 42, guidance 5.5, temperature 0.8, top-k 50)"
            )
            # The player got the audio and the browser decoded it: its length is known.
            page.wait_for_function("() => document.querySelector('#player').duration > 0")
            duration = page.evaluate("document.querySelector('#player').duration")
            assert abs(duration - 0.5) < 0.01

            # The service ran the job with the page's settings.
            link = page.locator("#download")
            assert link.is_visible() and link.text_content() == "Download WAV"
            audio_url = link.get_attribute("href")
            job_id = audio_url.removeprefix("/v1/generations/").removesuffix("/audio")
            assert audio_url == f"/v1/generations/{job_id}/audio"
            job = page.request.get(f"{server_url}/v1/generations/{job_id}").json()
            params = {k: job["params"][k] for k in ("guidance_scale", "temperature", "top_k")}
            assert params == {"guidance_scale": 5.5, "temperature": 0.8, "top_k": 50}
            assert job["params"]["seed"] == 42 and job["params"]["duration"] == 0.5

            # The download button saves the WAV.
            with page.expect_download() as download:
                link.click()
            saved = download.value.path()
            assert download.value.suggested_filename.endswith(f"{job_id}.wav")
            info = sf.info(saved)
            assert info.format == "WAV" and info.samplerate == 32000 and info.channels == 1
            assert info.frames == int(0.5 * 32000)
            assert Path(saved).read_bytes() == page.request.get(server_url + audio_url).body()

            # Bad input shows the service's message, not a silent failure.
            page.fill("#prompt", "   ")
            page.click("#generate")
            page.wait_for_function(
                "() => document.querySelector('#status').textContent.startsWith('Error 422')"
            )
            assert "whitespace" in page.locator("#status").text_content()
            assert not link.is_visible()  # no download for a job that was never made
            assert blocked == []  # the page's Content-Security-Policy lets all of it run
        finally:
            browser.close()


def test_web_page_shows_queue_position_and_estimate(server_url):
    """While queued, the page says where the job stands, from the status's queue fields."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the browser extra")
    with sync_api.sync_playwright() as playwright:
        browser = _browser(playwright)
        try:
            page = browser.new_page()
            replies = []

            def as_queued(route):  # the first status poll answers as if 2 jobs were ahead
                body = route.fetch().json()
                if not replies:
                    body["status"], body["progress"] = "queued", 0.0
                    body["queue"] = {
                        "position": 3,
                        "audio_ahead_seconds": 4.0,
                        "estimated_wait_seconds": 2.6,
                        "estimated_start_at": time.time() + 2.6,
                    }
                replies.append(body["status"])
                route.fulfill(json=body)

            page.route("**/v1/generations/*", as_queued)
            page.goto(server_url + "/")
            page.wait_for_function("() => document.querySelector('#model').options.length > 0")
            page.fill("#prompt", "queued pads")
            page.locator("#duration").fill("0.5")
            page.click("#generate")
            page.wait_for_function(
                "() => document.querySelector('#status').textContent"
                " === 'queued: position 3, starts in about 3 s (estimate)'"
            )
            page.wait_for_function(
                "() => document.querySelector('#status').textContent.startsWith('succeeded')",
                timeout=120_000,
            )
            assert replies[0] == "queued" and replies[-1] == "succeeded"
        finally:
            browser.close()


def test_docs_render_with_no_network(server_url):
    """Every request the docs page makes goes to this server; anything else is refused, and
    the page still lists every operation of the API."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the browser extra")
    with sync_api.sync_playwright() as playwright:
        browser = _browser(playwright)
        try:
            context = browser.new_context()
            elsewhere = []

            def only_this_server(route):
                if route.request.url.startswith(server_url + "/"):
                    route.continue_()
                else:
                    elsewhere.append(route.request.url)
                    route.abort()

            context.route("**/*", only_this_server)
            page = context.new_page()
            failed, blocked = [], _csp_violations(page)
            page.on("requestfailed", lambda request: failed.append(request.url))
            page.goto(server_url + "/docs")
            spec = json.loads(page.request.get(server_url + "/openapi.json").text())
            page.wait_for_selector(".opblock", timeout=30_000)
            # One block per operation, each showing its method and path (Swagger UI puts
            # zero-width spaces into long paths so they can wrap).
            blocks = page.locator(".opblock")
            shown = [
                (
                    block.locator(".opblock-summary-method").text_content().lower(),
                    block.locator(".opblock-summary-path").text_content().replace("\u200b", ""),
                )
                for block in blocks.all()
            ]
            operations = [(m, path) for path, item in spec["paths"].items() for m in item]
            assert sorted(shown) == sorted(operations)
            assert len(operations) >= 10
            assert page.title().startswith("musicgen-train inference service")
            assert elsewhere == [] and failed == [] and blocked == []
        finally:
            browser.close()


def test_web_page_with_an_api_key_lists_models_generates_and_downloads(
    tmp_path, tiny_model_dir, tiny_loaded
):
    """A keyed service: the page sends the key; the download saves the audio it fetched with
    the key (a plain link could not send it)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the browser extra")
    keys = tmp_path / "keys.txt"
    keys.write_text("page-key\n")
    settings = make_settings(tmp_path, tiny_model_dir, auth={"keys_file": str(keys)})
    url = next(served_app := _serve(create_app(settings, served(tiny_loaded))))
    try:
        with sync_api.sync_playwright() as playwright:
            browser = _browser(playwright)
            try:
                page = browser.new_page()
                page.goto(url + "/")
                assert page.locator("#model option").count() == 0  # 401 without the key
                page.fill("#key", "page-key")
                page.locator("#key").dispatch_event("change")
                page.wait_for_function("() => document.querySelector('#model').options.length > 0")
                page.fill("#prompt", "keyed pads")
                page.locator("#duration").fill("0.5")
                page.click("#generate")
                page.wait_for_function(
                    "() => document.querySelector('#status').textContent.startsWith('succeeded')",
                    timeout=120_000,
                )
                link = page.locator("#download")
                audio_url = link.get_attribute("href")
                assert audio_url.startswith("/v1/generations/") and audio_url.endswith("/audio")
                assert page.request.get(url + audio_url).status == 401  # a link alone: refused
                with page.expect_download() as download:
                    link.click()
                saved = Path(download.value.path()).read_bytes()
                fetched = page.request.get(url + audio_url, headers={"X-API-Key": "page-key"})
                assert fetched.status == 200 and saved == fetched.body()
                info = sf.info(download.value.path())
                assert info.format == "WAV" and info.frames == int(0.5 * 32000)
            finally:
                browser.close()
    finally:
        next(served_app, None)
