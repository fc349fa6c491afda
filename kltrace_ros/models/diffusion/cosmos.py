"""Cosmos-Predict2 Video2World (diffusers' Cosmos2VideoToWorldPipeline components) as a perturb-and-track
predictor.

One prediction: two latent frames, the first the condition (frame 1, clean or traced, encoded on its own and
held at its clean latents at every step as Video2World does), the second the real frame 2 (encoded in a clip
of its own: the Wan VAE is causal and packs 1 + 4k frames into 1 + k latent frames) noised to
``noise_level`` of the sampler's schedule and denoised by the transformer (EDM-style preconditioning in the
flow-matching parameterisation, sigmas 80 -> 0.002 as the pipeline sets them, an empty prompt encoded once at
load, fps 16, no classifier-free guidance). The denoised latent, decoded behind frame 2's own first latent,
gives four frames; the last (the one that depends least on the latent before it) is the prediction of frame 2.
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
SIGMA_MAX, SIGMA_MIN = 80.0, 0.002   # the Video2World pipeline's noise range
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
        # what Cosmos2VideoToWorldPipeline sets on its scheduler (a folder's scheduler config alone lacks it)
        self.scheduler.register_to_config(sigma_max=SIGMA_MAX, sigma_min=SIGMA_MIN, sigma_data=1.0,
                                          final_sigmas_type="sigma_min")
        spatial = 2 ** len(self.vae.config.temperal_downsample)
        self.temporal = 2 ** sum(self.vae.config.temperal_downsample)
        super().__init__(f"cosmos:{folder}", settings, device, patch=spatial)
        self.prompt = self._empty_prompt(folder)                     # the text encoder is not kept
        for m in (self.transformer, self.vae):
            m.to(self.device).eval()
        z = self.vae.config.z_dim
        self.lat_mean = torch.tensor(self.vae.config.latents_mean, device=self.device).view(1, z, 1, 1, 1)
        self.lat_std = torch.tensor(self.vae.config.latents_std, device=self.device).view(1, z, 1, 1, 1)
        self.sigma_data = 1.0

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

    def _prepare(self, cond: torch.Tensor, target: torch.Tensor) -> dict:
        # The Wan VAE is causal: frame 1 is encoded on its own (its latent frame), and the real frame 2 in a clip
        # of its own (frame 2 then frame 2 repeated), so that the target latent never sees the tracer.
        target_clip = self._latents(target.unsqueeze(2).expand(-1, -1, 1 + self.temporal, -1, -1))   # (B,C,2,h,w)
        x0 = torch.cat([self._latents(cond.unsqueeze(2)), target_clip[:, :, 1:]], 2)
        return {"x0": x0, "decode_first": target_clip[:, :, :1], "size": cond.shape[-2:]}

    def schedule(self) -> tuple[torch.Tensor, int]:
        """The sampler's sigmas for ``steps`` (80 -> 0.002, as the pipeline sets them) and the start index."""
        s, sched = self.settings, self.scheduler
        sched.set_timesteps(sigmas=np.linspace(0, 1, s.steps), device=self.device)
        sched.sigmas[-1] = sched.sigmas[-2]                                  # final sigma: sigma_min, not 0
        start = min(s.steps - 1, round(s.steps * (1 - s.noise_level)))
        sched.set_begin_index(start)
        return sched.sigmas, start

    def _denoise(self, prep: dict, noise: torch.Tensor) -> torch.Tensor:
        sched, x0 = self.scheduler, prep["x0"]
        b = len(x0)
        sigmas, start = self.schedule()
        lat = x0 + sigmas[start].to(self.device) * noise                        # partial inversion
        is_cond = torch.zeros(1, 1, 2, 1, 1, device=self.device)
        is_cond[:, :, 0] = 1.0
        cond_mask = is_cond.expand(b, 1, 2, *x0.shape[-2:]).to(self.dtype)
        padding = x0.new_zeros(1, 1, *prep["size"], dtype=self.dtype)
        t_cond = SIGMA_CONDITION / (SIGMA_CONDITION + 1)
        prompt = self.prompt.expand(b, -1, -1)
        for i, t in enumerate(sched.timesteps[start:], start):
            sigma = sigmas[i].to(self.device).float()
            frac = sigma / (sigma + 1)                                          # flow time of this sigma
            x_in = is_cond * x0 + (1 - is_cond) * lat * (1 - frac)
            tt = (is_cond * t_cond + (1 - is_cond) * frac).expand(b, 1, 2, 1, 1)
            out = self.transformer(hidden_states=x_in.to(self.dtype), timestep=tt.to(self.dtype),
                                   encoder_hidden_states=prompt, fps=FPS, condition_mask=cond_mask,
                                   padding_mask=padding, return_dict=False)[0].float()
            x0_hat = is_cond * x0 + (1 - is_cond) * ((1 - frac) * lat - frac * out)
            lat = sched.step((lat - x0_hat) / sigma, t, lat, return_dict=False)[0]
        # decoded behind the real frame 2's own first latent (the same in every run), not behind the condition
        lat = torch.cat([prep["decode_first"], lat[:, :, 1:]], 2) * self.lat_std / self.sigma_data + self.lat_mean
        # (B,3,T,H,W): the last of the four frames latent 1 decodes to (the earlier ones lean on latent 0)
        return self.vae.decode(lat.to(self.dtype), return_dict=False)[0][:, :, -1]
