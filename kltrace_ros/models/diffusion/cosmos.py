"""Cosmos-Predict2 Video2World (diffusers' Cosmos2VideoToWorldPipeline components) as a perturb-and-track
predictor.

One prediction: a five-frame clip (frame 1, clean or traced, then the real frame 2 four times: the Wan VAE
packs 1 + 4k frames into 1 + k latent frames) is encoded to two latent frames; the first is the condition,
held at its clean latents at every step as Video2World does, the second is noised to ``noise_level`` of the
sampler's schedule and denoised by the transformer (EDM-style preconditioning in the flow-matching
parameterisation, an empty prompt encoded once at load, fps 16, no classifier-free guidance). The first
decoded frame after the condition is the prediction of frame 2.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import diffusers.models.transformers.transformer_cosmos as transformer_cosmos
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan, CosmosTransformer3DModel, FlowMatchEulerDiscreteScheduler
from transformers import AutoTokenizer, T5EncoderModel

from .predictor import DiffusionPredictor, component
from .spec import DiffusionSettings

FPS = 16
SIGMA_CONDITION = 1e-4          # noise level the conditioning latent frame is presented at
MAX_PROMPT_TOKENS = 512

if not hasattr(transformer_cosmos, "transforms"):
    # diffusers' Cosmos transformer resizes its padding mask with torchvision, which PyPI does not build for the
    # pinned CPU torch; the same nearest-neighbour resize in torch (the mask we pass is all zeros anyway).
    transformer_cosmos.transforms = SimpleNamespace(
        InterpolationMode=SimpleNamespace(NEAREST="nearest"),
        functional=SimpleNamespace(resize=lambda x, size, interpolation: F.interpolate(x, size=size, mode="nearest")))


class CosmosPredictor(DiffusionPredictor):
    def __init__(self, folder: Path, settings: DiffusionSettings, device, weight_bytes: int = 0):
        self.check_device("cosmos", device, weight_bytes, settings)
        self.transformer = component(CosmosTransformer3DModel, folder, "transformer", device)
        self.vae = component(AutoencoderKLWan, folder, "vae", device)
        self.scheduler = component(FlowMatchEulerDiscreteScheduler, folder, "scheduler")
        spatial = 2 ** len(self.vae.config.temperal_downsample)
        self.temporal = 2 ** sum(self.vae.config.temperal_downsample)
        super().__init__(f"cosmos:{folder}", settings, device, patch=spatial)
        self.prompt = self._empty_prompt(folder)                     # the text encoder is not kept
        for m in (self.transformer, self.vae):
            m.to(self.device).eval()
        z = self.vae.config.z_dim
        self.lat_mean = torch.tensor(self.vae.config.latents_mean, device=self.device).view(1, z, 1, 1, 1)
        self.lat_std = torch.tensor(self.vae.config.latents_std, device=self.device).view(1, z, 1, 1, 1)
        self.sigma_data = float(self.scheduler.config.get("sigma_data", 1.0))

    def _empty_prompt(self, folder: Path) -> torch.Tensor:
        tok = component(AutoTokenizer, folder, "tokenizer")
        enc = component(T5EncoderModel, folder, "text_encoder", self.device).to(self.device).eval()
        length = min(MAX_PROMPT_TOKENS, tok.model_max_length or MAX_PROMPT_TOKENS)
        ids = tok([""], max_length=length, padding="max_length", truncation=True, return_tensors="pt")
        with torch.no_grad():
            emb = enc(ids.input_ids.to(self.device), attention_mask=ids.attention_mask.to(self.device)).last_hidden_state
        emb[:, int(ids.attention_mask.sum()):] = 0                   # padding carries nothing, as in the pipeline
        return emb.to(self.dtype)

    def noise_shape(self, batch: int) -> tuple:
        g = self.image_size // self.patch
        return (batch, self.vae.config.z_dim, 2, g, g)                 # (B, C, latent frames, h, w)

    def _latents(self, video: torch.Tensor) -> torch.Tensor:
        lat = self.vae.encode(video.to(self.dtype)).latent_dist.mode().float()
        return (lat - self.lat_mean) / self.lat_std * self.sigma_data

    def _predict(self, cond: torch.Tensor, target: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        s, sched = self.settings, self.scheduler
        b = len(cond)
        clip = torch.cat([cond.unsqueeze(2), target.unsqueeze(2).expand(-1, -1, self.temporal, -1, -1)], 2)
        x0 = self._latents(clip)                                              # (B,C,2,h,w)
        sched.set_timesteps(sigmas=np.linspace(0, 1, s.steps), device=self.device)
        if sched.config.get("final_sigmas_type") == "sigma_min":
            sched.sigmas[-1] = sched.sigmas[-2]
        start = min(s.steps - 1, round(s.steps * (1 - s.noise_level)))
        sched.set_begin_index(start)
        lat = x0 + sched.sigmas[start].to(self.device) * noise                # partial inversion
        is_cond = torch.zeros(1, 1, 2, 1, 1, device=self.device)
        is_cond[:, :, 0] = 1.0
        cond_mask = is_cond.expand(b, 1, 2, *x0.shape[-2:]).to(self.dtype)
        padding = x0.new_zeros(1, 1, *cond.shape[-2:], dtype=self.dtype)
        t_cond = SIGMA_CONDITION / (SIGMA_CONDITION + 1)
        prompt = self.prompt.expand(b, -1, -1)
        for i, t in enumerate(sched.timesteps[start:], start):
            sigma = sched.sigmas[i].to(self.device).float()
            frac = sigma / (sigma + 1)                                          # flow time of this sigma
            x_in = is_cond * x0 + (1 - is_cond) * lat * (1 - frac)
            tt = (is_cond * t_cond + (1 - is_cond) * frac).expand(b, 1, 2, 1, 1)
            out = self.transformer(hidden_states=x_in.to(self.dtype), timestep=tt.to(self.dtype),
                                   encoder_hidden_states=prompt, fps=FPS, condition_mask=cond_mask,
                                   padding_mask=padding, return_dict=False)[0].float()
            x0_hat = is_cond * x0 + (1 - is_cond) * ((1 - frac) * lat - frac * out)
            lat = sched.step((lat - x0_hat) / sigma, t, lat, return_dict=False)[0]
        lat = lat * self.lat_std / self.sigma_data + self.lat_mean
        video = self.vae.decode(lat.to(self.dtype), return_dict=False)[0]   # (B,3,T,H,W)
        return video[:, :, 1]
