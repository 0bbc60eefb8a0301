"""`python -m pipeline.evaluate` is `edgepipe evaluate` (the stage itself is pipeline.stages)."""

if __name__ == "__main__":
    from pipeline.cli import stage_main

    stage_main("evaluate")
