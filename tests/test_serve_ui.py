"""/docs and /redoc load only files this server serves (they work offline); the web page's
controls are the API's fields. In the browser: tests/test_serve_browser.py."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient
from serve_helpers import make_settings, served

from musicgen_train.serve.app import create_app
from musicgen_train.serve.schemas import GenerationRequest


class Links(HTMLParser):
    """Every URL a page loads: src and href attributes."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


def urls_in(html: str) -> list[str]:
    parser = Links()
    parser.feed(html)
    return parser.urls


@pytest.fixture
def client(tmp_path, tiny_model_dir, tiny_loaded):
    app = create_app(make_settings(tmp_path, tiny_model_dir), served(tiny_loaded))
    return TestClient(app)


DOCS_ASSETS = {
    "/static/docs/swagger-ui-bundle.js": "text/javascript",
    "/static/docs/swagger-ui.css": "text/css",
    "/static/docs/favicon.png": "image/png",
}


def test_docs_page_loads_only_local_assets(client):
    response = client.get("/docs")
    assert response.status_code == 200
    html = response.text
    assert set(urls_in(html)) == set(DOCS_ASSETS)
    assert "://" not in html  # no CDN, no web font, nothing outside this server
    assert "'/openapi.json'" in html or '"/openapi.json"' in html
    for url, content_type in DOCS_ASSETS.items():
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert asset.headers["content-type"].split(";")[0] == content_type, url
        assert len(asset.content) > 1000, url  # the real file, not an error page
    bundle = client.get("/static/docs/swagger-ui-bundle.js").text
    assert "SwaggerUIBundle" in bundle
    # Swagger UI 5 reads OpenAPI 3.1, the version FastAPI writes (4 cannot).
    assert client.get("/openapi.json").json()["openapi"].startswith("3.1")
    assert re.findall(r'"(5\.\d+\.\d+)"', bundle), "no Swagger UI 5 version in the bundle"
    redirect = client.get("/docs/oauth2-redirect")
    assert redirect.status_code == 200 and "://" not in redirect.text
    # ReDoc is off: it fetches its logo from a CDN on every load.
    assert client.get("/redoc").status_code == 404


def test_docs_assets_are_not_in_the_api_schema(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert not any(path.startswith(("/static", "/docs", "/redoc")) for path in paths)


def test_web_page_controls_are_the_api_fields_with_its_ranges(client):
    html = client.get("/").text
    assert not [url for url in urls_in(html) if "://" in url]
    fields = GenerationRequest.model_json_schema()["properties"]

    def attrs(element_id: str) -> dict:
        tag = re.search(rf'<input id="{element_id}"[^>]*>', html).group(0)
        return dict(re.findall(r'(\w+)="([^"]*)"', tag))

    seed, guidance = attrs("seed"), attrs("guidance")
    temperature, top_k = attrs("temperature"), attrs("top-k")
    assert int(seed["min"]) == fields["seed"]["anyOf"][0]["minimum"]
    assert int(seed["max"]) == fields["seed"]["anyOf"][0]["maximum"]
    assert float(guidance["min"]) == fields["guidance_scale"]["minimum"]
    assert float(guidance["max"]) == fields["guidance_scale"]["maximum"]
    assert float(guidance["value"]) == fields["guidance_scale"]["default"]
    assert float(temperature["max"]) == fields["temperature"]["maximum"]
    assert float(temperature["min"]) > fields["temperature"]["exclusiveMinimum"]
    assert float(temperature["value"]) == fields["temperature"]["default"]
    assert int(top_k["min"]) == fields["top_k"]["minimum"]
    assert int(top_k["max"]) == fields["top_k"]["maximum"]
    assert int(top_k["value"]) == fields["top_k"]["default"]
    for name in ("guidance_scale", "temperature", "top_k", "seed"):
        assert f"{name}:" in html or f"body.{name} =" in html, name
