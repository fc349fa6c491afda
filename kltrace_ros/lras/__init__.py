"""LRAS-family models: tokenizers, predictors, sequence layout and checkpoints (no ROS)."""
