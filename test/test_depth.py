"""Tracks in 3D from an aligned depth image and camera_info (ROS-free core): depth read robustly, pixels
back-projected through the lens (distortion honoured), velocities from two frames; bad depth gives no 3D."""
import numpy as np
import pytest

from kltrace_ros.eval.rgbd import WALL_Z, rgbd_camera
from kltrace_ros.io.image_msgs import ImageError, depth_to_metres
from kltrace_ros.tracking.depth import (EDGE, HOLE, OK, OUTSIDE, CameraError, CameraModel, DepthError, DepthStream,
                                        depth_at, lift_tracks)
from kltrace_ros.tracking.pipeline import PairResult
from kltrace_ros.tracking.tracker import Track


def _model(cam):
    return CameraModel.from_info(cam.K.reshape(-1), cam.D, "plumb_bob", *cam.size)


def _depth_msg(depth, encoding="16UC1", big_endian=False):
    from types import SimpleNamespace

    dtype = {"16UC1": "u2", "32FC1": "f4"}[encoding]
    a = np.ascontiguousarray(depth.astype((">" if big_endian else "<") + dtype))
    return SimpleNamespace(height=a.shape[0], width=a.shape[1], encoding=encoding, is_bigendian=int(big_endian),
                           step=a.shape[1] * a.itemsize, data=a.tobytes())


def test_points_are_placed_in_3d_through_the_lens_as_the_truth():
    """Pixels all over a distorted image, at the rendered depth: positions equal the ray-cast truth (the
    lens model, the optical frame's axes and the millimetre units all enter)."""
    cam = rgbd_camera()
    _, depth_mm, _ = cam.render(0)
    depth = depth_to_metres(_depth_msg(depth_mm))
    rng = np.random.default_rng(0)
    px = rng.uniform([4, 4], [cam.size[0] - 5, cam.size[1] - 5], (400, 2))
    lift = lift_tracks(_model(cam), depth, px)
    pos, _, _ = cam.truth(0, px)
    ok = lift.has_position
    assert ok.mean() > 0.6                                      # most points: off the hole and the board's edge
    err = np.linalg.norm(lift.position[ok] - pos[ok], axis=1) / pos[ok, 2]
    assert np.median(err) < 0.005 and err.max() < 0.02, (np.median(err), err.max())
    # the lens matters: the same pixels without the distortion land centimetres off near the image corners
    flat = lift_tracks(CameraModel(cam.K, np.zeros(0), cam.size), depth, px)
    corner = ok & (np.abs(px - np.array(cam.size) / 2) > np.array(cam.size) * 0.35).all(1)
    assert corner.sum() >= 5
    off = np.linalg.norm(flat.position[corner] - pos[corner], axis=1) / pos[corner, 2]
    assert np.median(off) > 0.02
    # REP-103: x right, y down, z forward
    left_top = lift.position[ok & (px[:, 0] < 100) & (px[:, 1] < 80)]
    assert len(left_top) and (left_top[:, 0] < 0).all() and (left_top[:, 1] < 0).all() and (left_top[:, 2] > 0).all()


def test_velocities_from_two_frames_and_their_stamps():
    """Points of the moving board followed exactly (true pixels at both frames): velocity = the board's, in m/s."""
    cam = rgbd_camera()
    model = _model(cam)
    d0, d1 = (depth_to_metres(_depth_msg(cam.render(i)[1])) for i in (3, 4))
    # board points at frame 3, where they are at frame 4
    centre = cam.board_centre(3)
    pts3 = np.stack(np.meshgrid(np.linspace(-0.3, 0.3, 7), np.linspace(-0.2, 0.2, 5)), -1).reshape(-1, 2)
    world = np.concatenate([pts3 + centre[:2], np.full((len(pts3), 1), centre[2])], 1)
    import cv2

    def project(p):
        return cv2.projectPoints(p, np.zeros(3), np.zeros(3), cam.K, cam.D)[0].reshape(-1, 2)
    moved = world + cam.board_velocity / cam.rate
    lift = lift_tracks(model, d1, project(moved), d0, project(world), 1 / cam.rate)
    assert lift.has_velocity.all() and lift.has_position.all()
    err = np.linalg.norm(lift.velocity - cam.board_velocity, axis=1) / np.linalg.norm(cam.board_velocity)
    assert err.max() < 0.05, err.max()
    # the stamps' difference is what velocities divide by: twice the time, half the speed
    slow = lift_tracks(model, d1, project(moved), d0, project(world), 2 / cam.rate)
    assert np.allclose(slow.velocity, lift.velocity / 2)


