from pathlib import Path

from pipeline import config

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_config_reference_is_generated_from_the_config_classes():
    text = README.read_text()
    start, end = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"
    block = text[text.index(start) + len(start) : text.index(end)]
    assert block.strip() == config.reference().strip(), (
        "run: python -m pipeline.cli config --reference and paste it into README.md"
    )
