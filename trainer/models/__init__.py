"""Models: backbones and heads, segmentation decoders, pretrained weights, freezing."""

from trainer.models.backbones import BuiltModel, ModelSpec, create_model

__all__ = ["BuiltModel", "ModelSpec", "create_model"]
