"""deploy/kubernetes checked against the real binary: config keys, ports, probe paths, selectors."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO, Sidewire
from sidewire_client import Client

MANIFESTS = REPO / "deploy" / "kubernetes"
TEST_TOKEN = "k8s-test-token"


def load_manifests() -> dict[tuple[str, str], dict[str, Any]]:
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document and "metadata" in document:
                objects[(document["kind"], document["metadata"]["name"])] = document
    return objects


@pytest.fixture(scope="module")
def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    return load_manifests()


@pytest.fixture(scope="module")
def pod(manifests: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = manifests[("Deployment", "example-backend")]["spec"]["template"]
    return spec


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    spec = pod["spec"]
    for found in spec.get("initContainers", []) + spec["containers"]:
        if found["name"] == name:
            return dict(found)
    raise AssertionError(f"no container {name!r} in the pod")


def port_number(c: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port: a number, or the name of a container port."""
    if isinstance(port, int):
        return port
    for declared in c.get("ports", []):
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise AssertionError(f"container {c['name']!r} has no port named {port!r}")


def image_env_overrides() -> dict[str, str]:
    """SIDEWIRE__* set by the sidewire image (the repository's Dockerfile): they win over the file."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    found: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip().startswith("ENV "):
            found.update(re.findall(r"(SIDEWIRE__[A-Z0-9_]+)=(\S+)", line))
    return found


def pod_env_overrides(c: dict[str, Any]) -> dict[str, str]:
    """The container's SIDEWIRE__* variables with $(VAR) references expanded as the kubelet does."""
    values: dict[str, str] = {}
    for variable in c.get("env", []):
        if "value" in variable:
            values[variable["name"]] = re.sub(
                r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: values.get(m.group(1), m.group(0)), variable["value"]
            )
        elif "secretKeyRef" in variable.get("valueFrom", {}):
            values[variable["name"]] = TEST_TOKEN
    return {k: v for k, v in values.items() if k.startswith("SIDEWIRE__")}


def config_text(manifests: dict[tuple[str, str], dict[str, Any]]) -> str:
    return str(manifests[("ConfigMap", "sidewire-config")]["data"]["sidewire.toml"])


def test_kustomization_lists_existing_files_and_servicemonitor_stays_optional() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (MANIFESTS / resource).is_file(), resource
    assert "servicemonitor.yaml" not in kustomization["resources"]  # needs the operator's CRDs


def test_configmap_config_passes_check_config_with_every_override(
    sidewire_bin: Path, manifests: dict[tuple[str, str], dict[str, Any]], pod: dict[str, Any], tmp_path: Path
) -> None:
    config = tmp_path / "sidewire.toml"
    config.write_text(config_text(manifests))
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("SIDEWIRE")}
    plain = subprocess.run(
        [str(sidewire_bin), "check-config", str(config)], capture_output=True, text=True, env=clean_env, check=False
    )
    assert plain.returncode == 0, plain.stdout + plain.stderr
    overrides = {**image_env_overrides(), **pod_env_overrides(container(pod, "sidewire"))}
    assert "SIDEWIRE__AUTH__INGEST_TOKENS" in overrides
    with_env = subprocess.run(
        [str(sidewire_bin), "check-config", str(config)],
        capture_output=True,
        text=True,
        env={**clean_env, **overrides},
        check=False,
    )
    assert with_env.returncode == 0, with_env.stdout + with_env.stderr


def test_check_config_does_catch_a_bad_key(sidewire_bin: Path, tmp_path: Path) -> None:
    # The check above can fail: a typo in the ConfigMap would be reported.
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nlisten = "0.0.0.0:8790"\nlisen = "x"\n')
    result = subprocess.run([str(sidewire_bin), "check-config", str(bad)], capture_output=True, text=True, check=False)
    assert result.returncode == 1 and "lisen" in result.stdout + result.stderr


