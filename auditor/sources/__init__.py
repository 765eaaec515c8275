"""Flow sources: recorded files (:mod:`.files`) and the live Hubble stream (:mod:`.hubble`, receiving in
:mod:`.receiver` when asked, its per-message loop in :mod:`.consume`, the resume state it keeps in
:mod:`.resume`). Only constants the command line needs live here: importing
this package loads neither gRPC nor protobuf."""

from typing import Final

RECEIVERS: Final = ("thread", "process")
"""Where the GetFlows call is received (``HubbleConfig.receiver``): the stream thread, or a process."""
