"""Diffusion video models behind the predictor protocol (RGB perturb-and-track): ``spec`` (svd:DIR /
cosmos:DIR, settings, folder checks), ``predictor`` (the two-run difference recipe), ``svd``, ``cosmos``
(each imports diffusers, so ``load`` imports them only when such a model is asked for)."""
