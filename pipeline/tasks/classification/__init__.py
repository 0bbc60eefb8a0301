"""Image classification: folder / IDX / synthetic data, a softmax head, top-1 accuracy."""

from pipeline.core.registry import TaskSpec

SPEC = TaskSpec(
    name="classification",
    metric="accuracy",
    data_formats=("synthetic", "folder", "idx"),
    demo_settings=(
        "data.synthetic_samples=1600",
        "model.input_size=64",
        "model.width=0.5",
        "train.epochs=6",
        "train.batch_size=32",
        "prune.epochs=2",
        "qat.epochs=2",
        "evaluate.latency_runs=30",
    ),
    monitor="val_accuracy",
    monitor_mode="max",
    run_options=("top_k",),
)
