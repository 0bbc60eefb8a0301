"""`python -m pipeline.all` is `edgepipe all`."""

if __name__ == "__main__":
    from pipeline.cli import stage_main

    stage_main("all")
