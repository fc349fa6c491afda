"""The published LRAS family: ``network`` (the 7B transformer with prefill/extend), ``tokenizer``
(LPQ), ``layout`` (the two-frame token sequence), ``predictor`` (the tracing protocol with exact
shared-prefix caching) and ``published`` (where a user gets the checkpoints, and their checks)."""
