"""`python -m pipeline.train` is `edgepipe train` (the stage itself is pipeline.stages)."""

if __name__ == "__main__":
    from pipeline.cli import stage_main

    stage_main("train")
