"""Tracks over a stream: ``tracker`` (seeding, ids, occlusion timeout, re-seeding), ``pipeline``
(push frames, trace pairs, the reset rule) and ``builder`` (options -> engine + pipeline)."""