def test_holes_and_depth_edges_give_no_3d_never_a_wrong_value():
    d = np.full((60, 80), 2.0, np.float32)
    d[:, 40:] = 4.0                      # a depth edge at column 40
    d[5:25, 5:25] = np.nan               # a hole (no return)
    d[40:50, 5:15] = 0.0                 # zeros are unknown too (16UC1 drivers)
    pts = np.array([[15, 15], [10, 45], [39.6, 30], [41, 30], [30, 30], [60, 30], [-3, 5], [np.nan, 4]])
    z, status = depth_at(d, pts)
    assert list(status) == [HOLE, HOLE, EDGE, EDGE, OK, OK, OUTSIDE, OUTSIDE]
    assert z[4] == 2.0 and z[5] == 4.0 and np.isnan(z[[0, 1, 2, 3, 6, 7]]).all()
    # a sloped surface (a floor seen from above) is not an edge: its depth changes smoothly
    slope = np.tile(np.linspace(1.0, 2.0, 60, dtype=np.float32)[:, None], (1, 80))
    assert (depth_at(slope, np.array([[40.0, 30.0]]))[1] == OK).all()
    # a few bad values beside good ones: the median of the good ones
    speckle = np.full((20, 20), 1.5, np.float32)
    speckle[10, 9:11] = np.nan
    z, status = depth_at(speckle, np.array([[10.0, 10.0]]))
    assert status[0] == OK and z[0] == pytest.approx(1.5)


def test_depth_encodings_and_bad_depth():
    mm = np.array([[1000, 0], [2500, 65535]], np.uint16)
    assert np.allclose(depth_to_metres(_depth_msg(mm)), [[1.0, np.nan], [2.5, 65.535]], equal_nan=True)
    assert np.allclose(depth_to_metres(_depth_msg(mm, big_endian=True)), [[1.0, np.nan], [2.5, 65.535]],
                       equal_nan=True)
    m = np.array([[1.25, np.inf], [-1.0, np.nan]], np.float32)
    assert np.allclose(depth_to_metres(_depth_msg(m, "32FC1")), [[1.25, np.nan], [np.nan, np.nan]], equal_nan=True)
    msg = _depth_msg(mm)
    msg.encoding = "mono8"
    with pytest.raises(ImageError, match="unsupported depth encoding 'mono8'.*16UC1.*32FC1"):
        depth_to_metres(msg)


@pytest.mark.parametrize("k,d,model,match", [
    ([0] * 9, [], "plumb_bob", "focal length fx=0.*calibrate"),
    ([500, 0, 320, 0, 500, 240, 0, 0, 1], [0.1, 0.2, 0, 0], "equidistant",
     "'equidistant' is not handled.*rectified:=true"),
    ([500, 0, 320, 0, 500], [], "plumb_bob", "k must be 9 finite numbers"),
])
def test_camera_info_that_cannot_place_points_is_named(k, d, model, match):
    with pytest.raises(CameraError, match=match):
        CameraModel.from_info(k, d, model, 640, 480)


