"""Keypoint lifecycle: seeding, ids, occlusion timeout, leaving the image, re-seeding."""
import numpy as np
import pytest

from kltrace_ros.tracking.tracker import PointTracker, Track, TrackerConfig

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
    assert not occl.visible and np.allclose((occl.x, occl.y), (q[3, 0] + 2.0, q[3, 1] - 1.0))  # moved as the visible ones
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


def test_pipeline_stream_reset_rule_and_frame_gap():
    """push(): pairs at least frame_gap apart, resets (with a reason) on a time jump or a size change."""
    cv2 = pytest.importorskip("cv2")
    from kltrace_ros.models.analytic import AnalyticShiftPredictor
    from kltrace_ros.tracing.engine import Engine, TraceConfig
    from kltrace_ros.tracking.pipeline import TrackingPipeline

    img = cv2.resize(skdata.astronaut(), (320, 240), interpolation=cv2.INTER_AREA)

    def frame(dx):
        return cv2.warpAffine(img, np.float32([[1, 0, dx], [0, 1, 0]]), (320, 240), borderMode=cv2.BORDER_REFLECT)

    reasons = []
    pipe = TrackingPipeline(Engine(AnalyticShiftPredictor(), TraceConfig(masks=1, scales=2)),
                            TrackerConfig(num_points=9), frame_gap=2, on_reset=reasons.append)
    assert pipe.push(frame(0), 0, 0) is None                      # first frame: nothing to trace yet
    assert pipe.push(frame(3), 100, 1) is None                    # closer than frame_gap
    res = pipe.push(frame(6), 200, 2)
    assert (res.older_stamp_ns, res.newer_stamp_ns) == (0, 200)
    assert res.frames == 2
    assert np.median([t.vx for t in res.tracks]) == pytest.approx(3.0, abs=0.25)  # px per frame (6 px in 2 frames)
    assert np.median(res.ends[:, 0] - res.starts[:, 0]) == pytest.approx(6.0, abs=0.5)   # per pair
    ids = {t.id for t in res.tracks}
    assert pipe.push(frame(9), 150, 4) is None and reasons[-1].kind == "time" and "time jumped back" in str(reasons[-1])
    res = pipe.push(frame(12), 450, 6)
    assert res is not None and not ids & {t.id for t in res.tracks}
    assert pipe.push(cv2.resize(frame(12), (160, 120)), 600, 8) is None
    assert str(reasons[-1]) == "image size changed 320x240 -> 160x120: tracks reset" and len(reasons) == 2


def test_motion_prior_from_own_velocity_or_neighbours():
    tr = PointTracker(TrackerConfig(num_points=4))
    assert tr.predictions(3) is None                            # no history: no prior
    tr.tracks = [Track(1, 10.0, 10.0, vx=2.0, vy=-1.0, age=2), Track(2, 50.0, 20.0, vx=4.0, vy=1.0, age=5),
                 Track(3, 30.0, 30.0, vx=0.0, vy=0.0, age=3, visible=False), Track(4, 70.0, 5.0)]
    p = tr.predictions(3)
    assert np.allclose(p[0], [16, 7]) and np.allclose(p[1], [62, 23])      # own velocity x frames
    assert np.allclose(p[2], [39, 30]) and np.allclose(p[3], [79, 5])      # median of those seen moving


