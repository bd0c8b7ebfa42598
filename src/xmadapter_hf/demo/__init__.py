"""A procedural texture domain, its few-shot demo task, and the pre-training of a small CLIP on it."""

from .task import DEMO_CLASSES, IMAGE_SIZE, POOL_SIZES, demo_images, demo_task, export_images

__all__ = ["DEMO_CLASSES", "IMAGE_SIZE", "POOL_SIZES", "demo_images", "demo_task", "export_images"]