def test_ports_probes_mounts_and_env_agree_with_the_config(
    manifests: dict[tuple[str, str], dict[str, Any]], pod: dict[str, Any]
) -> None:
    config = tomllib.loads(config_text(manifests))
    sidecar = container(pod, "sidewire")
    backend = container(pod, "backend")
    image_env = image_env_overrides()
    # The image's overrides win over the file: they must say the same.
    assert image_env.get("SIDEWIRE__SERVER__LISTEN", config["server"]["listen"]) == config["server"]["listen"]
    assert (
        image_env.get("SIDEWIRE__PERSIST__SQLITE_PATH", config["persist"]["sqlite_path"])
        == (config["persist"]["sqlite_path"])
    )
    host, port = config["server"]["listen"].rsplit(":", 1)
    assert host == "0.0.0.0"  # probes and the Service reach the pod IP
    (declared,) = sidecar["ports"]
    assert declared["containerPort"] == int(port)
    # Probes: /healthz for startup and liveness, /readyz for readiness, on the listen port.
    assert sidecar["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert port_number(sidecar, sidecar[probe]["httpGet"]["port"]) == int(port)
    # A native sidecar: started before the backend, stopped after it.
    assert sidecar in [dict(c) for c in pod["spec"]["initContainers"]] and sidecar["restartPolicy"] == "Always"
    # The config file is where the ConfigMap is mounted, as a directory (hot reload).
    (config_volume,) = [v for v in pod["spec"]["volumes"] if v.get("configMap", {}).get("name") == "sidewire-config"]
    (mount,) = [m for m in sidecar["volumeMounts"] if m["name"] == config_volume["name"]]
    assert "subPath" not in mount
    args = sidecar["args"]
    assert args[args.index("--config") + 1] == mount["mountPath"] + "/sidewire.toml"
    # The store lives on the data volume.
    (data_mount,) = [m for m in sidecar["volumeMounts"] if m["name"] == "sidewire-data"]
    assert config["persist"]["sqlite_path"].startswith(data_mount["mountPath"] + "/")
    # The backend posts to the sidecar over the pod's loopback, with the sidecar's token.
    backend_env = {e["name"]: e for e in backend["env"]}
    assert backend_env["SIDEWIRE_URL"]["value"] == f"http://127.0.0.1:{port}"
    sidecar_env = {e["name"]: e for e in sidecar["env"]}
    assert (
        backend_env["SIDEWIRE_TOKEN"]["valueFrom"]["secretKeyRef"]
        == sidecar_env["SIDEWIRE_INGEST_TOKEN"]["valueFrom"]["secretKeyRef"]
    )
    # Annotation-based scraping points at the same port.
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == port and annotations["prometheus.io/path"] == "/metrics"


def test_services_and_servicemonitor_select_the_pod_and_name_real_ports(
    manifests: dict[tuple[str, str], dict[str, Any]], pod: dict[str, Any]
) -> None:
    labels = pod["metadata"]["labels"]
    services = {name: obj for (kind, name), obj in manifests.items() if kind == "Service"}
    assert set(services) == {"example-backend", "example-backend-sidewire"}
    for service in services.values():
        assert service["spec"]["selector"].items() <= labels.items()
    (app_port,) = services["example-backend"]["spec"]["ports"]
    assert port_number(container(pod, "backend"), app_port["targetPort"]) == 8000
    (dash_port,) = services["example-backend-sidewire"]["spec"]["ports"]
    config = tomllib.loads(config_text(manifests))
    assert port_number(container(pod, "sidewire"), dash_port["targetPort"]) == int(
        config["server"]["listen"].rsplit(":", 1)[1]
    )
    monitor = manifests[("ServiceMonitor", "example-backend-sidewire")]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items()
        <= services["example-backend-sidewire"]["metadata"]["labels"].items()
    )
    assert (
        not monitor["spec"]["selector"]["matchLabels"].items()
        <= services["example-backend"]["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == dash_port["name"] and endpoint["path"] == "/metrics"


def test_sidewire_with_the_manifest_config_answers_probes_and_guards_ingest(
    sidewire_bin: Path, manifests: dict[tuple[str, str], dict[str, Any]], pod: dict[str, Any], tmp_path: Path
) -> None:
    sidecar = container(pod, "sidewire")
    env = pod_env_overrides(sidecar)
    server = Sidewire(sidewire_bin, tmp_path, config_text=config_text(manifests), env=env)
    server.start()  # on a loopback port: the test never binds 0.0.0.0
    try:
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            status, body = server.request("GET", sidecar[probe]["httpGet"]["path"])
            assert status == 200, (probe, body)
        status, body = server.request("POST", "/api/v1/ingest", b'{"type": "query_complete"}')
        assert status == 401 and body["error"]["code"] == "unauthorized"
        with Client(server.url, token=TEST_TOKEN) as client:
            client.query_complete(latency_ms=5)
            assert client.flush(10)
            assert client.stats.sent == 1
        assert server.stats()["queriesCompleted"] == 1
    finally:
        server.stop()