def test_pipeline_prior_follows_motion_beyond_reach_when_frames_are_skipped():
    """8 px per frame: consecutive pairs are within reach, and their velocity carries the tracks across a pair
    three frames apart (24 px, out of reach from the query alone)."""
    cv2 = pytest.importorskip("cv2")
    from kltrace_ros.tracking.builder import Options, build_pipeline

    img = cv2.resize(skdata.astronaut(), (400, 300), interpolation=cv2.INTER_AREA)

    def frame(i):
        return cv2.warpAffine(img, np.float32([[1, 0, 8 * i - 60], [0, 1, 0]]), (256, 192),
                              borderMode=cv2.BORDER_REFLECT)

    pipe = build_pipeline(Options(num_points=16, fb_threshold=0.0, motion_prior=True))
    for i in range(3):
        pipe.push(frame(i), i * 10**8, i)
    res = pipe.push(frame(5), 5 * 10**8, 5)                     # three frames later
    assert res.frames == 3
    moved = (res.ends - res.starts)[res.visible]
    assert len(moved) >= 8 and np.abs(np.median(moved[:, 0]) - 24) < 1.5, moved
    assert np.abs(np.median([t.vx for t in res.tracks if t.visible]) - 8) < 0.5


def test_tracks_remember_their_seed_frame_and_losses_and_reseeds_are_counted():
    """A camera that pans 40 px per pair to the right: points leave the view on the left, new ids are seeded
    on the frame where they appear, and the counts say how many were lost and re-seeded; messages and JSON
    records carry the seed stamp."""
    cv2 = pytest.importorskip("cv2")
    from kltrace_ros.io.messages import MessageTypes, pair_messages
    from kltrace_ros.models.analytic import AnalyticShiftPredictor
    from kltrace_ros.tracing.engine import Engine, TraceConfig
    from kltrace_ros.tracking.pipeline import TrackingPipeline
    from kltrace_ros.tracking.tracker import track_record

    canvas = cv2.resize(skdata.astronaut(), (640, 240), interpolation=cv2.INTER_AREA)
    pipe = TrackingPipeline(Engine(AnalyticShiftPredictor(), TraceConfig(masks=1, scales=2, fb_threshold=0)),
                            TrackerConfig(num_points=16))
    born = {}
    results = []
    for i in range(6):
        res = pipe.push(np.ascontiguousarray(canvas[:, 40 * i:40 * i + 320]), 1000 * i, i)
        if res is None:
            continue
        results.append(res)
        for t in res.tracks:
            assert born.setdefault(t.id, (t.born_frame, t.born_stamp_ns)) == (t.born_frame, t.born_stamp_ns)
    c = pipe.tracker.counts
    first = [tid for tid, (f, _) in born.items() if f == 0]
    assert 0 < len(first) <= 16 < c.seeded and len(born) <= c.seeded and len(born) > len(first)
    assert c.lost_out_of_view > 0 and c.reseeded == c.seeded - 16
    assert c.lost == c.lost_out_of_view + c.lost_occluded + c.lost_reset
    # every re-seeded track was born on the older image of the pair that seeded it (index and stamp agree)
    assert all(s == 1000 * f and f > 0 for tid, (f, s) in born.items() if tid not in first)
    assert c.seeded - c.lost == len(pipe.tracker.tracks)
    # the outputs say it too
    from types import SimpleNamespace as NS
    types = MessageTypes(Track=NS, TrackArray=NS, FlowArray=NS, Point32=NS, Vector3=NS, Time=NS)
    tracks, _ = pair_messages(types, NS(stamp=None), results[-1])
    assert [(m.born.sec * 10**9 + m.born.nanosec) for m in tracks.tracks] == [t.born_stamp_ns for t in results[-1].tracks]
    rec = track_record(results[-1].tracks[-1])
    assert rec["born_frame"] == results[-1].tracks[-1].born_frame and "born_stamp_ns" in rec
    pipe.reset()
    assert pipe.tracker.counts.lost_reset == len(results[-1].tracks)


def test_anchor_budget_keeps_the_groups_that_hold_most_tracks():
    """Over budget, the smallest anchor groups move (to the newest frame), never the first seeding's large one."""
    from kltrace_ros.tracking.pipeline import anchors_to_keep

    frames = [0] * 20 + [5, 5, 5] + list(range(6, 20))          # 16 groups: frame 0 holds most tracks
    assert anchors_to_keep(frames, 16) is None
    keep = anchors_to_keep(frames, 15)
    assert len(keep) == 14 and {0, 5} <= keep and 19 not in keep and 6 in keep   # of equal groups the oldest stay


