"""``python -m auditor.scenario --out FILE``: write the Airflow example (or a synthetic stream)."""

from auditor.scenario.io import main

raise SystemExit(main())
