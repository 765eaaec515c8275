"""flow-auditor: judge Hubble flows against a declared communication matrix."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("flow-auditor")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"