def test_tracks_that_leave_the_view_are_kept_when_asked_and_leave_room_for_new_ones():
    """max_out_of_view_frames (anchored tracking): a track that leaves the image moves on with the visible ones,
    reported not visible, until that timeout, and then counts as lost out of view; meanwhile it does not count
    towards num_points (new points are seeded in view). With 0 it is dropped at once."""
    for keep in (0, 2):
        tr = PointTracker(TrackerConfig(num_points=3, max_occluded_frames=0, max_out_of_view_frames=keep))
        tr.tracks = [Track(0, 150.0, 60.0), Track(1, 50.0, 60.0), Track(2, 80.0, 60.0)]
        tr.next_id, tr.started = 3, True
        for k in range(2):
            pts = tr.query_points() + [10.0, 0.0]
            tr.update(pts, [t.id != 0 for t in tr.tracks], np.ones(len(pts)), (120, 160))
            if k == 0:
                ids = [t.id for t in tr.tracks]
                assert ids == ([0, 1, 2] if keep else [1, 2]), (keep, ids)
        if keep:
            gone = next(t for t in tr.tracks if t.id == 0)
            assert not gone.visible and (gone.x, gone.vx) == (170.0, 10.0)   # moved with the others, out of view
        tr.seed(np.zeros((120, 160, 3), np.uint8))                           # room for one in view
        assert len(tr.tracks) == 3 + (keep > 0) and tr.counts.reseeded == 1
        tr.update(tr.query_points() + [10.0, 0.0], [t.id != 0 for t in tr.tracks], np.ones(len(tr.tracks)),
                  (120, 160))
        assert 0 not in [t.id for t in tr.tracks] and tr.counts.lost_out_of_view == 1
        assert tr.counts.lost_occluded == 0


def test_tracks_back_in_view_never_make_more_than_num_points_in_view():
    """A track kept out of view while a new one was seeded in its place comes back (the view jumped back): the view
    would hold num_points + 1; the youngest in view goes first (those not seen before any seen), counted."""
    tr = PointTracker(TrackerConfig(num_points=3, max_out_of_view_frames=5))
    tr.tracks = [Track(0, 170.0, 60.0, age=9), Track(1, 50.0, 60.0, age=9), Track(2, 80.0, 60.0, age=9),
                 Track(3, 100.0, 60.0, age=1)]
    tr.tracks[0].out_of_view_for, tr.tracks[0].visible = 2, False
    tr.next_id, tr.started = 4, True
    back = tr.query_points() - [20.0, 0.0]                 # the view jumps back: track 0 is in view again
    kept = tr.update(back, [True, True, True, True], np.ones(4), (120, 160))
    assert sorted(t.id for t in kept) == [0, 1, 2] and tr.counts.lost_crowded == 1 and tr.counts.lost == 1
    tr = PointTracker(TrackerConfig(num_points=2))
    tr.tracks = [Track(0, 10.0, 10.0, age=1), Track(1, 20.0, 10.0, age=7), Track(2, 30.0, 10.0, age=3)]
    tr.next_id, tr.started = 3, True
    kept = tr.update(tr.query_points(), [True, False, True], np.ones(3), (120, 160))
    assert sorted(t.id for t in kept) == [0, 2]            # the old one not seen went before the young one seen


