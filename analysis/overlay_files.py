"""Full overlays as files, for the command line (``hep2 analyze`` / ``hep2 evaluate fields --overlay-dir``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from analysis.overlay import overlay_of_upload

if TYPE_CHECKING:
    from analysis.analyze import SlideAnalysis


def write_overlay(path: Path, data: bytes, analysis: SlideAnalysis, accept_16bit: bool) -> None:
    """Compose the overlay of ``data`` (analysed as ``analysis``) into ``path``; the work (decode, compose,
    encode, write) is timed as ``overlay_render`` in ``analysis.timings_ms``."""
    started = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(overlay_of_upload(data, analysis.overlay_layer, accept_16bit))
    analysis.timings_ms["overlay_render"] = round((time.perf_counter() - started) * 1000.0, 1)
