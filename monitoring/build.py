"""``python -m monitoring.build``: write the generated monitoring files of the repository.

Inputs: :mod:`monitoring.rules` and :mod:`monitoring.dashboard`. Outputs (paths relative to the repository
root, see :data:`OUTPUTS`):

- ``deploy/prometheus/flow-auditor.rules.yaml`` — plain Prometheus rule file,
- ``deploy/base/prometheusrule.yaml`` — the same rules as a ``PrometheusRule``,
- ``dashboards/flow-auditor.json`` and its identical copy ``deploy/base/dashboards/flow-auditor.json`` (the
  kustomize ConfigMap of the base reads files below its own folder only).

Options: ``--check`` writes nothing and exits 1 when a committed file differs from a fresh build (CI);
``--fast-rules OUT`` writes only the end-to-end test rule file (``render_rules(fast=True)``) to ``OUT``.
``--root`` chooses the repository root (default: the folder above this package).

Error policy: exit 0 on success, 1 for stale files under ``--check``, 2 when a file cannot be written (the
message names it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from monitoring import dashboard, rules

ROOT: Final = Path(__file__).resolve().parent.parent
RULES_FILE: Final = "deploy/prometheus/flow-auditor.rules.yaml"
PROMETHEUS_RULE_FILE: Final = "deploy/base/prometheusrule.yaml"
DASHBOARD_FILE: Final = "dashboards/flow-auditor.json"
DASHBOARD_COPY: Final = "deploy/base/dashboards/flow-auditor.json"
OUTPUTS: Final = (RULES_FILE, PROMETHEUS_RULE_FILE, DASHBOARD_FILE, DASHBOARD_COPY)


def generated_files() -> dict[str, str]:
    """Every generated file: path relative to the repository root → content."""
    board = dashboard.render()
    return {
        RULES_FILE: rules.render_rules(),
        PROMETHEUS_RULE_FILE: rules.render_prometheus_rule(),
        DASHBOARD_FILE: board,
        DASHBOARD_COPY: board,
    }


def stale_files(root: Path = ROOT) -> list[str]:
    """Generated files under ``root`` that are missing or differ from a fresh build."""
    stale = []
    for name, content in generated_files().items():
        path = root / name
        if not path.is_file() or path.read_text(encoding="utf-8") != content:
            stale.append(name)
    return stale


def _write(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """Write the alert rules and the Grafana dashboard (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m monitoring.build", description=main.__doc__)
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is stale")
    parser.add_argument(
        "--fast-rules",
        type=Path,
        metavar="OUT",
        help="write only the end-to-end test rule file (for: 0s, short ranges) to OUT",
    )
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files(args.root)
        for name in stale:
            print(f"stale: {name} (run `python -m monitoring.build`)", file=sys.stderr)
        return 1 if stale else 0
    targets = (
        {args.fast_rules: rules.render_rules(fast=True)}
        if args.fast_rules is not None
        else {args.root / name: content for name, content in generated_files().items()}
    )
    for path, content in targets.items():
        try:
            _write(path, content)
        except OSError as exc:
            print(f"error: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