def test_a_track_not_seen_follows_a_camera_that_rolls_and_zooms():
    """The tracks seen fit a similarity (here a 6 degree roll and 5% zoom about the image centre, plus a shift):
    a track not seen moves with it, not with their median shift (which would leave it about 10 px off)."""
    rng = np.random.default_rng(0)
    pts = rng.uniform([20, 20], [300, 220], (12, 2))
    a, z = np.deg2rad(6), 1.05
    rot = z * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    moved = (pts - [160, 120]) @ rot.T + [160, 120] + [3.0, -2.0]
    tr = PointTracker(TrackerConfig(num_points=12))
    tr.tracks = [Track(i, *p) for i, p in enumerate(pts)]
    far = int(np.argmax(np.linalg.norm(pts - [160, 120], axis=1)))
    vis = np.arange(12) != far
    moved_seen = moved.copy()
    moved_seen[far] = pts[far]                       # what the tracer said about it does not matter
    tr.update(moved_seen, vis, np.ones(12), (240, 320))
    t = next(t for t in tr.tracks if t.id == far)
    assert not t.visible and np.linalg.norm([t.x - moved[far, 0], t.y - moved[far, 1]]) < 0.1
    median_guess = pts[far] + np.median(moved[vis] - pts[vis], axis=0)
    assert np.linalg.norm(median_guess - moved[far]) > 5


def test_anchored_tracks_stay_visible_when_the_whole_view_jumps():
    """A camera that pans 3 px a frame and then moves 30 px in one frame (a bump): every point lands far from where
    its own motion put it, but they all moved as the camera did, so it is not a jump to a look-alike: the tracks
    stay visible, on their points (a jump test on each track's own motion alone flags all of them)."""
    cv2 = pytest.importorskip("cv2")
    from kltrace_ros.tracking.builder import Options, build_pipeline

    img = cv2.resize(skdata.astronaut(), (400, 300), interpolation=cv2.INTER_AREA)
    shift = [3 * i for i in range(6)] + [45 + 3 * i for i in range(3)]     # a 30 px bump between frames 5 and 6

    def frame(i):
        return cv2.warpAffine(img, np.float32([[1, 0, shift[i] - 70], [0, 1, -50]]), (256, 192),
                              borderMode=cv2.BORDER_REFLECT)

    pipe = build_pipeline(Options(num_points=24, tracking="anchored"))
    for i in range(len(shift)):
        res = pipe.push(frame(i), i * 10**8, i)
        if i == 6:                                      # the pair across the bump
            inside = (res.starts[:, 0] + 30 < 250) & (res.starts[:, 0] + 30 > 6)
            found = res.visible & inside
            assert found.sum() >= 0.7 * inside.sum(), (found.sum(), inside.sum())
            err = np.abs((res.ends - res.starts)[found] - [30, 0]).max(1)
            assert np.median(err) < 1.5, err
    assert sum(t.visible for t in res.tracks) >= 12


def test_chained_answer_rule():
    """The re-anchoring rule, alone: the first ANCHOR_PATIENCE - 1 misses are bridged whatever the point looks like;
    from then on the chained answer is taken (and the track re-anchored) only if the point looks different."""
    from kltrace_ros.tracking.pipeline import ANCHOR_PATIENCE, REANCHOR_LIKENESS, chained_answer_rule

    for misses in range(ANCHOR_PATIENCE):
        for likeness in (0.5, 0.99):
            assert chained_answer_rule(misses, likeness) == (True, False), (misses, likeness)
    for misses in (ANCHOR_PATIENCE, ANCHOR_PATIENCE + 5):
        assert chained_answer_rule(misses, REANCHOR_LIKENESS + 0.05) == (False, False)
        assert chained_answer_rule(misses, REANCHOR_LIKENESS - 0.05) == (True, True)


