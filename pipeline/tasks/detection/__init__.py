"""Object detection: COCO / VOC / YOLO / synthetic data, an anchor-free detector, COCO mAP."""

from pipeline.core.registry import TaskSpec

SPEC = TaskSpec(
    name="detection",
    metric="map50_95",
    data_formats=("synthetic", "coco", "voc", "yolo"),
    default_config={
        "data": {"synthetic_samples": 1000, "synthetic_classes": 4, "shuffle_buffer": 512, "zoom": [0.75, 1.3]},
        "model": {"input_size": 320, "width": 0.75, "resize": "letterbox", "dropout": 0.0},
        "train": {"epochs": 30, "batch_size": 16, "learning_rate": 0.004, "early_stopping_patience": 8},
        "prune": {"epochs": 6},  # 2 epochs cost 14 mAP points at 50 % sparsity, 6 cost 4.5 (docs)
        "qat": {"epochs": 3},
        # int8 in and out: a uint8 input or output adds QUANTIZE ops that XNNPACK does not take.
        "export": {"representative_samples": 200, "int8_io": "int8"},
    },
    demo_settings=(
        "data.synthetic_samples=600",
        "model.input_size=160",
        "model.width=0.5",
        "train.epochs=12",
        "train.batch_size=16",
        "prune.epochs=1",
        "qat.epochs=1",
        "export.representative_samples=64",
        "evaluate.latency_runs=30",
    ),
    run_options=("score_threshold", "iou_threshold", "max_detections"),
)
