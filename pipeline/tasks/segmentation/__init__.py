"""Semantic segmentation: mask / VOC / COCO / synthetic data, DeepLabV3+-lite, mIoU."""

from pipeline.core.registry import TaskSpec

# Prepared masks mark ignored pixels with 255 whatever data.ignore_index the files use,
# so the loss, the metric and the evaluator need no configuration.
IGNORE = 255

SPEC = TaskSpec(
    name="segmentation",
    metric="miou",
    data_formats=("synthetic", "masks", "voc", "coco"),
    # 256×256; width, samples and epochs sized so the default chain trains in about
    # 10 minutes on 2 CPU cores.
    default_config={
        "data": {"synthetic_samples": 480, "synthetic_classes": 5},
        "model": {"input_size": 256, "width": 0.35, "dropout": 0.0},
        "train": {"epochs": 8, "batch_size": 16, "learning_rate": 0.005, "early_stopping_patience": 0},
        "prune": {"epochs": 1},
        "qat": {"epochs": 1},
        "export": {"representative_samples": 64},
        "evaluate": {"batch_size": 8},
    },
    demo_settings=(
        "data.synthetic_samples=320",
        "model.input_size=128",
        "train.epochs=6",
        "prune.epochs=1",
        "qat.epochs=1",
        "export.representative_samples=32",
        "evaluate.latency_runs=30",
    ),
    monitor="val_miou",
    monitor_mode="max",
    run_options=("alpha",),
)
