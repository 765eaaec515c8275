"""flow-auditor: judge Hubble flows against a declared communication matrix.

Submodules load from the compiled core when ``make native`` built it and it matches the sources, else (and
always with ``FLOW_AUDITOR_PURE=1``) from their ``.py`` sources: :func:`auditor.native.select_build`.
"""

import os as _os
from importlib.metadata import PackageNotFoundError, version

from auditor import native as _native

# gRPC's C core writes its own log lines (plain text) to stderr; the daemon's logs are JSON lines, and what
# those lines say reaches the logs as RPC errors. Quiet unless asked (set before gRPC is first imported).
_os.environ.setdefault("GRPC_VERBOSITY", "NONE")

_native.select_build()

try:
    __version__ = version("flow-auditor")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"
