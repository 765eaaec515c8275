"""flow-auditor: judge Hubble flows against a declared communication matrix.

Submodules load from the compiled core when ``make native`` built it and it matches the sources, else (and
always with ``FLOW_AUDITOR_PURE=1``) from their ``.py`` sources: :func:`auditor.native.select_build`.
"""

from importlib.metadata import PackageNotFoundError, version

from auditor import native as _native

_native.select_build()

try:
    __version__ = version("flow-auditor")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"
