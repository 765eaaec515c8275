"""``python -m auditor``: the same command line as ``flow-auditor``."""

from auditor.cli import main

raise SystemExit(main())
