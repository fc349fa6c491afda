"""An analytic predictor: a 'model' that moves the source by the translation it measures.

It estimates the translation from the source window to the target window by
cross-correlation (sub-pixel by a parabola fit), shifts the source by it, and returns sharp
distributions over ``levels`` brightness codes for each hidden patch (the patch mean). A
tracer in the source therefore reappears exactly where the source content went, and a point
that leaves the window leaves no trace (low KL: occluded). It exists to test the engine
without a trained model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class AnalyticShiftPredictor:
    name = "analytic-shift"

    def __init__(self, image_size=256, window=64, patch=4, levels=32, sharpness=2.0, reveal=0.2,
                 first_crop=128, shrink=0.5, tracer_sigma=2.0, masks=2):
        self.image_size, self.window, self.patch = image_size, window, patch
        self.levels, self.sharpness, self.reveal = levels, sharpness, reveal
        self.first_crop, self.shrink, self.tracer_sigma, self.masks = first_crop, shrink, tracer_sigma, masks
        self.device = torch.device("cpu")

    @staticmethod
    def _shift(src_gray: torch.Tensor, tgt_gray: torch.Tensor) -> torch.Tensor:
        """Translation (B,2) (x, y) with tgt(u) ~ src(u - t), by windowed cross-correlation.

        Bright pixels are clipped first, so that a tracer barely moves the correlation peak."""
        h, w = src_gray.shape[-2:]
        hann = torch.outer(torch.hann_window(h, periodic=False), torch.hann_window(w, periodic=False))

        def prep(x):
            x = torch.minimum(x, torch.quantile(x.flatten(1), 0.9, dim=1).view(-1, 1, 1))
            return (x - x.mean((-2, -1), keepdim=True)) * hann

        fa, fb = torch.fft.rfft2(prep(src_gray)), torch.fft.rfft2(prep(tgt_gray))
        r = fb * fa.conj()
        corr = torch.fft.irfft2(r / (r.abs().sqrt() + 1e-6), s=(h, w))  # half-whitened: sharp yet robust
        b, h, w = corr.shape
        idx = corr.flatten(1).argmax(1)
        iy, ix = idx // w, idx % w
        ar = torch.arange(b)

        def sub(c0, cm, cp):
            den = cm - 2 * c0 + cp
            return torch.where(den.abs() > 1e-9, 0.5 * (cm - cp) / den, torch.zeros_like(den))

        dx = sub(corr[ar, iy, ix], corr[ar, iy, (ix - 1) % w], corr[ar, iy, (ix + 1) % w])
        dy = sub(corr[ar, iy, ix], corr[ar, (iy - 1) % h, ix], corr[ar, (iy + 1) % h, ix])
        tx = torch.where(ix > w // 2, ix - w, ix).float() + dx
        ty = torch.where(iy > h // 2, iy - h, iy).float() + dy
        return torch.stack([tx, ty], -1)

    def _predict(self, sources, targets):
        gray = lambda x: x.mean(1)  # noqa: E731
        b = sources.shape[0]
        targets = targets.expand(b, -1, -1, -1)
        # measure the motion on the clean-looking content: the tracer is a small blob and
        # barely moves the phase-correlation peak
        t = self._shift(gray(sources), gray(targets))
        w = self.window
        u = torch.arange(w, dtype=torch.float32) + 0.5
        gx = (u.view(1, 1, w) - t[:, 0].view(b, 1, 1)) / w * 2 - 1
        gy = (u.view(1, w, 1) - t[:, 1].view(b, 1, 1)) / w * 2 - 1
        grid = torch.stack([gx.expand(b, w, w), gy.expand(b, w, w)], -1)
        moved = F.grid_sample(sources, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return moved

    def log_probs(self, sources, targets, reveal):
        moved = self._predict(sources, targets)
        mean = F.avg_pool2d(moved.mean(1, keepdim=True), self.patch).flatten(1)          # B,N in [0,1]
        lv = torch.arange(self.levels, dtype=torch.float32) / (self.levels - 1)
        logits = -((mean.unsqueeze(-1) - lv) * (self.levels - 1)) ** 2 * self.sharpness
        return logits.log_softmax(-1)[:, ~reveal.flatten()]

    def predict_rgb(self, sources, targets, reveal):
        return self._predict(sources, targets)
