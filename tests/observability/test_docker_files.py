"""Dockerfile and compose files, checked without a Docker engine: their structure parsed, the
HEALTHCHECK command run against a real server, `docker-compose config` where it is installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Any

import pytest
import yaml

from tests.live_server import LiveServer, free_port
from tests.worker_process import ROOT


class Reset:
    """Compose's `!reset` tag: the override removes the key."""


class ComposeLoader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no types
    pass


ComposeLoader.add_constructor("!reset", lambda loader, node: Reset())


def compose(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load((ROOT / name).read_text(), Loader=ComposeLoader)
    return loaded


def merged(base: Any, override: Any) -> Any:
    """Compose's merge for what these files use: mappings merge, `!reset` removes."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            if isinstance(value, Reset):
                out.pop(key, None)
            else:
                out[key] = merged(base.get(key), value)
        return out
    return override


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    parsed = [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]
    return [(word.upper(), rest) for word, rest in parsed]


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def test_dockerfile_is_multi_stage_non_root_with_a_data_volume() -> None:
    froms = [rest for word, rest in instructions() if word == "FROM"]
    assert len(froms) >= 2 and " AS build" in froms[0]
    build = " ".join(rest for word, rest in instructions() if word in ("ARG", "RUN"))
    assert "TORCH_INDEX" in build and "download.pytorch.org/whl/cpu" in build
    runtime = final_stage()
    users = [rest for word, rest in runtime if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any(word == "VOLUME" and "/data" in rest for word, rest in runtime)
    env = " ".join(rest for word, rest in runtime if word == "ENV")
    assert "CKPT_HOST=0.0.0.0" in env and "CKPT_DATA_DIR=/data" in env
    assert any(word == "COPY" and "--from=build" in rest for word, rest in runtime)


def healthcheck_command() -> list[str]:
    (check,) = [rest for word, rest in final_stage() if word == "HEALTHCHECK"]
    command: list[str] = json.loads(check.split(" CMD ", 1)[1])
    assert command == ["python", "-m", "app.observability.healthcheck"]
    return [sys.executable, *command[1:]]


def test_the_healthcheck_passes_on_a_healthy_server_and_fails_without_one(
    server: LiveServer,
) -> None:
    command = healthcheck_command()
    healthy = {**os.environ, "CKPT_PORT": str(server.port)}
    ok = subprocess.run(command, env=healthy, cwd=ROOT, capture_output=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    nobody = {**os.environ, "CKPT_PORT": str(free_port())}
    down = subprocess.run(command, env=nobody, cwd=ROOT, capture_output=True, timeout=30)
    assert down.returncode == 1 and b"/health" in down.stderr


def test_compose_runs_migrations_first_then_the_api_and_a_gpu_worker() -> None:
    services = compose("docker-compose.yml")["services"]
    assert set(services) == {"migrate", "api", "worker"}
    assert services["migrate"]["command"] == ["ckpt", "migrate"]
    for name in ("api", "worker"):
        migrate = services[name]["depends_on"]["migrate"]
        assert migrate == {"condition": "service_completed_successfully"}
    api, worker = services["api"], services["worker"]
    assert api["command"] == ["ckpt", "serve"] and worker["command"] == ["ckpt", "worker"]
    assert api["environment"]["CKPT_EMBEDDED_WORKER"] == "false"
    assert api["environment"]["CKPT_HOST"] == "0.0.0.0"
    assert "CKPT_AUTH" in api["environment"]
    for service in services.values():
        assert "ckpt-data:/data" in service["volumes"]
    assert "ckpt-data" in compose("docker-compose.yml")["volumes"]
    (gpu,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    assert worker["healthcheck"] == {"disable": True}  # no HTTP server to check in a worker


def test_the_cpu_override_removes_the_gpu_reservation() -> None:
    base = compose("docker-compose.yml")
    worker = merged(base, compose("docker-compose.cpu.yml"))["services"]["worker"]
    assert "deploy" not in worker
    assert worker["environment"]["CKPT_DEVICE"] == "cpu"
    assert "args" not in worker["build"]  # the default build: the CPU torch wheel
    assert worker["depends_on"] == base["services"]["worker"]["depends_on"]
    assert worker["volumes"] == base["services"]["worker"]["volumes"]


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.scale.yml"])
def test_docker_compose_accepts_the_file(name: str) -> None:
    """docker-compose v1 (Debian's package) knows every key used here; the override's `!reset`
    needs Compose v2.24+, checked by the tests above instead."""
    result = subprocess.run(
        ["docker-compose", "-f", name, "config", "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_the_scale_profile_runs_postgres_s3_two_replicas_behind_a_proxy_and_two_workers() -> None:
    services = compose("docker-compose.scale.yml")["services"]
    assert all(service["profiles"] == ["scale"] for service in services.values())
    replicas = [name for name, s in services.items() if s.get("command") == ["ckpt", "serve"]]
    workers = [name for name, s in services.items() if s.get("command") == ["ckpt", "worker"]]
    assert len(replicas) == 2 and len(workers) == 2
    for name in [*replicas, *workers]:
        env = services[name]["environment"]
        assert env["CKPT_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["CKPT_STORAGE_URL"].startswith("s3://")
        assert env["AWS_ENDPOINT_URL_S3"] == "http://s3:9000"
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )
    migrate = services["migrate"]["depends_on"]
    assert migrate["db"] == {"condition": "service_healthy"}
    assert migrate["bucket"] == {"condition": "service_completed_successfully"}
    gpu_replicas = [name for name in replicas if "deploy" in services[name]]
    assert gpu_replicas == ["api-gpu"]
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    for replica in replicas:
        assert f"server {replica}:8000;" in nginx
    generation = nginx.split("upstream generation {")[1].split("}")[0]
    assert generation.split() == ["server", "api-gpu:8000;"]
    assert "proxy_request_buffering off;" in nginx and "proxy_buffering off;" in nginx
