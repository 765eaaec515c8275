"""The contract lives in the repository: every "DESIGN §N" (or "§N.M", "§N rule K") named in code, tests,
docs, dashboards and manifests points to a section of docs/design.md that exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DESIGN = ROOT / "docs" / "design.md"
REFERENCE = re.compile(r"DESIGN(?:\.md)? ?§ ?(\d+)(?:\.(\d+))?(?: rules? (\d+))?")
SEARCHED = ("auditor", "monitoring", "tests", "docs", "dashboards", "deploy", "bench", "scripts", "examples")
SUFFIXES = {".py", ".md", ".json", ".yaml", ".yml", ".js", ".html", ".txt"}


def sections() -> tuple[set[str], set[tuple[str, str]]]:
    """Section numbers (``5``, ``5.3``) and (section, rule) pairs of the design."""
    numbers: set[str] = set()
    rules: set[tuple[str, str]] = set()
    for line in DESIGN.read_text().splitlines():
        m = re.match(r"^(#{2,3}) (\d+)(?:\.(\d+))?\.? ", line)
        if m:
            numbers.add(m[2] if m[3] is None else f"{m[2]}.{m[3]}")
            rule = re.search(r"Rule (\d+)", line)
            if rule:
                rules.add((m[2], rule[1]))
    return numbers, rules


def references() -> list[tuple[str, str, str | None, str | None]]:
    found = []
    for top in SEARCHED:
        for path in sorted((ROOT / top).rglob("*")):
            if path.suffix not in SUFFIXES or not path.is_file() or "golden" in path.parts:
                continue
            for m in REFERENCE.finditer(path.read_text(errors="replace")):
                found.append((str(path.relative_to(ROOT)), m[1], m[2], m[3]))
    return found


def dangling(
    refs: list[tuple[str, str, str | None, str | None]],
) -> list[tuple[str, str, str | None, str | None]]:
    numbers, rules = sections()
    return [
        ref
        for ref in refs
        if (ref[1] if ref[2] is None else f"{ref[1]}.{ref[2]}") not in numbers
        or (ref[3] is not None and (ref[1], ref[3]) not in rules)
    ]


def test_every_design_reference_names_an_existing_section() -> None:
    refs = references()
    assert len(refs) > 30  # the references are really found
    assert dangling(refs) == []


def test_the_check_flags_a_section_or_rule_that_does_not_exist() -> None:
    good = [("a", "5", None, None), ("a", "5", "3", None), ("a", "5", None, "1"), ("a", "6", None, None)]
    bad = [("b", "9", None, None), ("b", "5", "9", None), ("b", "5", None, "9")]
    assert dangling(good + bad) == bad
