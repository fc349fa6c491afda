"""Training the small model on CPU: ``data`` (freely licensed sources, synthetic and video pairs),
``loop`` (``kltrace train``: resumable, time-boxed, logged), ``export`` (the shipped file)."""
