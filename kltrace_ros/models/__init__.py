"""Next-frame predictors with a per-patch code distribution, one sub-package per family.

``lras/`` is the published LRAS (7B transformer + LPQ), ``motion/`` the small model that ships
in ``default.pt``, ``analytic`` a model-free predictor for tests. ``checkpoint`` is the one
(weights-only) loader, ``registry`` turns a file into a predictor (``load_predictor``) and picks
the device. Nothing here knows about tracing beyond the leaf ``tracing.ops``.
"""
