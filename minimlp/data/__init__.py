"""Datasets and the input pipeline: image folders, the prepared cache, transforms, augmentations, workers."""
