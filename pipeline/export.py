"""`python -m pipeline.export` is `edgepipe export` (the stage itself is pipeline.stages)."""

if __name__ == "__main__":
    from pipeline.cli import stage_main

    stage_main("export")
