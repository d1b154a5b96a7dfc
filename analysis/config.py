"""The lab's pipeline configuration: every tunable rule of stages 2-5, defaults in code.

``load_config(path)`` reads a JSON or TOML file with the sections ``segmentation``, ``cells``,
``intensity``, ``specimen``, ``quality`` and ``report`` (any subset of fields; the segmentation section sets
the classical segmenter's parameters and is applied where the models are built,
:func:`analysis.build.build_models`),
and without a path the file named by the ``HEP2_PIPELINE_CONFIG`` environment variable, if set (a lab's
calibrated cut-offs). Importing this module does not import torch.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

from pydantic import BaseModel

from analysis.cells import CellConfig
from analysis.intensity import IntensityConfig
from analysis.quality import QualityConfig
from analysis.report import ReportConfig
from analysis.segmentation import ClassicalSegmenter
from analysis.specimen import SpecimenConfig

CONFIG_ENV = "HEP2_PIPELINE_CONFIG"


class PipelineConfig(BaseModel):
    """All tunable rules of stages 2-5 (documented in docs/pipeline.md and docs/segmentation.md)."""

    segmentation: ClassicalSegmenter = ClassicalSegmenter()  # the classical segmenter's parameters
    cells: CellConfig = CellConfig()
    intensity: IntensityConfig = IntensityConfig()
    specimen: SpecimenConfig = SpecimenConfig()
    quality: QualityConfig = QualityConfig()  # the image-quality gate (analysis/quality.py)
    report: ReportConfig = ReportConfig()  # specimen reports: aggregation and codes (docs/reports.md)


def load_config(path: str | Path | None = None) -> PipelineConfig:
    """Defaults overridden by a JSON/TOML file (``path`` or ``$HEP2_PIPELINE_CONFIG``)."""
    path = path or os.environ.get(CONFIG_ENV) or None
    if not path:
        return PipelineConfig()
    p = Path(path)
    data = tomllib.loads(p.read_text()) if p.suffix.lower() == ".toml" else json.loads(p.read_text())
    return PipelineConfig.model_validate(data)
