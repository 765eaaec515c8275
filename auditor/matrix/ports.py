"""Port specs of allow rules (DESIGN §4.3): ``8080``, ``"53/UDP"``, ``"30000-32767/TCP"``, ``ICMP``, ``any``.

Stage: configuration for :func:`parse_port` (once per matrix load; ``auditor.kube.diff`` reads policies' ports
with it too); per flow for :meth:`PortRange.matches` (pure).

Error policy: :func:`parse_port` raises the exception its ``fail`` callback builds from a one-line problem
(the matrix loader's is a :class:`~auditor.matrix.nodes.MatrixError` naming file, line and key) and quotes at
most 40 characters of the offending text; it never converts a number longer than five digits. Matching
never raises.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from auditor.model import ICMP_PROTOCOLS, Protocol

_PROTOCOLS: Final = {"TCP": Protocol.TCP, "UDP": Protocol.UDP, "SCTP": Protocol.SCTP}
_ICMP_SPELLINGS: Final[dict[str, tuple[str, ...]]] = {
    "ICMP": (Protocol.ICMPV4, Protocol.ICMPV6),
    "ICMPV4": (Protocol.ICMPV4,),
    "ICMPV6": (Protocol.ICMPV6,),
}
_PORT_RE: Final = re.compile(r"^(?P<lo>[0-9]+)(?:-(?P<hi>[0-9]+))?(?:/(?P<proto>[A-Za-z0-9]+))?$")


@dataclass(frozen=True, slots=True)
class PortRange:
    """Protocols and an inclusive port range; ``protocols`` empty means any protocol, any port."""

    protocols: frozenset[str]
    lo: int = 0
    hi: int = 65535

    def matches(self, protocol: str, port: int) -> bool:
        if not self.protocols:
            return True
        if protocol not in self.protocols:
            return False
        return protocol in ICMP_PROTOCOLS or self.lo <= port <= self.hi

    def __str__(self) -> str:
        if not self.protocols:
            return "any"
        protos = "/".join(sorted(self.protocols))
        if self.protocols <= ICMP_PROTOCOLS:
            return "ICMP" if len(self.protocols) == 2 else protos
        ports = str(self.lo) if self.lo == self.hi else f"{self.lo}-{self.hi}"
        return f"{ports}/{protos}"


def parse_port(text: str, fail: Callable[[str], Exception]) -> PortRange:
    """Parse one port spec of DESIGN §4; ``fail(problem)`` builds the exception to raise."""
    spec = text.strip()
    if spec.lower() == "any":
        return PortRange(frozenset())
    if spec.upper() in _ICMP_SPELLINGS:
        return PortRange(frozenset(_ICMP_SPELLINGS[spec.upper()]))
    m = _PORT_RE.match(spec)
    if not m:
        raise fail(
            f'invalid port {_clip(text)} (expected 8080, "53/UDP", "30000-32767/TCP", "ICMP" or "any")'
        )
    proto_text = (m.group("proto") or "TCP").upper()
    if proto_text not in _PROTOCOLS:
        raise fail(
            f"unknown protocol {_clip(m.group('proto'))} in {_clip(text)} "
            "(expected TCP, UDP or SCTP; ICMP takes no port)"
        )
    lo_text, hi_text = m.group("lo"), m.group("hi") or m.group("lo")
    if len(lo_text) > 5 or len(hi_text) > 5:  # also keeps int() away from 5,000-digit numbers
        raise fail(f"port out of range in {_clip(text)} (1-65535)")
    lo, hi = int(lo_text), int(hi_text)
    if not (1 <= lo <= 65535 and 1 <= hi <= 65535):
        raise fail(f"port out of range in {_clip(text)} (1-65535)")
    if hi < lo:
        raise fail(f"empty port range {_clip(text)}")
    return PortRange(frozenset({_PROTOCOLS[proto_text]}), lo, hi)


def _clip(text: str) -> str:
    return repr(text) if len(text) <= 40 else repr(text[:37] + "...")
