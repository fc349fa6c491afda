"""Many recordings at once: ``jobs`` (find recordings, do one, run them one by one, the summary) and
``ray_pool`` (the same jobs on a Ray cluster, one model per worker; imported only with ``--ray``)."""
