"""Data: images and their decoding, dataset options, transforms, device resampling, loaders, and the
fingerprint of what a run trained on.

May import ``config`` and ``runs``; imported by ``loop``, ``use`` and above.
"""
