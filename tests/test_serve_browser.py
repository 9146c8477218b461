"""The web page at / in headless Chromium: type a prompt, choose a duration, hear the result."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
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
    port = free_port()
    app = create_app(make_settings(tmp_path, tiny_model_dir), served(tiny_loaded))
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


def test_web_page_generates_and_plays(server_url):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the browser extra")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page()
            page.goto(server_url + "/")
            assert page.title() == "musicgen-train"
            page.wait_for_function("document.querySelector('#model').options.length > 0")
            assert page.locator("#model").input_value() == "tiny"
            assert page.locator("#duration").get_attribute("max") == "2"  # the model's limit
            page.fill("#prompt", "gentle ambient pads")
            page.locator("#duration").fill("0.5")
            assert page.locator("#duration-value").text_content() == "0.5"
            page.click("#generate")
            page.wait_for_function(
                "document.querySelector('#status').textContent.startsWith('succeeded')",
                timeout=120_000,
            )
            assert page.locator("#status").text_content() == "succeeded: 0.5 s of audio"
            # The player got the audio and the browser decoded it: its length is known.
            page.wait_for_function("document.querySelector('#player').duration > 0")
            duration = page.evaluate("document.querySelector('#player').duration")
            assert abs(duration - 0.5) < 0.01

            # Bad input shows the service's message, not a silent failure.
            page.fill("#prompt", "   ")
            page.click("#generate")
            page.wait_for_function(
                "document.querySelector('#status').textContent.startsWith('Error 422')"
            )
            assert "whitespace" in page.locator("#status").text_content()
        finally:
            browser.close()
