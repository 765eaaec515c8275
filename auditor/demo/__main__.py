"""``python -m auditor.demo``: the same command line as ``python -m auditor.demo.server``.

Stage: none (test and demo tooling). Input/output and error policy: see :func:`auditor.demo.server.main`.
"""

from auditor.demo.server import main

raise SystemExit(main())
