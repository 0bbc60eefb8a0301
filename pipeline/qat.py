"""`python -m pipeline.qat` is `edgepipe qat`."""

if __name__ == "__main__":
    from pipeline.cli import stage_main

    stage_main("qat")
