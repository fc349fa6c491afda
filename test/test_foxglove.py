"""Live view without RViz: the Foxglove WebSocket server advertises our channels and runs from the CLI."""
import base64
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("foxglove")
from kltrace_ros.io.foxglove import FoxgloveView  # noqa: E402


def test_view_accepts_a_foxglove_client_and_advertises_channels():
    view = FoxgloveView(port=0)
    try:
        s = socket.create_connection(("127.0.0.1", view.port), timeout=5)
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall((f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{view.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                   f"Sec-WebSocket-Protocol: foxglove.sdk.v1, foxglove.websocket.v1\r\n\r\n").encode())
        data = b""
        end = time.monotonic() + 5
        while b"/kltrace/overlay" not in data and time.monotonic() < end:
            view.show("overlay", np.zeros((8, 10, 3), np.uint8))
            try:
                data += s.recv(65536)
            except socket.timeout:
                pass
        assert data.split(b"\r\n")[0].split()[1] == b"101", data[:200]
        assert b"/kltrace/overlay" in data and b"/kltrace/heatmap" in data
        s.close()
    finally:
        view.close()


def test_video_command_serves_foxglove(tmp_path):
    import cv2
    from skimage import data

    frames = tmp_path / "frames"
    frames.mkdir()
    img = cv2.resize(data.astronaut(), (160, 120))
    for i in range(3):
        cv2.imwrite(str(frames / f"{i:03d}.png"), np.roll(img, 2 * i, axis=1))
    proc = subprocess.run([sys.executable, "-m", "kltrace_ros.cli", "video", str(frames), "--out",
                           str(tmp_path / "o.mp4"), "--tracks", str(tmp_path / "t.json"), "--points", "8",
                           "--masks", "1", "--foxglove", "0"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Foxglove live view: open ws://127.0.0.1:" in proc.stdout
    assert (tmp_path / "o.mp4").stat().st_size > 0
    records = json.loads((tmp_path / "t.json").read_text())
    assert [r["frame"] for r in records] == [1, 2]
    for r in records:  # every frame moves the content 2 px right
        assert abs(np.median([t["vx"] for t in r["tracks"] if t["visible"]]) - 2.0) < 0.5, r
