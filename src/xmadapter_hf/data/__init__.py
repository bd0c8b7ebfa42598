"""Data: images, augmentation, extraction, views, splits, per-dataset defaults."""
