from pathlib import Path

from pipeline.core import config

CONFIG_DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def test_the_config_reference_is_generated_from_the_config_classes():
    text = CONFIG_DOC.read_text()
    start, end = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"
    block = text[text.index(start) + len(start) : text.index(end)]
    assert block.strip() == config.reference().strip(), (
        "run: edgepipe config --reference and paste it into docs/config.md"
    )
