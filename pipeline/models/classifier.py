"""Image classifier: backbone → 1×1 conv → global pool → dense → softmax."""

from __future__ import annotations

from pipeline._keras import keras, layers
from pipeline.core.config import ModelConfig
from pipeline.models.backbones import build_backbone


def build_classifier(cfg: ModelConfig, num_classes: int) -> keras.Model:
    """A functional classifier whose every layer TFMOT can prune and quantize.

    The softmax runs in float32 so mixed precision never rounds the scores.
    """
    # === Layers ===
    inputs = keras.Input((cfg.input_size, cfg.input_size, cfg.channels), name="image")
    x = build_backbone(inputs, cfg).top  # the backbone's last, wide 1×1 conv
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    if cfg.dropout:
        x = layers.Dropout(cfg.dropout, name="dropout")(x)
    x = layers.Dense(num_classes, name="logits")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="scores")(x)
    # === Functional Model ===
    return keras.Model(inputs, outputs, name=f"{cfg.backbone}_classifier")
