"""The small, CPU-trainable LRAS-family model that ships with the package.

``tokenizer`` (CellCode: 4x4 RGB cells -> k-means codes), ``network`` (MotionLRAS: an explicit
motion search feeding a code head), ``predictor`` (MotionPredictor: the tracing protocol).
"""
