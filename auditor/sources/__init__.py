"""Flow sources: the live Hubble stream (:mod:`.hubble`, receiving in :mod:`.receiver` when asked) and
the resume state it keeps (:mod:`.resume`). Only constants the command line needs live here: importing
this package loads neither gRPC nor protobuf."""

from typing import Final

RECEIVERS: Final = ("thread", "process")
"""Where the GetFlows call is received (``HubbleConfig.receiver``): the stream thread, or a process."""
