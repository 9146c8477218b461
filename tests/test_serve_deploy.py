"""The Kubernetes manifests and the Dockerfile agree with the app: probe paths, ports, entry."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from musicgen_train.config import load_config
from musicgen_train.serve.app import create_app
from musicgen_train.serve.settings import ServeSettings

ROOT = Path(__file__).resolve().parent.parent


def manifests() -> dict[str, dict]:
    found = {}
    for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            found[doc["kind"]] = doc
    return found


@pytest.fixture(scope="module")
def app_routes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("deploy")
    cfg = load_config([f"serve.database_url=sqlite:///{tmp}/jobs.db", f"serve.storage={tmp}/audio"])
    app = create_app(ServeSettings.from_config(cfg))  # never started: no model is loaded
    return {route.path for route in app.routes}


def test_probes_and_ports_match_the_app(app_routes, monkeypatch):
    docs = manifests()
    assert {"Deployment", "Service", "PersistentVolumeClaim"} <= set(docs)
    (container,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    liveness, readiness = container["livenessProbe"], container["readinessProbe"]
    assert liveness["httpGet"]["path"] == "/health" in app_routes
    assert readiness["httpGet"]["path"] == "/health/ready" in app_routes
    assert liveness["httpGet"]["port"] == readiness["httpGet"]["port"] == "http"
    # The port the container listens on is the service's port as the image configures it.
    monkeypatch.setenv("MUSICGEN_SERVE_PORT", str(docker_env()["MUSICGEN_SERVE_PORT"]))
    monkeypatch.setenv("MUSICGEN_SERVE_HOST", docker_env()["MUSICGEN_SERVE_HOST"])
    image_settings = ServeSettings.from_config(load_config(container["args"]))
    assert ports["http"] == image_settings.port == 8000
    assert image_settings.host == "0.0.0.0"
    assert ServeSettings.from_config(load_config([])).port == 8000  # the default port too
    (service_port,) = docs["Service"]["spec"]["ports"]
    assert service_port["targetPort"] == "http"
    assert (
        docs["Service"]["spec"]["selector"] == docs["Deployment"]["spec"]["selector"]["matchLabels"]
    )
    annotations = docs["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics" in app_routes
    assert int(annotations["prometheus.io/port"]) == ports["http"]
    resources = container["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1
    security = docs["Deployment"]["spec"]["template"]["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == docker_user()


def docker_lines() -> list[str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


def docker_env() -> dict[str, str]:
    env = {}
    for line in docker_lines():
        if line.startswith("ENV "):
            for pair in line[4:].split():
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def docker_user() -> int:
    users = [line.split()[1] for line in docker_lines() if line.startswith("USER ")]
    return int(users[-1])


def test_dockerfile_is_multi_stage_non_root_and_runs_the_service():
    lines = docker_lines()
    stages = [line for line in lines if line.startswith("FROM ")]
    assert len(stages) >= 2 and any("--from=build" in line for line in lines)
    assert any("pip wheel" in line for line in lines)  # installs from pyproject, as a wheel
    install = next(line for line in lines if line.startswith("RUN pip install"))
    assert "[postgres,redis]" in install  # what several replicas need to share jobs and limits
    assert docker_user() != 0
    assert "EXPOSE 8000" in lines
    entry = next(line for line in lines if line.startswith("ENTRYPOINT"))
    assert entry == 'ENTRYPOINT ["musicgen-train", "serve"]'
    copied = {
        line.split()[1] for line in lines if line.startswith("COPY ") and "--from" not in line
    }
    assert {"musicgen_train", "configs", "recipes"} <= copied
    health = next(line for line in lines if line.startswith("HEALTHCHECK"))
    assert "/health" in health
