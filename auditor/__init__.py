"""flow-auditor: judge Hubble flows against a declared communication matrix.

With ``FLOW_AUDITOR_PURE=1`` every submodule is loaded from its ``.py`` source even where ``make native``
left a compiled one (``auditor.native``).
"""

import os
from importlib.metadata import PackageNotFoundError, version

if os.environ.get("FLOW_AUDITOR_PURE"):
    from auditor.native import install_pure_finder, pure_requested

    if pure_requested():
        install_pure_finder()

try:
    __version__ = version("flow-auditor")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"
