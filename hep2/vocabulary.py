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


# ------------------------------------------------------------------------------------------------ ICAP tree
ICAP_TREE: dict[str, str] = {
    "AC-0": "negative",
    "AC-1": "nuclear homogeneous",
    "AC-2": "nuclear dense fine speckled",
    "AC-3": "nuclear centromere",
    "AC-4": "nuclear fine speckled",
    "AC-5": "nuclear large/coarse speckled",
    "AC-6": "nuclear multiple nuclear dots",
    "AC-7": "nuclear few nuclear dots",
    "AC-8": "nuclear homogeneous nucleolar",
    "AC-9": "nuclear clumpy nucleolar",
    "AC-10": "nuclear punctate nucleolar",
    "AC-11": "nuclear smooth nuclear envelope",
    "AC-12": "nuclear punctate nuclear envelope",
    "AC-13": "nuclear PCNA-like",
    "AC-14": "nuclear CENP-F-like",
    "AC-29": "nuclear topo I-like",
    "AC-15": "cytoplasmic fibrillar linear",
    "AC-16": "cytoplasmic fibrillar filamentous",
    "AC-17": "cytoplasmic fibrillar segmental",
    "AC-18": "cytoplasmic discrete dots",
    "AC-19": "cytoplasmic dense fine speckled",
    "AC-20": "cytoplasmic fine speckled",
    "AC-21": "cytoplasmic reticular/AMA",
    "AC-22": "cytoplasmic polar/Golgi-like",
    "AC-23": "cytoplasmic rods and rings",
    "AC-24": "mitotic centrosome",
    "AC-25": "mitotic spindle fibres",
    "AC-26": "mitotic NuMA-like",
    "AC-27": "mitotic intercellular bridge",
    "AC-28": "mitotic chromosome coat",
}
"""Every ICAP code a reviewer may give (nuclear AC-1..14 and 29, cytoplasmic AC-15..23, mitotic AC-24..28,
negative AC-0), with its name (anapatterns.org)."""

PATTERN_OF_ICAP: dict[str, str] = {
    "AC-0": NEGATIVE, "AC-1": Pattern.HOMOGENEOUS.value, "AC-2": Pattern.SPECKLED.value,
    "AC-4": Pattern.SPECKLED.value, "AC-5": Pattern.SPECKLED.value, "AC-29": Pattern.SPECKLED.value,
    "AC-3": Pattern.CENTROMERE.value, "AC-8": Pattern.NUCLEOLAR.value, "AC-9": Pattern.NUCLEOLAR.value,
    "AC-10": Pattern.NUCLEOLAR.value, "AC-11": Pattern.NUCLEAR_MEMBRANE.value,
    "AC-12": Pattern.NUCLEAR_MEMBRANE.value, "AC-22": Pattern.GOLGI.value,
}
"""ICAP code → this service's specimen pattern: one of the six classifier classes, ``negative``, and for every
code not listed (outside the classifier's vocabulary) ``other``. Explicit, so that a correction to AC-21 never
becomes a training label of a class the classifier knows."""

MIXED_SEPARATOR = "+"
"""A mixed pattern is two ICAP codes joined by this: ``AC-1+AC-22``."""


def pattern_of_icap(codes: str) -> str:
    """The specimen pattern of an ICAP code, or of the first of a mixed pair (``AC-1+AC-22`` → homogeneous)."""
    first = codes.split(MIXED_SEPARATOR)[0].strip()
    if first not in ICAP_TREE:
        raise ValueError(f"unknown ICAP code {first!r}; expected one of {', '.join(ICAP_TREE)}")
    return PATTERN_OF_ICAP.get(first, OTHER)


def icap_of_pattern(pattern: str | None) -> str | None:
    """The ICAP code(s) reported for a specimen pattern (``ICAP_CODES``); None for ``other``/unknown."""
    return ICAP_CODES.get(pattern) if pattern else None


NOT_A_CELL = "not_a_cell"
CELL_REVIEW_LABELS: tuple[str, ...] = (*(p.value for p in CELL_PATTERNS), OTHER, NOT_A_CELL)
"""What a reviewer may say about one cell: a classifier class, ``other`` (a pattern outside the six, e.g. a
mitotic or cytoplasmic one) or ``not_a_cell`` (debris, a fragment, a segmentation error)."""

TRAINING_LABEL_OF_CELL_REVIEW: dict[str, Pattern | None] = {
    **{p.value: p for p in CELL_PATTERNS}, OTHER: None, NOT_A_CELL: None}
"""Cell review → training label of the six-class classifier; None: not a training label (left out)."""