def test_the_stream_matches_depth_by_stamp_and_checks_sizes():
    from types import SimpleNamespace

    cam = rgbd_camera()
    stream = DepthStream(tolerance_ns=10_000_000)
    t = Track(id=7, x=100.0, y=80.0, vx=2.0, vy=0.0, visible=True, born_stamp_ns=1_000_000_000)

    def pair(older, newer):
        return PairResult([t], np.zeros((1, 2)), np.zeros((1, 2)), np.ones(1, bool), np.ones(1), [], 0.0,
                          older_stamp_ns=older, newer_stamp_ns=newer, frames=1)
    with pytest.raises(CameraError, match="no camera_info received"):
        stream.lift(pair(1_000_000_000, 1_099_000_000), (240, 320))
    stream.use_camera_info(SimpleNamespace(k=cam.K.reshape(-1), d=cam.D, distortion_model="plumb_bob", width=320,
                                           height=240, p=None))
    depth = np.full((240, 320), 2.0, np.float32)
    stream.add(1_000_000_000, depth)
    stream.add(1_100_000_000, depth * 1.5)
    lift = stream.lift(pair(1_000_000_000, 1_099_000_000), (240, 320))   # the nearest depth, within 10 ms
    assert lift.has_position[0] and lift.position[0, 2] == pytest.approx(3.0)
    # seeded on the older frame: measured there, so a velocity (2 m -> 3 m in 99 ms)
    assert lift.has_velocity[0] and lift.velocity[0, 2] == pytest.approx(1.0 / 0.099, rel=1e-3)
    assert stream.lift(pair(1_099_000_000, 1_050_000_000), (240, 320)) is None      # 50 ms from any depth
    assert stream.unmatched == 1 and stream.nearest_ms == pytest.approx(50)
    # a track not seen on the older frame (its older position is a guess) gets a position, not a velocity
    t.born_stamp_ns = 0
    stream.add(1_200_000_000, depth)
    lift = stream.lift(pair(1_100_000_000, 1_200_000_000), (240, 320))
    assert lift.has_position[0] and not lift.has_velocity[0]
    # ... and once it was visible on the older frame, a velocity again (that frame's depth is the one kept)
    stream.add(1_300_000_000, depth)
    assert stream.lift(pair(1_200_000_000, 1_300_000_000), (240, 320)).has_velocity[0]
    t.visible = False                                         # a guessed position is never placed in 3D
    stream.add(1_400_000_000, depth)
    assert not stream.lift(pair(1_300_000_000, 1_400_000_000), (240, 320)).has_position[0]
    with pytest.raises(DepthError, match="depth image 320x240 does not match the colour image 640x480.*register"):
        stream.lift(pair(1_300_000_000, 1_400_000_000), (480, 640))


def test_rectified_images_use_the_projection_and_bad_coefficient_counts_are_named():
    k = [500, 0, 320, 0, 500, 240, 0, 0, 1]
    rect = CameraModel.from_info(k, [0.1, 0.2, 0, 0, 0], "plumb_bob", 640, 480,
                                 p=[480, 0, 330, 0, 0, 480, 250, 0, 0, 0, 1, 0])
    assert rect.D.size == 0 and rect.K[0, 0] == 480 and rect.K[1, 2] == 250
    with pytest.raises(CameraError, match="3 distortion coefficients for 'plumb_bob'"):
        CameraModel.from_info(k, [0.1, 0.2, 0.3], "plumb_bob", 640, 480)


def test_rational_polynomial_lenses_are_undone_too():
    """A wide lens in the rational polynomial model (8 coefficients, as camera_info of many RGB-D drivers): rays
    of projected points come back to the points' directions."""
    import cv2

    K = np.array([[380.0, 0, 322.0], [0, 381.0, 238.0], [0, 0, 1]])
    D = [0.35, -0.05, 0.0008, -0.0004, 0.01, 0.7, 0.02, 0.015]
    cam = CameraModel.from_info(K.reshape(-1), D, "rational_polynomial", 640, 480)
    pts = np.stack(np.meshgrid(np.linspace(-0.6, 0.6, 5), np.linspace(-0.45, 0.45, 4)), -1).reshape(-1, 2)
    world = np.concatenate([pts, np.ones((len(pts), 1))], 1) * 2.0
    px = cv2.projectPoints(world, np.zeros(3), np.zeros(3), K, np.array(D))[0].reshape(-1, 2)
    assert np.allclose(cam.rays(px) * 2.0, world, atol=2e-3)
    # the same pixels read without the lens are centimetres off at the corners
    assert np.abs(CameraModel(K, np.zeros(0), (640, 480)).rays(px) * 2.0 - world).max() > 0.05
