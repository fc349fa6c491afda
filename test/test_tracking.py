"""Keypoint lifecycle: seeding, ids, occlusion timeout, leaving the image, re-seeding."""
import numpy as np
import pytest

from kltrace_ros.tracking.tracker import PointTracker, TrackerConfig

skdata = pytest.importorskip("skimage.data")


def test_grid_seed_ids_and_lifecycle():
    img = np.zeros((120, 160, 3), np.uint8)
    tr = PointTracker(TrackerConfig(num_points=12, max_occluded_frames=1))
    tr.seed(img)
    assert len(tr.tracks) == 12 and [t.id for t in tr.tracks] == list(range(12))
    q = tr.query_points()
    assert (q[:, 0] >= 4).all() and (q[:, 0] <= 155).all()
    vis = np.ones(12, bool)
    vis[3] = False
    pts = q + [2.0, -1.0]
    pts[5] = [200.0, 50.0]  # leaves the image
    kept = tr.update(pts, vis, np.ones(12), (120, 160))
    ids = [t.id for t in kept]
    assert 5 not in ids and 3 in ids and len(kept) == 11
    t0 = kept[0]
    assert (t0.vx, t0.vy, t0.age, t0.visible) == (2.0, -1.0, 1, True)
    occl = next(t for t in kept if t.id == 3)
    assert not occl.visible and occl.x == q[3, 0]  # kept at its last position
    # second occluded frame exceeds max_occluded_frames=1: dropped
    q2 = tr.query_points()
    vis2 = np.array([t.id != 3 for t in tr.tracks])
    kept = tr.update(q2, vis2, np.ones(len(q2)), (120, 160))
    assert 3 not in [t.id for t in kept] and len(kept) == 10
    tr.seed(img)  # re-seed: back to 12 with fresh ids
    assert len(tr.tracks) == 12 and max(t.id for t in tr.tracks) >= 12


def test_features_and_topic_sources():
    img = skdata.astronaut()
    tr = PointTracker(TrackerConfig(num_points=20, source="features"))
    tr.seed(img)
    assert len(tr.tracks) == 20
    q = tr.query_points()
    d = np.linalg.norm(q[:, None] - q[None], axis=-1) + np.eye(20) * 1e9
    assert d.min() >= 8.0
    ext = PointTracker(TrackerConfig(num_points=5, source="topic"))
    ext.seed(img)
    assert ext.tracks == []
    ext.set_external_queries([[10, 20], [30, 40]])
    ext.seed(img)
    assert ext.query_points().tolist() == [[10, 20], [30, 40]]
    with pytest.raises(ValueError, match="keypoint source"):
        TrackerConfig(source="sift").validate()
