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
    Point: Any = None               # geometry_msgs/Point (tracks' 3D positions)
    PointCloud2: Any = None         # sensor_msgs/PointCloud2 and PointField (~/tracks_cloud)
    PointField: Any = None
    uint8s: Callable = bytes        # uint8[] field from a uint8 numpy array
    bools: Callable = list          # bool[] field from a sequence (rosbags wants numpy arrays)
    floats: Callable = list         # float32[] field


def stamp_ns(t) -> int:
    """Nanoseconds of a builtin_interfaces/Time (rclpy or rosbags)."""
    return int(t.sec) * 1_000_000_000 + int(t.nanosec)


def stamp_msg(types: MessageTypes, ns: int):
    sec, nanosec = divmod(int(ns), 10**9)
    return types.Time(sec=sec, nanosec=nanosec)


def pair_messages(types: MessageTypes, header, result, lift=None) -> tuple:
    """(TrackArray, FlowArray) of a ``tracking.pipeline.PairResult``, stamped with ``header`` (the newer
    frame's) and ``previous_stamp`` = the older frame's stamp; with ``lift`` (a ``tracking.depth.Lift`` of its
    tracks), the tracks' 3D fields."""
    prev = stamp_msg(types, result.older_stamp_ns)
    tracks = types.TrackArray(header=header, previous_stamp=prev, tracks=[
        types.Track(id=t.id, x=float(t.x), y=float(t.y), vx=float(t.vx), vy=float(t.vy), visible=bool(t.visible),
                    confidence=float(t.confidence), age=int(t.age), born=stamp_msg(types, t.born_stamp_ns),
                    **_track_3d(types, lift, i))
        for i, t in enumerate(result.tracks)])
    starts, ends = np.asarray(result.starts).reshape(-1, 2), np.asarray(result.ends).reshape(-1, 2)
    flow = types.FlowArray(
        header=header, previous_stamp=prev,
        points=[types.Point32(x=float(a[0]), y=float(a[1]), z=0.0) for a in starts],
        displacements=[types.Vector3(x=float(b[0] - a[0]), y=float(b[1] - a[1]), z=0.0) for a, b in zip(starts, ends)],
        visible=types.bools([bool(v) for v in result.visible]),
        confidence=types.floats([float(c) for c in result.confidence]))
    return tracks, flow


def _track_3d(types: MessageTypes, lift, i: int) -> dict:
    """The 3D fields of track ``i`` (without depth: zeros, has_position and has_velocity false)."""
    if types.Point is None:
        return {}
    has_p = lift is not None and bool(lift.has_position[i])
    has_v = lift is not None and bool(lift.has_velocity[i])
    p = lift.position[i] if has_p else (0.0, 0.0, 0.0)
    v = lift.velocity[i] if has_v else (0.0, 0.0, 0.0)
    return {"has_position": has_p, "position": types.Point(x=float(p[0]), y=float(p[1]), z=float(p[2])),
            "has_velocity": has_v, "velocity": types.Vector3(x=float(v[0]), y=float(v[1]), z=float(v[2]))}


CLOUD_FIELDS = ("x", "y", "z", "vx", "vy", "vz")   # float32, then id: uint32 (the track id modulo 2^32)


def cloud_arrays(result, lift) -> tuple[np.ndarray, int]:
    """The tracks with a 3D position as one packed sensor_msgs/PointCloud2 body: (bytes as uint8, points).
    Velocities are NaN where a track has none (RViz skips NaN only in x, y, z)."""
    keep = np.flatnonzero(lift.has_position) if lift is not None else np.zeros(0, int)
    rec = np.zeros(len(keep), dtype=[(f, "<f4") for f in CLOUD_FIELDS] + [("id", "<u4")])
    if len(keep):
        for j, f in enumerate(("x", "y", "z")):
            rec[f] = lift.position[keep, j]
        for j, f in enumerate(("vx", "vy", "vz")):
            rec[f] = np.where(lift.has_velocity[keep], lift.velocity[keep, j], np.nan)
        rec["id"] = [result.tracks[i].id % 2**32 for i in keep]
    return rec.view(np.uint8).reshape(-1), len(keep)


def cloud_message(types: MessageTypes, header, result, lift):
    """``~/tracks_cloud``: a sensor_msgs/PointCloud2 (x, y, z, vx, vy, vz float32; id uint32) of the tracks with
    3D, in the camera's optical frame (``header``'s frame)."""
    data, n = cloud_arrays(result, lift)
    F = types.PointField
    fields = [F(name=f, offset=4 * j, datatype=7, count=1) for j, f in enumerate(CLOUD_FIELDS)]     # 7: FLOAT32
    fields.append(F(name="id", offset=4 * len(CLOUD_FIELDS), datatype=6, count=1))                 # 6: UINT32
    step = 4 * (len(CLOUD_FIELDS) + 1)
    return types.PointCloud2(header=header, height=1, width=n, fields=fields, is_bigendian=False, point_step=step,
                             row_step=step * n, data=types.uint8s(data), is_dense=False)
