"""KL-tracing (and RGB perturb-and-track) for any predictor: tracer, maps, peaks, masks, zoom.

For each query point q in frame 1:
  for each scale (crop size first_crop * shrink**k at the working resolution):
    source window centred at q, target window centred at the current estimate e
    (whole frame while the crop is at least the frame);
    (the first scale searches no farther than ``reach`` from where it starts; a search from a prior, which skips
    the coarsest scale, searches only the central ``zoom_search`` of its first window, as refinement scales do);
    for each of ``masks`` random reveal masks (the estimate's neighbourhood kept hidden):
      D(patch) = KL(p_clean || p_traced) over the code vocabulary (or the RGB difference);
    average D over masks, take the argmax and refine it inside the 3x3 neighbourhood;
  the new e is that peak, mapped back; visible = peak D >= occlusion threshold, e inside frame 2,
  and (forward-backward check) e traced back into frame 1 lands within fb_threshold of q;
  then (``refine``, ``polish.py``) e is polished to sub-pixel by Lucas-Kanade started at e, kept only within
  ``refine_max`` of e and when LK's way back lands within ``refine_fb`` of q (visibility is not changed).
The clean pass of a (window, mask) is computed once and shared by every point that uses it (predictors with
``kl_maps`` take every mask of a scale in one call and share what they can across points and variants).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from . import polish
from .ops import add_tracer, appearance_match, central_region, centre_block, kl_map, refine_peak, reveal_mask
from .protocol import Predictor


@dataclass
class TraceConfig:
    method: str = "kl"                 # kl | rgb
    masks: int | None = None           # reveal masks averaged per scale (None: predictor default)
    scales: int | None = None          # number of zoom scales (None: predictor default)
    first_crop: int | None = None      # px at the working resolution (None: predictor default)
    shrink: float | None = None        # crop shrink per scale (None: predictor default)
    hide_radius: int = 1               # patches kept hidden around the estimate: a 2r+2 block (4x4 for r=1),
                                       # as the estimate sits on a patch corner at the window centre
    zoom_search: float = 0.5           # at refinement scales, search only this central fraction of the window
    reach: float | None = None         # at the first scale, search only within this many working px of where the
                                       # search starts (the query or the prior); None: the predictor's ``reach``,
                                       # 0: the whole first window. A whole-frame first scale otherwise lets a
                                       # repeated texture far away win over the true match
    occlusion_threshold: float = 0.0   # peak D below this = occluded (0: never)
    fb_threshold: float = 12.0         # visible only if the found point traced back into frame 1 lands within this
                                       # many working px of the query (forward-backward consistency; 0: no check)
    fb_masks: int | None = None        # masks of that backward trace (None: as many as forward)
    fb_scales: int | None = 1          # scales of that backward trace, from the forward trace's first crop (None: as
                                       # forward); it starts at the query, where a consistent point lands
    fb_prior_ratio: float = 0.5        # a search from a prior skips coarse scales, and so does its backward trace,
                                       # which is then finer: held to this fraction of fb_threshold (eval-long in 3D
                                       # and on planes: the coarse way back failed points found right; README)
    min_sharpness: float | None = None  # visible only if the last map's peak is this many times its mean
                                       # (None: the predictor's calibration, 0: no test)
    min_appearance: float = 0.7        # visible only if the found point's 9x9 neighbourhood (working px) still
                                       # looks like the query's: normalised cross-correlation within +-2 px at
                                       # least this (flat patches pass; 0: no test). Chosen on eval.calibrate's
                                       # synthetic occlusions (README, Long tracks): an occluder's texture fails it
    prior_skip: int = 1                # with a prior, this many coarse scales are skipped: the prior is within the
                                       # next scale's reach, and a coarse search around it finds more far-off
                                       # look-alikes than it corrects (at most scales - 1)
    refine: str = "lk"                 # sub-pixel polish of every answer (``polish.py``): pyramidal Lucas-Kanade from
                                       # the KL answer, kept within ``refine_max`` and when it traces back within
                                       # ``refine_fb`` of the query; "none": the KL answer as it is. Dev set (README,
                                       # Accuracy): delta_avg 85.3 -> 91.7, EPE 2.23 -> 1.49 px, every bin better
    refine_window: int = 21            # its window, image px (odd)
    refine_levels: int = 3             # its pyramid levels above the image
    refine_max: float = 16.0           # working px: a polish that moves the point farther is dropped
    refine_fb: float = 0.25            # working px: so is one whose way back misses the query by more (0: no check)
    seed: int = 0
    batch: int = 64                    # query points per predictor call
    keep_maps: bool = False            # return the last scale's averaged maps (debug heatmaps)

    def __post_init__(self):
        if self.method not in ("kl", "rgb"):
            raise ValueError(f"method must be 'kl' or 'rgb', got {self.method!r}")
        if self.refine not in ("lk", "none"):
            raise ValueError(f"refine must be 'lk' or 'none', got {self.refine!r}")
        if not (isinstance(self.refine_window, int) and 5 <= self.refine_window <= 101 and self.refine_window % 2):
            raise ValueError(f"refine_window must be an odd whole number in [5, 101], got {self.refine_window!r}")
        if not (isinstance(self.refine_levels, int) and 0 <= self.refine_levels <= 5):
            raise ValueError(f"refine_levels must be a whole number in [0, 5], got {self.refine_levels!r}")
        if not (isinstance(self.prior_skip, int) and 0 <= self.prior_skip <= 8):
            raise ValueError(f"prior_skip must be a whole number in [0, 8], got {self.prior_skip!r}")
        for name in ("masks", "scales", "fb_masks", "fb_scales"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, int) and 1 <= v <= 64):
                raise ValueError(f"{name} must be a whole number in [1, 64] (or the model's default), got {v!r}")
        if not (isinstance(self.min_appearance, (int, float)) and -1 <= self.min_appearance <= 1):
            raise ValueError(f"min_appearance must be a number in [-1, 1], got {self.min_appearance!r}")
        if not (isinstance(self.fb_prior_ratio, (int, float)) and 0 < self.fb_prior_ratio <= 4):
            raise ValueError(f"fb_prior_ratio must be a number in (0, 4], got {self.fb_prior_ratio!r}")
        for name in ("occlusion_threshold", "fb_threshold", "min_sharpness", "reach", "refine_max", "refine_fb"):
            v = getattr(self, name)
            if v is None and name in ("min_sharpness", "reach"):   # the predictor's calibration
                continue
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")


class Cancelled(Exception):
    """``Engine.track`` stopped early because its ``cancel`` event was set (shutdown)."""


@dataclass
class TraceResult:
    points: np.ndarray                 # (N,2) x, y in frame-2 pixels of the caller's image
    visible: np.ndarray                # (N,) bool
    confidence: np.ndarray             # (N,) peak D of the last scale
    fb_error: np.ndarray | None = None  # (N,) forward-backward distance (working px) when checked
    sharpness: np.ndarray | None = None  # (N,) peak / mean of the last scale's averaged map
    polished: np.ndarray | None = None  # (N,) bool: the point is the Lucas-Kanade polish of the KL answer (refine)
    maps: list = field(default_factory=list)  # per point: (map (g,g), window box in frame-2 px) if keep_maps


def default_scales(pred: Predictor) -> int:
    """The predictor's own number of scales if it states one (``scales``), else as many as halve the first crop
    down to half the window."""
    if getattr(pred, "scales", None):
        return int(pred.scales)
    n, crop = 1, pred.first_crop
    while crop * pred.shrink >= pred.window * 0.5 - 1e-6 and n < 8:
        crop *= pred.shrink
        n += 1
    return n


class Engine:
    def __init__(self, predictor: Predictor, config: TraceConfig | None = None):
        self.p = predictor
        self.cfg = config or TraceConfig()

    def point_passes(self, n_points: int, config: TraceConfig | None = None) -> int:
        """The work of one pair in point x mask x scale units (the backward visibility check included)."""
        cfg = config or self.cfg
        scales, masks = cfg.scales or default_scales(self.p), cfg.masks or self.p.masks
        back = (min(cfg.fb_scales or scales, scales) * (cfg.fb_masks or masks)) if cfg.fb_threshold > 0 else 0
        return n_points * (scales * masks + back)

    # ----------------------------------------------------------- geometry
    def _working(self, points, shape) -> torch.Tensor:
        """(N,2) pixel positions of an image of ``shape`` (H, W, ...) -> continuous working px."""
        s = self.p.image_size
        return torch.tensor((np.asarray(points, np.float64).reshape(-1, 2) + 0.5) * [s / shape[1], s / shape[0]],
                            dtype=torch.float32)

    def appearance(self, frame_a, points_a, frame_b, points_b, source=None) -> np.ndarray:
        """(N,) how much the neighbourhoods of ``points_b`` in ``frame_b`` still look like those of ``points_a`` in
        ``frame_a`` (the visibility test of ``min_appearance``, for callers that compare other frames than a traced
        pair: a track's anchor and its current position). ``frame_a`` and ``source`` as in :meth:`track`."""
        n = len(np.reshape(points_a, (-1, 2)))
        if n == 0:
            return np.zeros(0)
        img_a, index, shape = self._sources(frame_a, source, n)
        return appearance_match(img_a, self._prepare(frame_b), self._working(points_a, shape),
                                self._working(points_b, np.shape(frame_b)), index_a=index).numpy()

    def _sources(self, frame1, source, n: int):
        """The first images of a call: one image, or a list of images of one size with ``source`` (N,) naming each
        query's. Returns (F,3,S,S) working images, the (N,) index (None: one image) and the images' shape."""
        if source is None:
            return self._prepare(frame1), None, np.shape(frame1)[:2]
        frames = list(frame1)
        index = np.asarray(source).reshape(-1)
        if len(index) != n or not np.issubdtype(index.dtype, np.integer) or len(frames) == 0 \
                or index.min() < 0 or index.max() >= len(frames):
            raise ValueError(f"source must name one of the {len(frames)} first images per query (N={n} whole "
                             f"numbers in [0, {len(frames) - 1}]), got {index.tolist()[:8]}")
        shapes = {np.shape(f)[:2] for f in frames}
        if len(shapes) != 1:
            raise ValueError(f"the first images must have one size, got {sorted(shapes)}")
        return torch.cat([self._prepare(f) for f in frames]), torch.as_tensor(index), shapes.pop()

    def _prepare(self, frame: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(H,W,3) uint8 or float [0,1] -> (1,3,S,S) float in [0,1] at the working resolution.

        A uint8 frame larger than twice the working resolution is first shrunk in uint8 (area
        average), so that no float copy of a full-resolution camera frame is ever made."""
        if np.ndim(frame) != 3 or np.shape(frame)[2] != 3 or min(np.shape(frame)[:2]) < 2:
            raise ValueError(f"expected an (H,W,3) RGB image, got shape {tuple(np.shape(frame))}")
        s2 = 2 * self.p.image_size
        if isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and max(frame.shape[:2]) > s2:
            h, w = frame.shape[:2]
            frame = cv2.resize(frame, (min(w, s2), min(h, s2)), interpolation=cv2.INTER_AREA)
        t = torch.from_numpy(np.array(frame, copy=True)) if not isinstance(frame, torch.Tensor) else frame
        t = t.float() / 255 if t.dtype == torch.uint8 else t.float()
        s = self.p.image_size
        return F.interpolate(t.permute(2, 0, 1).unsqueeze(0), size=(s, s), mode="bilinear", antialias=True,
                             align_corners=False).clamp(0, 1)

    def _windows(self, image: torch.Tensor, centres: torch.Tensor, crop: float, index=None) -> torch.Tensor:
        """(B,3,w,w) windows of ``crop`` working px centred at ``centres`` (B,2) (continuous px), cut from
        ``image`` (1,3,S,S), or from ``image[index[b]]`` of (F,3,S,S)."""
        w, s = self.p.window, self.p.image_size
        factor = crop / w
        src = image
        if factor > 1.01:  # antialias: sample from a pre-shrunk image
            size = max(2, round(s / factor))
            src = F.interpolate(image, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        u = (torch.arange(w, dtype=torch.float32) + 0.5) * crop / w - crop / 2
        gx = (centres[:, 0].view(-1, 1, 1) + u.view(1, 1, w)) / s * 2 - 1
        gy = (centres[:, 1].view(-1, 1, 1) + u.view(1, w, 1)) / s * 2 - 1
        grid = torch.stack([gx.expand(-1, w, w), gy.expand(-1, w, w)], -1)
        src = src.expand(len(centres), -1, -1, -1) if index is None else src[index]
        return F.grid_sample(src, grid, mode="bilinear",
                             padding_mode="border", align_corners=False)

    # ---------------------------------------------------------------- run
    @torch.no_grad()
    def track(self, frame1, frame2, queries, config: TraceConfig | None = None, cancel=None,
              prior=None, source=None, retry_from=None) -> TraceResult:
        """Trace ``queries`` (N,2) (x, y px of frame 1) into frame 2 ((H,W,3) uint8 or float in [0,1]).

        ``source`` (N,) (or None): ``frame1`` is then a list of images of one size and query i is a point of
        ``frame1[source[i]]``: points seen on different frames (tracks' anchors) are traced into frame 2 in one call.

        ``prior`` (N,2) (x, y px of frame 2, or None): where each point probably is (a motion prior); the
        search starts there instead of at the query (skipping ``prior_skip`` coarse scales), so motions beyond
        the model's reach are found when the prior is near them, and a prior a little off is corrected by the
        search. Points not found from their prior (not visible) are searched again with the whole schedule,
        from ``retry_from`` (N,2) (x, y px of frame 2; default: the query's own position), and take that answer
        if it is visible with a sharper peak: a prior far off costs time, not the point. The backward check
        always starts at the query (where a consistent point lands).

        ``config`` (default: ``self.cfg``) is read once: a concurrent change of ``self.cfg`` never
        mixes two configurations within one call. ``cancel`` (a ``threading.Event``) is checked before
        every predictor call; when set, the call raises :class:`Cancelled` (a pair is abandoned within
        one predictor call, for a prompt shutdown)."""
        cfg = config or self.cfg
        q = np.asarray(queries, dtype=np.float64).reshape(-1, 2)
        h2, w2 = np.shape(frame2)[:2]
        img1, index, (h1, w1) = self._sources(frame1, source, len(q))
        img2 = self._prepare(frame2)
        if len(q) == 0:
            return TraceResult(np.zeros((0, 2)), np.zeros(0, bool), np.zeros(0))
        qw = self._working(q, (h1, w1))
        starts = []
        for name, pts in (("prior", prior), ("retry_from", retry_from)):
            if pts is not None:
                pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
                if pts.shape != q.shape or not np.isfinite(pts).all():
                    raise ValueError(f"{name} must be finite (x, y) per query: {len(q)} queries, {name} {pts.shape}")
                pts = self._working(pts, (h2, w2))
            starts.append(pts)
        start, again_from = starts
        cfg = self.schedule(cfg)
        res = self._search(img1, img2, index, qw, (h2, w2), cfg, cancel, start, skip=start is not None)
        if start is not None and not res.visible.all():   # not found from the prior: search again, whole schedule
            again = np.flatnonzero(~res.visible)
            sub = self._search(img1, img2, None if index is None else index[again], qw[again], (h2, w2), cfg,
                               cancel, None if again_from is None else again_from[again])
            better = sub.visible & (sub.sharpness > res.sharpness[again])     # found, and a clearer peak
            take, got = again[better], np.flatnonzero(better)
            res.points[take], res.visible[take], res.confidence[take] = sub.points[got], True, sub.confidence[got]
            res.sharpness[take] = sub.sharpness[got]
            if res.fb_error is not None:
                res.fb_error[take] = sub.fb_error[got]
            for i, j in zip(take, got) if cfg.keep_maps else ():
                res.maps[i] = sub.maps[j]
        if cfg.refine == "lk":
            self._polish(frame1, frame2, index, q, (h1, w1), res, cfg)
        return res

    def _polish(self, frame1, frame2, index, q, shape1, res: TraceResult, cfg: TraceConfig) -> None:
        """The sub-pixel polish (``polish.lk_polish``) of every answer of ``res``, per first image."""
        s = self.p.image_size
        h2, w2 = np.shape(frame2)[:2]
        scales = (np.array([s / shape1[1], s / shape1[0]]), np.array([s / w2, s / h2]))
        g2 = polish.gray(frame2)
        res.polished = np.zeros(len(q), bool)
        groups = [(frame1, np.arange(len(q)))] if index is None else \
            [(frame1[k], np.flatnonzero(index.numpy() == k)) for k in np.unique(index.numpy())]
        for image, rows in groups:
            res.points[rows], res.polished[rows] = polish.lk_polish(
                polish.gray(image), g2, q[rows], res.points[rows], cfg.refine_window, cfg.refine_levels,
                cfg.refine_max, cfg.refine_fb, scales)

    def _search(self, img1, img2, index, qw, shape2, cfg: TraceConfig, cancel, start=None,
                skip: bool = False) -> TraceResult:
        """One search of queries ``qw`` (working px of ``img1``, or of ``img1[index]``) in ``img2`` (of a frame of
        ``shape2`` (H, W)) from ``start`` (working px; default: the queries) with the schedule ``cfg`` (its first
        ``prior_skip`` scales left out when ``skip``), and the visibility tests."""
        s = self.p.image_size
        h2, w2 = shape2
        fwd = self._from_prior(cfg) if skip else cfg
        # a search from a prior is a refinement from its first scale on (its coarse scale was skipped: the prior is
        # within the next scale's reach), so that scale searches only the central ``zoom_search`` of its window
        est, conf, sharp, maps = self._trace(img1, img2, qw, fwd, cancel, start, ia=index, refine_from=0 if skip else 1)
        pts = est.numpy() * [w2 / s, h2 / s] - 0.5
        inside = (pts[:, 0] >= -0.5) & (pts[:, 0] <= w2 - 0.5) & (pts[:, 1] >= -0.5) & (pts[:, 1] <= h2 - 0.5)
        min_sharp = self._min_sharpness(cfg)
        # visible: a strong peak, a peak that stands out of its map (the tracer was found), and in view
        vis = (conf.numpy() >= cfg.occlusion_threshold) & (sharp.numpy() >= min_sharp) & inside
        if cfg.min_appearance > 0:   # and the found point still looks like the query (not an occluder's texture)
            vis &= appearance_match(img1, img2, qw, est, index_a=index).numpy() >= cfg.min_appearance
        res = TraceResult(pts, vis, conf.numpy(), sharpness=sharp.numpy())
        if cfg.fb_threshold > 0:  # forward-backward consistency: trace the found points back into frame 1
            back = self._trace(img2, img1, est, self._backward(cfg, fwd), cancel, qw, ib=index)[0]
            res.fb_error = (back - qw).norm(dim=1).numpy()
            finer = fwd.first_crop < cfg.first_crop
            res.visible &= res.fb_error <= cfg.fb_threshold * (cfg.fb_prior_ratio if finer else 1.0)
        if cfg.keep_maps:
            res.maps = [(mp, box * np.array([w2 / s, h2 / s, w2 / s, h2 / s])) for mp, box in maps]
        return res

    def schedule(self, cfg: TraceConfig) -> TraceConfig:
        """``cfg`` with its first crop and number of scales stated. Without a first crop the schedule ends at the
        predictor's finest crop, so fewer scales than the predictor's leave out coarse scales (less reach, the same
        precision) and more add coarser ones; a stated first crop is the first scale's."""
        shrink = cfg.shrink or self.p.shrink
        scales = cfg.scales or default_scales(self.p)
        first = cfg.first_crop or self.p.first_crop * shrink ** (default_scales(self.p) - scales)
        return replace(cfg, first_crop=min(float(first), float(self.p.image_size)), scales=scales, shrink=shrink)

    def _min_sharpness(self, cfg: TraceConfig) -> float:
        """The peak sharpness a visible point needs: the config's, else the predictor's calibration (0: no test)."""
        return cfg.min_sharpness if cfg.min_sharpness is not None else getattr(self.p, "min_sharpness", 0.0)

    def _backward(self, cfg: TraceConfig, fwd: TraceConfig) -> TraceConfig:
        """The schedule of the backward check of a forward search with schedule ``fwd``: ``fb_scales`` scales from
        the forward's first crop (a search from a prior skipped coarse scales: its way back skips them too, as the
        coarse window mixes the motions of near and far surfaces), ``fb_masks`` masks."""
        return replace(fwd, masks=cfg.fb_masks or cfg.masks, scales=min(cfg.fb_scales or fwd.scales, fwd.scales),
                       keep_maps=False)

    def _from_prior(self, cfg: TraceConfig) -> TraceConfig:
        """The schedule of a search that starts from a prior: the first ``prior_skip`` scales left out."""
        skip = min(cfg.prior_skip, cfg.scales - 1)
        return replace(cfg, first_crop=cfg.first_crop * cfg.shrink ** skip, scales=cfg.scales - skip)

    def _trace(self, img_a, img_b, qw, cfg: TraceConfig, cancel, start=None, ia=None, ib=None, refine_from: int = 1):
        """Estimates (N,2) in working px of ``img_b``, peak scores (N,), peak sharpness (N,) and maps of queries
        ``qw`` of ``img_a``; the search starts at ``start`` (N,2) (default: the queries). ``ia``/``ib`` (N,): each
        query's image of a stack ``img_a``/``img_b`` (None: one image). Scales from ``refine_from`` on search only
        the central ``zoom_search`` fraction of their window (0: the first scale too, a search from a prior)."""
        start = qw if start is None else start
        est = start.clone()
        conf, sharp = torch.zeros(len(qw)), torch.zeros(len(qw))
        maps = [None] * len(qw)
        for i in range(0, len(qw), cfg.batch):
            sl = slice(i, i + cfg.batch)
            est[sl], conf[sl], sharp[sl], maps[sl] = self._track_batch(
                img_a, img_b, qw[sl], cfg, cancel, start[sl], None if ia is None else ia[sl],
                None if ib is None else ib[sl], refine_from)
        return est, conf, sharp, maps

    def _track_batch(self, img1, img2, qw, cfg: TraceConfig, cancel=None, start=None, i1=None, i2=None,
                     refine_from: int = 1):
        p = self.p
        s, w, patch = p.image_size, p.window, p.patch
        g = w // patch
        n = len(qw)
        est = (qw if start is None else start).clone()
        scales, crop, shrink = cfg.scales, float(cfg.first_crop), cfg.shrink   # stated by ``schedule``
        gen = torch.Generator().manual_seed(cfg.seed)
        reach = cfg.reach if cfg.reach is not None else getattr(p, "reach", 0.0)
        min_sharp = self._min_sharpness(cfg)
        peak = torch.zeros(n)
        maps = [None] * n
        for k in range(scales):
            whole = crop >= s - 1e-6
            if whole:  # one window for everyone: the clean pass is shared by all points
                centre = torch.full((1, 2), s / 2)
                src_c, tgt_c = centre.expand(n, 2), centre.expand(n, 2)
                crop_k = float(s)
            else:
                src_c, tgt_c, crop_k = qw, est, crop
            scale = w / crop_k
            # a whole-frame window is shared by all points of one image
            src_w = self._windows(img1, src_c[:1] if whole and i1 is None else src_c, crop_k, i1)
            tgt_w = self._windows(img2, tgt_c[:1] if whole and i2 is None else tgt_c, crop_k, i2)
            q_win = (qw - src_c) * scale + w / 2                      # query in source-window px
            traced = add_tracer(src_w.expand(n, -1, -1, -1), q_win, p.tracer_sigma)
            # patches kept hidden: the estimate sits at the target-window centre for every point
            keep = None if whole else centre_block(g, cfg.hide_radius)
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            masks = torch.stack([reveal_mask(g, g, p.reveal, gen, keep_hidden=keep)
                                 for _ in range(cfg.masks or getattr(p, "masks", 1))])       # K,g,g
            # refinement scales search near the previous estimate (or the prior) only (a predictor that can stop
            # where the search stops, ``window_maps``, computes nothing outside: its map is 0 there)
            refining = k >= refine_from and not whole and cfg.zoom_search < 1
            region = central_region(g, cfg.zoom_search) if refining else None
            # but the last scale's map is whole where its sharpness is a visibility test: the cells outside the
            # searched region enter the mean that the peak is compared with
            partial = None if k == scales - 1 and min_sharp > 0 else region
            total = self._maps(src_w, traced, tgt_w, masks, cfg.method, cancel, partial).cpu().sum(1)
            count = (~masks).flatten(1).sum(0, keepdim=True).float()
            d = (total / count.clamp(min=1)).view(n, g, g)
            d = torch.where(count.view(1, g, g) > 0, d, torch.zeros_like(d))
            search = d if region is None else torch.where(region, d, torch.zeros_like(d))
            if k == 0 and reach > 0:   # the first scale: no farther than ``reach`` from where the search starts
                cells = ((torch.arange(g, dtype=torch.float32) + 0.5) * patch - w / 2) / scale   # cell centres
                dx = cells.view(1, 1, g) + (tgt_c[:, 0] - est[:, 0]).view(-1, 1, 1)             # from the start
                dy = cells.view(1, g, 1) + (tgt_c[:, 1] - est[:, 1]).view(-1, 1, 1)
                search = torch.where(dx ** 2 + dy ** 2 <= reach ** 2, search, torch.zeros_like(search))
            pos, peak = refine_peak(search)
            sharp = d.amax((1, 2)) / (d.mean((1, 2)) + 1e-9)
            est = (pos * patch - w / 2) / scale + tgt_c
            if cfg.keep_maps:
                box = torch.cat([tgt_c - crop_k / 2, tgt_c + crop_k / 2], 1).numpy()
                maps = [(d[i].numpy(), box[i]) for i in range(n)]
            crop *= shrink
        return est, peak, sharp, maps

    def _maps(self, src_w, traced, tgt_w, masks, method: str, cancel=None, region=None):
        """Per-point maps (B, K, g*g) under each of the K reveal ``masks`` (K,g,g): KL or RGB difference at hidden
        patches, 0 at revealed ones. A predictor with ``kl_maps`` does all masks in one call; one with
        ``window_maps`` is given the searched ``region`` (g,g) and may leave the map 0 outside it."""
        p = self.p
        n = traced.shape[0]
        if method == "kl" and hasattr(p, "kl_maps"):
            extra = {"window": region} if region is not None and getattr(p, "window_maps", False) else {}
            return p.kl_maps(src_w.expand(n, -1, -1, -1), traced, tgt_w.expand(n, -1, -1, -1), masks, **extra)
        out = torch.zeros(n, len(masks), masks[0].numel())
        for j, mask in enumerate(masks):
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            out[:, j, ~mask.flatten()] = self._map(src_w, traced, tgt_w, mask, method).cpu()
        return out

    def _map(self, src_w, traced, tgt_w, mask, method: str):
        """Per-point maps (B, M) over hidden patches: KL or RGB difference. ``src_w`` and ``tgt_w``: one window
        shared by all points or one per point (a shared source with a target per point, as in the backward check of
        anchored tracking, makes a clean pass per target)."""
        p = self.p
        if src_w.shape[0] == 1 and tgt_w.shape[0] > 1:
            src_w = src_w.expand(tgt_w.shape[0], -1, -1, -1)
        if method == "kl":
            clean = p.log_probs(src_w, tgt_w, mask)
            pert = p.log_probs(traced, tgt_w, mask)
            return kl_map(clean, pert)
        clean = p.predict_rgb(src_w, tgt_w, mask)
        pert = p.predict_rgb(traced, tgt_w, mask)
        diff = (pert.float() - clean.float()).abs().sum(1, keepdim=True)
        per_patch = F.avg_pool2d(diff, p.patch).flatten(1)
        return per_patch[:, ~mask.flatten().to(per_patch.device)]
