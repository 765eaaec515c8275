"""Matrix loading (every selector kind, ports, scope, naming of unmatched endpoints) and its errors."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import pytest
from factory import DEBUG, HOST, POSTGRES, REDIS, WORKER, WORLD, pod

from auditor.matrix import MatrixError, describe, load_matrix, parse_matrix
from auditor.model import Endpoint, Workload

EXAMPLE = Path(__file__).parent.parent / "examples" / "airflow" / "matrix.yaml"

HEADER = """\
apiVersion: flow-auditor/v1alpha1
kind: CommunicationMatrix
metadata: {name: t}
"""


def matrix(body: str, file: str = "m.yaml"):  # type: ignore[no-untyped-def]
    return parse_matrix(HEADER + dedent(body), file)


def one(selector: str, allow: str = "allow: []"):  # type: ignore[no-untyped-def]
    return matrix(f"components:\n  c: {selector}\n{allow}\n")


# -- selectors --------------------------------------------------------------------------------------

SELECTOR_CASES = [
    ("namespace", "{namespace: airflow}", WORKER, True),
    ("namespace mismatch", "{namespace: airflow}", DEBUG, False),
    ("namespaces", "{namespaces: [default, other]}", DEBUG, True),
    ("labels", "{labels: {component: worker, tier: airflow}}", WORKER, True),
    ("labels: all must match", "{labels: {component: worker, tier: web}}", WORKER, False),
    ("namespaceLabels", "{namespaceLabels: {kubernetes.io/metadata.name: airflow}}", WORKER, True),
    (
        "namespaceLabels mismatch",
        "{namespaceLabels: {kubernetes.io/metadata.name: monitoring}}",
        WORKER,
        False,
    ),
    (
        "matchExpressions In",
        "{matchExpressions: [{key: component, operator: In, values: [worker, x]}]}",
        WORKER,
        True,
    ),
    (
        "matchExpressions NotIn",
        "{matchExpressions: [{key: component, operator: NotIn, values: [worker]}]}",
        WORKER,
        False,
    ),
    (
        "matchExpressions NotIn absent key",
        "{matchExpressions: [{key: nope, operator: NotIn, values: [a]}]}",
        WORKER,
        True,
    ),
    ("matchExpressions Exists", "{matchExpressions: [{key: tier, operator: Exists}]}", WORKER, True),
    (
        "matchExpressions DoesNotExist",
        "{matchExpressions: [{key: tier, operator: DoesNotExist}]}",
        WORKER,
        False,
    ),
    (
        "serviceAccount",
        "{serviceAccount: airflow-worker}",
        pod("airflow", "w", 9, "io.cilium.k8s.policy.serviceaccount=airflow-worker"),
        True,
    ),
    ("serviceAccount mismatch", "{serviceAccount: airflow-worker}", WORKER, False),
    (
        "workload",
        "{workload: {kind: StatefulSet, name: airflow-worker}}",
        pod("airflow", "w", 9, workloads=(Workload("StatefulSet", "airflow-worker"),)),
        True,
    ),
    (
        "workload any kind",
        "{workload: {name: airflow-worker}}",
        pod("airflow", "w", 9, workloads=(Workload("StatefulSet", "airflow-worker"),)),
        True,
    ),
    (
        "workload mismatch",
        "{workload: {kind: Deployment, name: airflow-worker}}",
        pod("airflow", "w", 9, workloads=(Workload("StatefulSet", "airflow-worker"),)),
        False,
    ),
    ("entity world", "{entities: [world]}", WORLD, True),
    (
        "entity world matches world-ipv4",
        "{entities: [world]}",
        Endpoint(identity=9, labels=("reserved:world-ipv4",)),
        True,
    ),
    (
        "entity world matches world-ipv6",
        "{entities: [world]}",
        Endpoint(labels=("reserved:world-ipv6",)),
        True,
    ),
    ("entity host", "{entities: [host]}", HOST, True),
    (
        "entity kube-apiserver by identity 7",
        "{entities: [kube-apiserver]}",
        Endpoint(identity=7, labels=("reserved:kube-apiserver", "reserved:remote-node")),
        True,
    ),
    # An identity with several reserved labels is each of those entities, as in Cilium's toEntities.
    (
        "kube-apiserver on a node is also remote-node",
        "{entities: [remote-node]}",
        Endpoint(identity=7, labels=("reserved:kube-apiserver", "reserved:remote-node")),
        True,
    ),
    (
        "kube-apiserver identity without the remote-node label is not remote-node",
        "{entities: [remote-node]}",
        Endpoint(identity=7, labels=("reserved:kube-apiserver",)),
        False,
    ),
    (
        "control-plane host that serves the API is host (kind, kubeadm)",
        "{entities: [host]}",
        Endpoint(identity=1, labels=("reserved:host", "reserved:kube-apiserver")),
        True,
    ),
    (
        "control-plane host that serves the API is kube-apiserver",
        "{entities: [kube-apiserver]}",
        Endpoint(identity=1, labels=("reserved:host", "reserved:kube-apiserver")),
        True,
    ),
    (
        "API server outside the cluster (CIDR identity) is world",
        "{entities: [world]}",
        Endpoint(
            identity=16777220, labels=("cidr:172.18.0.2/32", "reserved:kube-apiserver", "reserved:world")
        ),
        True,
    ),
    (
        "API server outside the cluster (CIDR identity) is kube-apiserver",
        "{entities: [kube-apiserver]}",
        Endpoint(
            identity=16777220, labels=("cidr:172.18.0.2/32", "reserved:kube-apiserver", "reserved:world")
        ),
        True,
    ),
    ("plain host is not kube-apiserver", "{entities: [kube-apiserver]}", HOST, False),
    ("entity on a pod", "{entities: [world]}", WORKER, False),
    ("AND of fields", "{namespace: airflow, labels: {component: redis}}", REDIS, True),
    ("AND of fields, one fails", "{namespace: default, labels: {component: redis}}", REDIS, False),
]


@pytest.mark.parametrize(
    ("selector", "endpoint", "matches"), [c[1:] for c in SELECTOR_CASES], ids=[c[0] for c in SELECTOR_CASES]
)
def test_selector_kinds(selector: str, endpoint: Endpoint, matches: bool) -> None:
    m = one(selector)
    assert (m.resolve(endpoint) == "c") is matches


ADDRESS_CASES = [
    ("cidr", "{cidrs: [140.82.112.0/20]}", "140.82.113.3", (), True),
    ("cidr outside", "{cidrs: [140.82.112.0/20]}", "8.8.8.8", (), False),
    ("cidr except", "{cidrs: [{cidr: 10.0.0.0/8, except: [10.96.0.0/12]}]}", "10.96.0.1", (), False),
    (
        "cidr except outside the hole",
        "{cidrs: [{cidr: 10.0.0.0/8, except: [10.96.0.0/12]}]}",
        "10.1.0.1",
        (),
        True,
    ),
    ("cidr v6", "{cidrs: [2001:db8::/32]}", "2001:db8::1", (), True),
    ("fqdn exact", "{fqdns: [vault.example.com]}", "1.2.3.4", ("vault.example.com",), True),
    (
        "fqdn exact with trailing dot and case",
        "{fqdns: [vault.example.com]}",
        "1.2.3.4",
        ("Vault.Example.com.",),
        True,
    ),
    ("fqdn wildcard", '{fqdns: ["*.github.com"]}', "1.2.3.4", ("api.github.com",), True),
    ("fqdn wildcard does not match the apex", '{fqdns: ["*.github.com"]}', "1.2.3.4", ("github.com",), False),
    ("fqdn no names", "{fqdns: [vault.example.com]}", "1.2.3.4", (), False),
    (
        "cidr and fqdn both required",
        "{cidrs: [1.2.3.0/24], fqdns: [a.example.com]}",
        "1.2.3.4",
        ("b.example.com",),
        False,
    ),
]


@pytest.mark.parametrize(
    ("selector", "ip", "names", "matches"), [c[1:] for c in ADDRESS_CASES], ids=[c[0] for c in ADDRESS_CASES]
)
def test_address_selectors(selector: str, ip: str, names: tuple[str, ...], matches: bool) -> None:
    m = one(selector)
    assert (m.resolve(WORLD, ip, names) == "c") is matches


# Cilium's CIDR and FQDN rules select only peers outside the cluster; so do address selectors: a pod or a
# node whose address lies in the CIDR (or that a DNS answer named) is not that component.
OUTSIDE_CASES = [
    ("world", WORLD, True),
    ("world-ipv6", Endpoint(identity=10, labels=("reserved:world-ipv6",)), True),
    ("CIDR identity", Endpoint(identity=(1 << 24) + 5, labels=("cidr:10.1.0.0/16",)), True),
    ("CIDR identity, old numbering", Endpoint(identity=300, labels=("cidr:10.1.0.0/16",)), True),
    ("FQDN identity", Endpoint(identity=(1 << 24) + 9, labels=("fqdn:*.example.com",)), True),
    ("pod", WORKER, False),
    ("host", HOST, False),
    ("remote node", Endpoint(identity=6, labels=("reserved:remote-node",)), False),
    ("API server", Endpoint(identity=7, labels=("reserved:kube-apiserver",)), False),
    ("unmanaged", Endpoint(identity=3, labels=("reserved:unmanaged",)), False),
    ("unknown identity", Endpoint(), False),
]


@pytest.mark.parametrize(("ep", "outside"), [c[1:] for c in OUTSIDE_CASES], ids=[c[0] for c in OUTSIDE_CASES])
def test_address_selectors_match_only_peers_outside_the_cluster(ep: Endpoint, outside: bool) -> None:
    cidr, fqdn = one("{cidrs: [10.0.0.0/8]}"), one("{fqdns: [vault.example.com]}")
    assert (cidr.resolve(ep, "10.1.2.3") == "c") is outside
    assert (fqdn.resolve(ep, "10.1.2.3", ("vault.example.com",)) == "c") is outside


def test_first_matching_component_wins() -> None:
    m = matrix("""\
        components:
          vault: {fqdns: [vault.example.com]}
          anything-airflow: {namespace: airflow}
          worker: {labels: {component: worker}}
          internet: {entities: [world]}
        allow: []
        """)
    assert m.resolve(WORKER) == "anything-airflow"
    assert m.resolve(WORLD, "1.2.3.4", ("vault.example.com",)) == "vault"
    assert m.resolve(WORLD, "1.2.3.4", ("other.example.com",)) == "internet"


NAMING_CASES = [
    ("world", WORLD, "world"),
    ("world-ipv4 folds to world", Endpoint(identity=9, labels=("reserved:world-ipv4",)), "world"),
    ("host", HOST, "host"),
    (
        "kube-apiserver wins over remote-node",
        Endpoint(identity=7, labels=("reserved:remote-node",)),
        "kube-apiserver",
    ),
    ("remote-node", Endpoint(identity=6, labels=("reserved:remote-node",)), "remote-node"),
    ("health", Endpoint(identity=4, labels=("reserved:health",)), "health"),
    ("pod in another namespace", DEBUG, "ns:default"),
    ("nothing known", Endpoint(), "unknown"),
]


@pytest.mark.parametrize(
    ("endpoint", "name"), [c[1:] for c in NAMING_CASES], ids=[c[0] for c in NAMING_CASES]
)
def test_unmatched_endpoints_are_named_by_what_they_are(endpoint: Endpoint, name: str) -> None:
    m = one("{labels: {component: nothing-has-this}}")
    assert m.resolve(endpoint) == name


# -- ports and rules --------------------------------------------------------------------------------

PORT_CASES = [
    ("8080", "TCP", 8080, True),
    ("8080", "UDP", 8080, False),
    ('"8080/TCP"', "TCP", 8080, True),
    ('"53/UDP"', "UDP", 53, True),
    ('"53/UDP"', "TCP", 53, False),
    ('"53/udp"', "UDP", 53, True),
    ('"30000-32767/TCP"', "TCP", 31000, True),
    ('"30000-32767/TCP"', "TCP", 29999, False),
    ('"9000/SCTP"', "SCTP", 9000, True),
    ("any", "UDP", 1, True),
    ("any", "ICMPv4", 8, True),
    ("ICMP", "ICMPv4", 8, True),
    ("ICMP", "ICMPv6", 128, True),
    ("ICMPv6", "ICMPv4", 8, False),
    ("ICMP", "TCP", 8, False),
]


@pytest.mark.parametrize(("spec", "protocol", "port", "allowed"), PORT_CASES)
def test_port_specs(spec: str, protocol: str, port: int, allowed: bool) -> None:
    m = matrix(f"""\
        components:
          a: {{namespace: x}}
          b: {{namespace: y}}
        allow:
          - {{from: a, to: b, ports: [{spec}]}}
        """)
    assert (m.rule_for("a", "b", protocol, port) is not None) is allowed
    assert m.rule_for("b", "a", protocol, port) is None


def test_rules_expand_lists_and_report_first_matching_rule() -> None:
    m = matrix("""\
        components:
          a: {namespace: x}
          b: {namespace: y}
          c: {namespace: z}
        allow:
          - {from: [a, b], to: c, ports: [80]}
          - {from: a, to: c, ports: [any], description: catch-all}
        """)
    rule_80 = m.rule_for("a", "c", "TCP", 80)
    rule_81 = m.rule_for("a", "c", "TCP", 81)
    assert rule_80 is not None and rule_80.index == 1
    assert rule_81 is not None and rule_81.index == 2 and rule_81.description == "catch-all"
    assert m.rule_for("b", "c", "TCP", 81) is None


def test_scope_defaults_to_namespaces_named_by_components() -> None:
    m = matrix("""\
        components:
          a: {namespace: x}
          b: {namespaces: [y, z]}
          w: {entities: [world]}
        allow: []
        """)
    assert m.scope_namespaces == frozenset({"x", "y", "z"})
    assert not m.in_scope("default")


def test_explicit_scope() -> None:
    m = matrix("scope: {namespaces: [airflow]}\ncomponents:\n  a: {namespace: x}\nallow: []\n")
    assert m.scope_namespaces == frozenset({"airflow"})


def test_example_matrix_loads_and_describes() -> None:
    m = load_matrix(EXAMPLE)
    assert m.name == "airflow"
    assert m.resolve(POSTGRES) == "postgresql"
    text = describe(m)
    assert "postgresql" in text and "5432/TCP" in text and "scope: airflow" in text


# -- errors -----------------------------------------------------------------------------------------

ERROR_CASES = [
    ("unknown top-level field", "componentz: {}\n", 4, "componentz: unknown field"),
    (
        "unknown selector field",
        "components:\n  a: {namespace: x, label: {a: b}}\nallow: []\n",
        5,
        "components.a.label: unknown field",
    ),
    (
        "unknown component in rule",
        "components:\n  a: {namespace: x}\nallow:\n  - {from: a, to: b, ports: [80]}\n",
        7,
        "allow[0].to: unknown component 'b' (declared: a)",
    ),
    (
        "bad port",
        'components:\n  a: {namespace: x}\nallow:\n  - {from: a, to: a, ports: ["80/TPC"]}\n',
        7,
        "allow[0].ports[0]: unknown protocol 'TPC'",
    ),
    (
        "port out of range",
        "components:\n  a: {namespace: x}\nallow:\n  - {from: a, to: a, ports: [70000]}\n",
        7,
        "allow[0].ports[0]: port out of range",
    ),
    (
        "inverted range",
        'components:\n  a: {namespace: x}\nallow:\n  - {from: a, to: a, ports: ["90-80"]}\n',
        7,
        "empty port range",
    ),
    (
        "duplicate component",
        "components:\n  a: {namespace: x}\n  a: {namespace: y}\nallow: []\n",
        6,
        "components.a: duplicate key",
    ),
    ("empty selector", "components:\n  a: {}\nallow: []\n", 5, "components.a: empty selector"),
    # label keys and values Kubernetes refuses would never match (nor make a valid policy)
    (
        "Cilium source prefix in a label key",
        "components:\n  a: {labels: {k8s:app: web}}\nallow: []\n",
        5,
        "components.a.labels.k8s:app: label key 'k8s:app' carries Cilium's source prefix 'k8s:': write 'app'",
    ),
    (
        "bad label key",
        'components:\n  a: {labels: {"bad key!": x}}\nallow: []\n',
        5,
        "not a Kubernetes label key",
    ),
    (
        "bad label prefix",
        "components:\n  a: {labels: {Example.COM/app: x}}\nallow: []\n",
        5,
        "not a DNS subdomain",
    ),
    (
        "bad label value",
        'components:\n  a: {labels: {app: "two words"}}\nallow: []\n',
        5,
        "not a Kubernetes label value",
    ),
    (
        "bad namespace label",
        "components:\n  a: {namespaceLabels: {name: -x}}\nallow: []\n",
        5,
        "components.a.namespaceLabels.name: label value '-x'",
    ),
    (
        "Cilium source prefix in an expression",
        "components:\n  a: {matchExpressions: [{key: k8s:app, operator: Exists}]}\nallow: []\n",
        5,
        "components.a.matchExpressions[0].key: label key 'k8s:app' carries",
    ),
    (
        "bad expression value",
        "components:\n  a: {matchExpressions: [{key: app, operator: In, values: [ok, not ok]}]}\nallow: []\n",
        5,
        "matchExpressions[0].values: label value 'not ok'",
    ),
    ("unknown entity", "components:\n  a: {entities: [wrld]}\nallow: []\n", 5, "unknown entity 'wrld'"),
    ("bad cidr", "components:\n  a: {cidrs: [10.0.0.1/8]}\nallow: []\n", 5, "invalid CIDR '10.0.0.1/8'"),
    (
        "except outside cidr",
        "components:\n  a: {cidrs: [{cidr: 10.0.0.0/8, except: [192.168.0.0/16]}]}\nallow: []\n",
        5,
        "192.168.0.0/16 is not inside 10.0.0.0/8",
    ),
    (
        "bad operator",
        "components:\n  a: {matchExpressions: [{key: a, operator: Equals, values: [b]}]}\nallow: []\n",
        5,
        "unknown operator 'Equals'",
    ),
    (
        "In without values",
        "components:\n  a: {matchExpressions: [{key: a, operator: In}]}\nallow: []\n",
        5,
        "operator In needs a non-empty list of values",
    ),
    (
        "missing ports",
        "components:\n  a: {namespace: x}\nallow:\n  - {from: a, to: a}\n",
        7,
        "allow[0].ports: required field is missing",
    ),
    (
        "labels not a mapping",
        "components:\n  a: {labels: [a, b]}\nallow: []\n",
        5,
        "components.a.labels: expected a mapping",
    ),
    ("bad fqdn", "components:\n  a: {fqdns: ['*']}\nallow: []\n", 5, "invalid FQDN '*'"),
    ("missing components", "allow: []\n", 1, "components: required field is missing"),
]


@pytest.mark.parametrize(
    ("body", "line", "message"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_matrix_errors_name_file_line_and_key(body: str, line: int, message: str) -> None:
    with pytest.raises(MatrixError) as info:
        parse_matrix(HEADER + body, "bad.yaml")
    text = str(info.value)
    assert text.startswith(f"bad.yaml:{line}: "), text
    assert message in text


def test_wrong_api_version() -> None:
    with pytest.raises(MatrixError, match=r"^x.yaml:1: apiVersion: unsupported 'v1'"):
        parse_matrix(
            "apiVersion: v1\nkind: CommunicationMatrix\nmetadata: {name: a}\ncomponents: {}\nallow: []\n",
            "x.yaml",
        )


def test_invalid_yaml_names_the_line() -> None:
    with pytest.raises(MatrixError, match=r"^y.yaml:3: invalid YAML"):
        parse_matrix("a: 1\nb: [1, 2\nc: 3\n", "y.yaml")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MatrixError, match="cannot read file"):
        load_matrix(tmp_path / "nope.yaml")


def alias_bomb(components: int, repeats: int) -> str:
    """A few KB of YAML: one all-to-all rule over ``components`` components, repeated by alias."""
    names = [f"c{i}" for i in range(components)]
    lines = [
        "apiVersion: flow-auditor/v1alpha1",
        "kind: CommunicationMatrix",
        "metadata: {name: bomb}",
        "components:",
        *(f"  {n}: {{namespace: ns, labels: {{app: {n}}}}}" for n in names),
        "allow:",
        "  - &rule {from: &all [" + ", ".join(names) + "], to: *all, ports: [80]}",
        *(["  - *rule"] * (repeats - 1)),
    ]
    return "\n".join(lines) + "\n"


def test_a_matrix_whose_rules_expand_beyond_the_limit_is_refused_with_file_and_line() -> None:
    """Before: 3.2 KB of aliases loaded as 250,000 (rule, from, to) series and lookup entries."""
    text = alias_bomb(50, 100)
    assert len(text) < 4096
    with pytest.raises(MatrixError) as err:
        parse_matrix(text, "bomb.yaml")
    e = err.value
    assert (e.file, e.line, e.key) == ("bomb.yaml", 56, "allow[0]")
    assert "250,000 (rule, from, to) combinations, more than the limit of 10,000" in str(e)
    assert "50 x 50" in str(e)


def test_a_matrix_at_the_expansion_limit_loads() -> None:
    text = alias_bomb(100, 1)
    assert len(parse_matrix(text, "edge.yaml").rules[0].sources) == 100  # 100 x 100 = 10,000
