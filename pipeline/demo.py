"""`python -m pipeline.demo` is `edgepipe demo`."""

if __name__ == "__main__":
    from pipeline.cli import stage_main

    stage_main("demo")
