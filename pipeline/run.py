"""`python -m pipeline.run` is `edgepipe run`."""

if __name__ == "__main__":
    from pipeline.cli import stage_main

    stage_main("run")
