"""Data: images and their decoding, dataset options, transforms, device resampling, loaders."""
