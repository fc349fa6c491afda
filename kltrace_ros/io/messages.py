"""A traced pair -> our messages (TrackArray, FlowArray), for rclpy and for rosbags alike.

The node and ``kltrace bag`` publish the same content; only the message classes differ. A
``MessageTypes`` names the classes of one library (and how it wants primitive arrays); both
libraries accept every field as a keyword argument.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np


@dataclass(frozen=True)
class MessageTypes:
    Track: Any
    TrackArray: Any
    FlowArray: Any
    Point32: Any
    Vector3: Any
    Time: Any
    bools: Callable = list          # bool[] field from a sequence (rosbags wants numpy arrays)
    floats: Callable = list         # float32[] field


def stamp_ns(t) -> int:
    """Nanoseconds of a builtin_interfaces/Time (rclpy or rosbags)."""
    return int(t.sec) * 1_000_000_000 + int(t.nanosec)


def stamp_msg(types: MessageTypes, ns: int):
    sec, nanosec = divmod(int(ns), 10**9)
    return types.Time(sec=sec, nanosec=nanosec)


def pair_messages(types: MessageTypes, header, result) -> tuple:
    """(TrackArray, FlowArray) of a ``tracking.pipeline.PairResult``, stamped with ``header`` (the newer
    frame's) and ``previous_stamp`` = the older frame's stamp."""
    prev = stamp_msg(types, result.older_stamp_ns)
    tracks = types.TrackArray(header=header, previous_stamp=prev, tracks=[
        types.Track(id=t.id, x=float(t.x), y=float(t.y), vx=float(t.vx), vy=float(t.vy), visible=bool(t.visible),
                    confidence=float(t.confidence), age=int(t.age), born=stamp_msg(types, t.born_stamp_ns))
        for t in result.tracks])
    starts, ends = np.asarray(result.starts).reshape(-1, 2), np.asarray(result.ends).reshape(-1, 2)
    flow = types.FlowArray(
        header=header, previous_stamp=prev,
        points=[types.Point32(x=float(a[0]), y=float(a[1]), z=0.0) for a in starts],
        displacements=[types.Vector3(x=float(b[0] - a[0]), y=float(b[1] - a[1]), z=0.0) for a, b in zip(starts, ends)],
        visible=types.bools([bool(v) for v in result.visible]),
        confidence=types.floats([float(c) for c in result.confidence]))
    return tracks, flow
