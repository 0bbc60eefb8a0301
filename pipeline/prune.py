"""`python -m pipeline.prune` is `edgepipe prune`."""

if __name__ == "__main__":
    from pipeline.cli import stage_main

    stage_main("prune")
