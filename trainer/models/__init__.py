"""Models: backbones and heads, segmentation decoders, pretrained weights, freezing, and a trained model
rebuilt from a checkpoint.

May import ``config`` and ``runs`` (a weights file's digest); imported by ``loop``, ``use`` and above.
"""

from trainer.models.backbones import BuiltModel, ModelSpec, create_model

__all__ = ["BuiltModel", "ModelSpec", "create_model"]
