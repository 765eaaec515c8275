"""Matrix loading refuses what it cannot use, always with a :class:`MatrixError` naming file and line.

Reserved component names, hostile nesting and numbers, and a seeded fuzz of the example matrix: the
daemon's hot reload keeps the old matrix only for a ``MatrixError``, so nothing else may escape.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from daemon_helpers import run_cli

from auditor.matrix import ENTITIES, MatrixError, load_matrix, parse_matrix

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "airflow" / "matrix.yaml"

HEADER = "apiVersion: flow-auditor/v1alpha1\nkind: CommunicationMatrix\nmetadata: {name: t}\n"


def with_component(name: str) -> str:
    return HEADER + f"components:\n  web: {{namespace: app}}\n  {name}: {{namespace: batch}}\nallow: []\n"


@pytest.mark.parametrize(
    "name",
    [*sorted(ENTITIES), "world-ipv4", "world-ipv6", "unknown"],
)
def test_a_component_may_not_take_a_name_given_to_unmatched_peers(name: str) -> None:
    with pytest.raises(MatrixError) as err:
        parse_matrix(with_component(name), "m.yaml")
    assert (err.value.file, err.value.line, err.value.key) == ("m.yaml", 6, f"components.{name}")
    assert "reserved" in err.value.problem


@pytest.mark.parametrize("name", ["ns:batch", "ns-batch:x"])
def test_fallback_namespace_names_are_refused(name: str) -> None:
    with pytest.raises(MatrixError, match=r"m.yaml:6: components\.ns"):
        parse_matrix(with_component(f'"{name}"'), "m.yaml")


@pytest.mark.parametrize("name", ["world-api", "hosts", "unknown-peers", "internet", "ns"])
def test_names_that_only_resemble_reserved_ones_are_fine(name: str) -> None:
    assert [c.name for c in parse_matrix(with_component(name)).components] == ["web", name]


@pytest.mark.parametrize(
    "nested",
    [
        "[" * 5000 + "]" * 5000,  # flow style
        "{a: " * 5000 + "1" + "}" * 5000,
        "".join(f"\n{'  ' * (i + 2)}k{i}:" for i in range(5000)) + " 1",  # block style
    ],
)
def test_deeply_nested_yaml_is_a_matrix_error_with_its_line(nested: str) -> None:
    text = HEADER + "components:\n  web: " + nested + "\nallow: []\n"
    with pytest.raises(MatrixError) as err:
        parse_matrix(text, "m.yaml")
    assert err.value.file == "m.yaml" and 5 <= err.value.line <= 5 + 40
    assert "nested deeper than" in err.value.problem


@pytest.mark.parametrize(
    "port",
    ["9" * 5000, f'"1-{"9" * 5000}"', f'"{"0" * 4999}80/TCP"', "100000"],
)
def test_huge_ports_are_out_of_range_with_a_short_message(port: str) -> None:
    text = HEADER + f"components:\n  a: {{namespace: x}}\nallow:\n  - {{from: a, to: a, ports: [{port}]}}\n"
    with pytest.raises(MatrixError) as err:
        parse_matrix(text, "m.yaml")
    assert (err.value.line, err.value.key) == (7, "allow[0].ports[0]")
    assert "port out of range" in err.value.problem and len(str(err.value)) < 200


def test_only_matrix_errors_escape_a_seeded_fuzz_of_the_example() -> None:
    base = EXAMPLE.read_text()
    rng = random.Random(8)
    pieces = [*"{}[]:,-&*!|>'\"#%@` \n\t0123456789az/.~?", "\x00", "é", "*a", "&a ", "<<: *a\n", "9" * 5000]
    loaded = 0
    for _ in range(1500):
        text = list(base)
        for _ in range(rng.randint(1, 6)):
            pos = rng.randrange(len(text))
            op = rng.random()
            if op < 0.4:
                text[pos] = rng.choice(pieces)
            elif op < 0.7:
                text.insert(pos, rng.choice(pieces))
            else:
                del text[pos]
        try:
            parse_matrix("".join(text), "fuzz.yaml")
            loaded += 1
        except MatrixError as e:
            assert str(e).startswith("fuzz.yaml")
    assert 0 < loaded < 1500  # the fuzz both keeps and breaks matrices


def test_load_matrix_of_a_directory_is_a_matrix_error(tmp_path: Path) -> None:
    with pytest.raises(MatrixError, match="cannot read file"):
        load_matrix(tmp_path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (with_component("world"), "components.world: 'world' is reserved"),
        (HEADER + "components:\n  web: " + "[" * 5000 + "]" * 5000 + "\nallow: []\n", "nested deeper"),
    ],
)
def test_matrix_check_exits_2_with_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(text)
    proc = run_cli("matrix", "check", str(path))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and message in proc.stderr and str(path) in proc.stderr
