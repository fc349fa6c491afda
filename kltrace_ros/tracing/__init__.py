"""KL-tracing: ``protocol`` (what a predictor offers), ``ops`` (tracer, KL map, peak, masks: a leaf),
``engine`` (windows, scales and masks around each query point)."""
