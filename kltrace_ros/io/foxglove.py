"""Live view in Foxglove without RViz: a Foxglove WebSocket server (``foxglove-sdk``) that shows
the track overlay and the KL heatmap. Open Foxglove, "Open connection", ws://HOST:PORT.

Imported only when a live view is asked for (``--foxglove``, ``foxglove_port``)."""
from __future__ import annotations

import time

import numpy as np

try:
    import foxglove
    from foxglove.channels import RawImageChannel
    from foxglove.messages import RawImage, Timestamp
except ImportError as err:  # a source checkout without `make setup`
    raise ImportError("the foxglove-sdk package is missing: run `make setup` (or pip install foxglove-sdk)") from err


class FoxgloveView:
    def __init__(self, port: int = 8765, host: str = "127.0.0.1"):
        self.server = foxglove.start_server(name="kltrace", host=host, port=port)
        self.port = self.server.port
        self.channels = {name: RawImageChannel(topic=f"/kltrace/{name}") for name in ("overlay", "heatmap")}

    def show(self, name: str, rgb: np.ndarray, frame_id: str = "camera", stamp_ns: int | None = None) -> None:
        ns = stamp_ns if stamp_ns is not None else time.time_ns()
        img = np.ascontiguousarray(rgb, dtype=np.uint8)
        self.channels[name].log(RawImage(timestamp=Timestamp(sec=ns // 10**9, nsec=ns % 10**9), frame_id=frame_id,
                                         width=img.shape[1], height=img.shape[0], encoding="rgb8",
                                         step=img.shape[1] * 3, data=img.tobytes()))

    def close(self) -> None:
        self.server.stop()
