"""Export variants as data: which model and which quantization preset each one is.

A variant is a (source model, preset) pair from one table, the way model_maker's
``QuantizationConfig.for_int8 / for_float16 / for_dynamic`` name presets; the
exporter applies a preset to a converter by name.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pipeline.core.errors import ConfigError


@dataclass(frozen=True)
class Variant:
    source: str  # float | pruned | qat | pqat: weights in RUN/models
    preset: str  # float32 | float16 | dynamic | int8


VARIANTS: dict[str, Variant] = {
    "float32": Variant("float", "float32"),
    "float16": Variant("float", "float16"),
    "dynamic": Variant("float", "dynamic"),
    "int8": Variant("float", "int8"),
    "pruned_float32": Variant("pruned", "float32"),
    "pruned_int8": Variant("pruned", "int8"),
    "qat_int8": Variant("qat", "int8"),
    "pqat_int8": Variant("pqat", "int8"),
}

# The variant whose figures stand for "the int8 model" (sample grids, PR curves, app
# snippets): plain PTQ first, the one every run has.
INT8_PREFERENCE = ("int8", "qat_int8", "pqat_int8")


def preferred_int8(names: Iterable[str]) -> str | None:
    """The first of :data:`INT8_PREFERENCE` among ``names``, or None."""
    names = set(names)
    return next((n for n in INT8_PREFERENCE if n in names), None)


def check_variant_names(names) -> None:
    """Raise a config error for an unknown variant name (``auto`` means all available)."""
    if "auto" in names and len(names) > 1:
        raise ConfigError(
            f"export.variants: 'auto' means every available variant; do not mix it with names ({list(names)})"
        )
    for n in names:
        if n != "auto" and n not in VARIANTS:
            raise ConfigError(f"export.variants: unknown variant {n!r}. Expected 'auto' or some of {sorted(VARIANTS)}.")
