"""The staining-pattern vocabulary shared by training, workers, database and API.

The cell classifier knows the six I3A Task-1 classes. ICAP (International Consensus on ANA Patterns,
anapatterns.org) codes are attached for reporting. Specimen results may also be ``negative`` (no
fluorescence) or ``other`` (outside the model's vocabulary: sent to review).
"""

from __future__ import annotations

from enum import StrEnum


class Pattern(StrEnum):
    HOMOGENEOUS = "homogeneous"
    SPECKLED = "speckled"
    NUCLEOLAR = "nucleolar"
    CENTROMERE = "centromere"
    NUCLEAR_MEMBRANE = "nuclear_membrane"
    GOLGI = "golgi"


CELL_PATTERNS: tuple[Pattern, ...] = tuple(Pattern)
"""Class order of every cell classifier output (index i of a probability vector is CELL_PATTERNS[i])."""

NEGATIVE = "negative"
OTHER = "other"

ICAP_CODES: dict[str, str] = {
    Pattern.HOMOGENEOUS: "AC-1",
    Pattern.SPECKLED: "AC-2,4,5",
    Pattern.NUCLEOLAR: "AC-8,9,10",
    Pattern.CENTROMERE: "AC-3",
    Pattern.NUCLEAR_MEMBRANE: "AC-11,12",
    Pattern.GOLGI: "AC-22",
    NEGATIVE: "AC-0",
}

I3A_LABELS: dict[str, Pattern] = {
    "Homogeneous": Pattern.HOMOGENEOUS,
    "Speckled": Pattern.SPECKLED,
    "Nucleolar": Pattern.NUCLEOLAR,
    "Centromere": Pattern.CENTROMERE,
    "NuMem": Pattern.NUCLEAR_MEMBRANE,
    "Golgi": Pattern.GOLGI,
}
"""Label spelling of the I3A Task-1 ``labels.csv`` → our vocabulary."""

INTENSITY_CLASSES: tuple[str, ...] = ("negative", "intermediate", "positive")


def parse_pattern(label: str) -> Pattern:
    """Accept our own spelling or the I3A one ("NuMem", "Golgi", ...); raise ValueError otherwise."""
    if label in I3A_LABELS:
        return I3A_LABELS[label]
    try:
        return Pattern(label.strip().lower())
    except ValueError:
        known = ", ".join([p.value for p in Pattern] + list(I3A_LABELS))
        raise ValueError(f"unknown cell pattern {label!r}; expected one of: {known}") from None
