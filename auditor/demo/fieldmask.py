"""``GetFlowsRequest.field_mask`` applied the way Hubble applies it, for the embedded demo server.

Stage: none of the pipeline's — the output side of the demo server (:mod:`auditor.demo.service`), which
stands in for Hubble. Input: the request's ``google.protobuf.FieldMask`` and stored ``GetFlowsResponse``
bytes. Output: the bytes to send.

Hubble's behaviour (Cilium's observer ``GetFlows`` and its ``fieldmask`` package, v1.15 and later), which
this module reproduces:

- The paths name fields of ``flow.Flow`` (``"source.identity"``, ``"l4"``, ``"Type"``); a mask with a path
  that is not a field (or goes through a repeated or scalar field) fails the whole call. Hubble returns a
  plain error, which gRPC sends as status ``UNKNOWN`` with the message ``invalid fieldmask``.
- A mask without paths (or no mask) sends whole flows.
- Filters and ``since``/``until`` see the whole flow; only the flow that passed is masked.
- A path naming a whole field copies it as it is (a message field with everything in it, presence kept);
  a path into a message (``"IP.source"``) copies only the named sub-fields, and the message holding them is
  always present in the output, empty when the flow had none (Hubble allocates it once per call).
- The response's envelope ``time`` and ``node_name`` are taken from the *masked* flow: a mask without
  ``time`` or ``node_name`` leaves the envelope without them too.
- ``lost_events`` and ``node_status`` responses are never masked.

One departure, on purpose: Hubble also pre-allocates messages named inside a ``oneof`` (``"l4.TCP.…"``),
which selects a protocol case at random (Go map order); this module leaves ``oneof`` members alone, so such a
path copies the case the flow has. The auditor masks ``l4`` as a whole and never depends on it.

Error policy: :meth:`FlowMask.from_request` raises :class:`InvalidFieldMask` (the server turns it into the
failed call); applying a valid mask to a stored response never raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from google.protobuf import field_mask_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from auditor._proto.flow import flow_pb2
from auditor._proto.observer import observer_pb2

INVALID_MESSAGE: Final = "invalid fieldmask"  # Hubble's words


class InvalidFieldMask(ValueError):
    """A mask with a path that is not a field of ``flow.Flow``."""


def _containers(paths: Sequence[str], descriptor: Descriptor) -> list[tuple[str, ...]]:
    """Paths (as name tuples) of the messages Hubble allocates: every proper prefix of a path that is a
    singular message field outside a ``oneof``, parents before children."""
    out: set[tuple[str, ...]] = set()
    for path in paths:
        names = path.split(".")
        desc = descriptor
        for depth, name in enumerate(names[:-1], 1):
            fd: FieldDescriptor = desc.fields_by_name[name]
            if fd.containing_oneof is not None:
                break
            out.add(tuple(names[:depth]))
            assert fd.message_type is not None  # IsValidForDescriptor: only messages have sub-paths
            desc = fd.message_type
    return sorted(out, key=len)


class FlowMask:
    """A validated, normalized mask over ``flow.Flow`` (see the module docstring)."""

    def __init__(self, mask: field_mask_pb2.FieldMask) -> None:
        if not mask.IsValidForDescriptor(flow_pb2.Flow.DESCRIPTOR):
            raise InvalidFieldMask(INVALID_MESSAGE)
        self.mask = field_mask_pb2.FieldMask()
        self.mask.CanonicalFormFromMask(mask)  # sorted, duplicates and covered paths removed
        self.paths: tuple[str, ...] = tuple(self.mask.paths)
        self._containers = _containers(self.paths, flow_pb2.Flow.DESCRIPTOR)

    @classmethod
    def from_request(cls, request: observer_pb2.GetFlowsRequest) -> FlowMask | None:
        """The request's mask, ``None`` when it has no paths (whole flows). Raises InvalidFieldMask."""
        if not request.HasField("field_mask") or not request.field_mask.paths:
            return None
        return cls(request.field_mask)

    def flow(self, flow: flow_pb2.Flow) -> flow_pb2.Flow:
        """A new flow with only the masked fields of ``flow``."""
        out = flow_pb2.Flow()
        self.mask.MergeMessage(flow, out)
        for names in self._containers:
            message = out
            for name in names:
                message = getattr(message, name)
            message.SetInParent()
        return out

    def response(self, data: bytes) -> bytes:
        """Stored ``GetFlowsResponse`` bytes as Hubble sends them under this mask (flows only)."""
        response = observer_pb2.GetFlowsResponse.FromString(data)
        if response.WhichOneof("response_types") != "flow":
            return data
        flow = self.flow(response.flow)
        out = observer_pb2.GetFlowsResponse(node_name=flow.node_name)
        if flow.HasField("time"):
            out.time.CopyFrom(flow.time)
        out.flow.CopyFrom(flow)
        return out.SerializeToString()


__all__ = ["INVALID_MESSAGE", "FlowMask", "InvalidFieldMask"]
