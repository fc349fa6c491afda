"""Stable Video Diffusion (image-to-video) as a perturb-and-track predictor.

One prediction: a two-frame clip (frame 0 = the conditioning frame 1, clean or traced; frame 1 = the real
frame 2) is encoded with the VAE and noised to ``noise_level`` of the Euler schedule; the UNet denoises it,
conditioned the SVD way on frame 1 (its CLIP image embedding and its VAE latents beside every frame, added
time ids fps=6, motion bucket 127, no noise augmentation so that runs are deterministic), without
classifier-free guidance; frame 1 of the clip, decoded on its own, is the prediction of frame 2.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from .predictor import DiffusionPredictor, component
from .spec import DiffusionSettings

FPS_ID, MOTION_BUCKET = 6, 127        # the pipeline's defaults (fps 7, conditioned on fps - 1)


class SVDPredictor(DiffusionPredictor):
    def __init__(self, folder: Path, settings: DiffusionSettings, device, weight_bytes: int = 0):
        self.check_device("svd", device, weight_bytes, settings)
        self.unet = component(UNetSpatioTemporalConditionModel, folder, "unet", device)
        self.vae = component(AutoencoderKLTemporalDecoder, folder, "vae", device)
        self.image_encoder = component(CLIPVisionModelWithProjection, folder, "image_encoder", device)
        self.scheduler = component(EulerDiscreteScheduler, folder, "scheduler")
        fe = component(CLIPImageProcessor, folder, "feature_extractor")
        super().__init__(f"svd:{folder}", settings, device, patch=2 ** (len(self.vae.config.block_out_channels) - 1))
        for m in (self.unet, self.vae, self.image_encoder):
            m.to(self.device).eval()
        crop = fe.crop_size                       # an int, a dict or transformers' SizeDict
        self.clip_size = (crop, crop) if isinstance(crop, int) else \
            tuple(int(crop[k] if isinstance(crop, dict) else getattr(crop, k)) for k in ("height", "width"))
        self.clip_mean = torch.tensor(fe.image_mean, device=self.device).view(1, 3, 1, 1)
        self.clip_std = torch.tensor(fe.image_std, device=self.device).view(1, 3, 1, 1)
        self.time_ids = torch.tensor([[FPS_ID, MOTION_BUCKET, 0.0]], device=self.device, dtype=self.dtype)
        self.latent_channels = self.vae.config.latent_channels

    def noise_shape(self, batch: int) -> tuple:
        g = self.image_size // self.patch
        return (batch, 2, self.latent_channels, g, g)        # (B, frames, C, h, w)

    def _clip_embedding(self, cond: torch.Tensor) -> torch.Tensor:
        """(B,1,D) CLIP image embedding of frames in [-1,1] (resized and normalised like CLIPImageProcessor)."""
        x = F.interpolate((cond.float() + 1) / 2, size=self.clip_size, mode="bicubic", antialias=True,
                          align_corners=False).clamp(0, 1)
        x = ((x - self.clip_mean) / self.clip_std).to(self.dtype)
        return self.image_encoder(x).image_embeds.unsqueeze(1)

    def _prepare(self, cond: torch.Tensor, target: torch.Tensor) -> dict:
        sf = self.vae.config.scaling_factor
        cond_lat = self.vae.encode(cond).latent_dist.mode()                           # (B,C,h,w), unscaled
        clip = torch.stack([cond_lat, self.vae.encode(target).latent_dist.mode()], 1) * sf   # frame-wise encoder
        return {"emb": self._clip_embedding(cond), "beside": cond_lat.unsqueeze(1).expand(-1, 2, -1, -1, -1),
                "clip": clip.float(), "ids": self.time_ids.expand(len(cond), -1)}

    def _denoise(self, prep: dict, noise: torch.Tensor) -> torch.Tensor:
        s, sched, sf = self.settings, self.scheduler, self.vae.config.scaling_factor
        sched.set_timesteps(s.steps, device=self.device)
        start = min(s.steps - 1, round(s.steps * (1 - s.noise_level)))
        sched.set_begin_index(start)
        timesteps = sched.timesteps[start:]
        lat = sched.add_noise(prep["clip"], noise, timesteps[:1])                     # partial inversion
        for t in timesteps:
            x = torch.cat([sched.scale_model_input(lat, t).to(self.dtype), prep["beside"]], dim=2)
            eps = self.unet(x, t, encoder_hidden_states=prep["emb"], added_time_ids=prep["ids"], return_dict=False)[0]
            lat = sched.step(eps.float(), t, lat, return_dict=False)[0]
        # frame 1 of the clip decoded alone: the temporal decoder would otherwise mix in frame 0 (the condition)
        return self.vae.decode((lat[:, 1] / sf).to(self.dtype), num_frames=1).sample
