"""Measuring: ``datasets`` and ``metrics`` (TAP-Vid two-frame), ``baselines`` (zero, LK, DIS),
``run`` (``kltrace eval``), ``calibrate`` (occlusion thresholds), ``bench`` (speed and memory)."""