def test_jump_test():
    """A point found far from where its own motion puts it is a jump, unless the camera's motion puts it there (a
    bump); the allowance grows with the track's extrapolated motion."""
    from kltrace_ros.tracking.pipeline import CAMERA_TOLERANCE, MAX_JUMP, JumpTest

    here = np.array([[100.0, 100.0], [50.0, 50.0]])
    motion = np.array([[10.0, 0.0], [0.0, 0.0]])
    jump = JumpTest.for_pair(here, here + motion, motion, 256, (256, 256))
    assert np.allclose(jump.limit, [MAX_JUMP + 5.0, MAX_JUMP])
    still = lambda p: np.asarray(p, float)                              # noqa: E731  the camera did not move
    bump = lambda p: np.asarray(p, float) + [30.0, 0.0]                 # noqa: E731  everything moved 30 px
    assert not jump(np.array([[110.0, 100.0], [50.0, 50.0]]), still).any()        # where their motion puts them
    assert jump(np.array([[130.0, 100.0], [70.0, 50.0]]), still).all()            # 20 px off, camera still
    assert not jump(np.array([[130.0, 100.0], [80.0, 50.0]]), bump).any()         # off, but as the camera moved
    assert jump(np.array([[130.0 + 2 * CAMERA_TOLERANCE, 100.0]]), bump, [0]).all()
    half = JumpTest.for_pair(here, here, np.zeros((2, 2)), 256, (512, 512))      # image px at twice the working size
    assert not half(np.array([[100.0 + 2 * MAX_JUMP - 1, 100.0]]), still, [0]).any()


class _ScriptedEngine:
    """The engine's interface with scripted answers, to pin the anchored rules down pair by pair: the point moves
    1 px a frame; from frame ``anchor_lost_at`` on its anchor never finds it, the chained trace always does, and
    the point found looks like the anchor's point as much as ``likeness`` says."""

    def __init__(self, likeness: float, anchor_lost_at: int = 3):
        from types import SimpleNamespace

        from kltrace_ros.tracing.engine import TraceConfig
        self.p, self.cfg = SimpleNamespace(image_size=256), TraceConfig()
        self.likeness, self.anchor_lost_at = likeness, anchor_lost_at

    def track(self, frame1, frame2, queries, config=None, cancel=None, prior=None, source=None, retry_from=None):
        from kltrace_ros.tracing.engine import TraceResult
        t = int(frame2[0, 0, 0])                       # frame i is filled with i
        n = len(queries)
        truth = np.tile([10.0 + t, 10.0], (n, 1))
        found = source is None or t < self.anchor_lost_at    # source: an anchored call
        return TraceResult(truth, np.full(n, found), np.ones(n))

    def appearance(self, frame_a, points_a, frame_b, points_b, source=None):
        return np.full(len(points_a), self.likeness)


@pytest.mark.parametrize("likeness", [0.95, 0.8])
def test_re_anchoring_rule(likeness):
    """The anchor misses the point from frame 3 on. The chained answer bridges the first ANCHOR_PATIENCE - 1 misses.
    Then, if the point still looks like the anchor's (0.95), the anchor should still match: the chained answer
    (whose errors add up) is not taken and the track is occluded, its anchor kept; if it looks different (0.8, the
    view changed), the track takes the chained answer and the previous frame becomes its anchor."""
    from kltrace_ros.tracking.pipeline import ANCHOR_PATIENCE, REANCHOR_LIKENESS, TrackingPipeline

    assert 0.8 < REANCHOR_LIKENESS < 0.95
    pipe = TrackingPipeline(_ScriptedEngine(likeness), TrackerConfig(num_points=1, source="topic"), mode="anchored")
    pipe.tracker.set_external_queries([[10.0, 10.0]], (32, 32))
    seen, anchors = [], []
    for i in range(3 + ANCHOR_PATIENCE + 2):
        res = pipe.push(np.full((32, 32, 3), i, np.uint8), i * 10**8, i)
        if res is not None:
            seen.append(res.tracks[0].visible)
            anchors.append(res.tracks[0].anchor_frame)
    bridged = 2 + ANCHOR_PATIENCE - 1       # pairs seen: 2 found by the anchor, then the misses bridged
    assert all(seen[:bridged]) and anchors[bridged - 1] == 0, (seen, anchors)
    if likeness > REANCHOR_LIKENESS:
        assert not any(seen[bridged:]) and set(anchors) == {0}, (seen, anchors)
    else:
        assert seen[bridged] and anchors[bridged] == bridged, (seen, anchors)      # frame ``bridged``: the older
