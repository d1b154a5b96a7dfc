"""The one place where the pipeline's models are built: :func:`build_models` for the worker's model cache,
``hep2 analyze`` / ``hep2 evaluate fields``, training snapshots and ``hep2 bench``.

Which weights: those the caller resolved (the worker and snapshots ask the model registry:
``training.registry.resolve_weights``), else a pinned classifier (``HEP2_CELL_MODEL_PATH``), else the
models bundled with the code. Which segmenter: a registry U-Net when one is in production, else
``HEP2_SEGMENTER`` (``auto`` = the bundled card's choice) with the lab's classical parameters.
"""

from __future__ import annotations

from analysis.analyze import Models
from analysis.config import PipelineConfig
from analysis.models import ModelWeights
from analysis.models.unet import UnetSegmenter, unet_promoted
from analysis.segmentation import ClassicalSegmenter
from hep2.settings import Settings

SEGMENTER_KINDS = ("auto", "unet", "classical")


def default_segmenter(device: str = "auto", kind: str = "auto",
                      classical: ClassicalSegmenter | None = None) -> UnetSegmenter | ClassicalSegmenter:
    """``kind="auto"``: the U-Net when its bundled weights exist and its model card does not say
    ``"promoted": false``, else the classical baseline (a promotion gate, decided on validation fields: a
    U-Net below the baseline is shipped for inspection but not used). ``"unet"`` / ``"classical"`` force one.
    ``classical``: the baseline with a lab's parameters (``PipelineConfig.segmentation``)."""
    if kind not in SEGMENTER_KINDS:
        raise ValueError(f"unknown segmenter {kind!r}: auto, unet or classical")
    use_unet = kind == "unet" or (kind == "auto" and unet_promoted())
    return UnetSegmenter(device=device) if use_unet else classical or ClassicalSegmenter()


def build_models(settings: Settings, config: PipelineConfig, weights: ModelWeights | None = None,
                 segmenter: str | None = None, device: str = "auto") -> Models:
    """The segmenter and cell classifier for ``config`` (the lab's pipeline configuration).

    ``weights``: resolved by the caller (registry); without them the pinned ``settings.cell_model_path``
    or the bundled classifier. ``segmenter`` overrides ``settings.segmenter`` (auto | unet | classical).
    """
    weights = weights or ModelWeights(cell_pattern=settings.cell_model_path)
    if weights.segmentation is not None:
        seg: UnetSegmenter | ClassicalSegmenter = UnetSegmenter(weights=weights.segmentation, device=device)
    else:
        seg = default_segmenter(device=device, kind=segmenter or settings.segmenter, classical=config.segmentation)
    return Models(segmenter=seg, classifier_weights=weights.cell_pattern, device=device)
