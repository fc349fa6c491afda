"""The embedded small model (CellCode + MotionLRAS) behind the tracing predictor protocol."""
from __future__ import annotations

import torch

from .network import MotionLRAS

MIN_SHARPNESS = 15.0   # default for files that carry no calibration of their own


class MotionPredictor:
    """Log-probabilities over CellCode codes for hidden target cells of a ``window`` px window."""

    def __init__(self, model: MotionLRAS, device="cpu"):
        self.model = model.to(device).eval()
        c = model.cfg
        self.image_size, self.window, self.patch = c["image_size"], c["window"], c["cell"]
        self.reveal, self.tracer_sigma = c["reveal"], c["tracer_sigma"]
        self.first_crop, self.shrink, self.masks = c["first_crop"], c["shrink"], c.get("masks", 4)
        self.occlusion_threshold = dict(c.get("occlusion_threshold", {}))
        # visibility: the last map's peak must stand this far above its mean (with the forward-backward check:
        # 98% of synthetic points within 4 px pass, 14% of those more than 16 px off; see MODEL_CARD)
        self.min_sharpness = float(c.get("min_sharpness", MIN_SHARPNESS))
        self.device = torch.device(device)
        self.name = c.get("name", "MotionLRAS")
        self._cache: list = []

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        """Codes (B,G,G) of ``images`` (B,3,w,w), memoised for the last few tensors (the engine passes
        the same windows once per reveal mask; ``_version`` changes if a tensor is modified in place)."""
        key = (images.data_ptr(), tuple(images.shape), images.stride(), images._version)
        for k, tensor, codes in self._cache:
            if k == key and tensor is images:
                return codes
        codes = self.model.tokenizer.encode(images.to(self.device))
        self._cache = [(key, images, codes)] + self._cache[:3]
        return codes

    @torch.no_grad()
    def log_probs(self, sources, targets, reveal):
        src = self._encode(sources)
        tgt = self._encode(targets)
        reveal = reveal.to(self.device)
        return self.model(src, tgt, reveal, hidden_only=True)

    @torch.no_grad()
    def predict_rgb(self, sources, targets, reveal):
        src = self._encode(sources)
        tgt = self._encode(targets).expand(src.shape[0], -1, -1)
        reveal = reveal.to(self.device)
        pred = self.model(src, tgt, reveal).argmax(-1).view_as(src)
        return self.model.tokenizer.decode(torch.where(reveal, tgt, pred))
