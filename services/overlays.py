"""The overlay of an analysed slide: rendered on first request, then cached in the bucket.

The worker stores only the overlay layer (``analysis.overlay.render_layer``) under
``SpecimenResult.overlay_layer_key``. The first caller that needs the overlay (the specimen detail, so the
dashboard and the report page; ``hep2 demo``) fetches the slide's registered object, checks it against the
slide's registered SHA-256 (a changed or deleted object is refused with the reason, never rendered), decodes
it as the worker did, composes it with the layer and stores the PNG under ``overlay_key``
(``overlays/<slide>/attempt-<n>.png``); later callers find it there. Results written before this change have
no layer: their ``overlay_key`` holds the full overlay the worker made, served as it is. Two first requests
at once both render and store the same bytes (deterministic), which is harmless.
"""

from __future__ import annotations

import hashlib
import logging
import time

from analysis.overlay import overlay_of_upload
from analysis.types import InvalidImageError
from db.models import SlideImage, SpecimenResult
from hep2.settings import get_settings
from hep2.storage import ObjectNotFoundError, ObjectStorage

log = logging.getLogger(__name__)


class OverlayUnavailableError(Exception):
    """The overlay cannot be rendered; the message says why."""


def overlay_or_problem(storage: ObjectStorage, slide: SlideImage,
                       result: SpecimenResult | None) -> tuple[str | None, str | None]:
    """(key of ``result``'s overlay PNG, rendered first if needed; why there is none) for the callers that show
    it (the specimen detail, ``hep2 demo``), decoding as the workers do (``HEP2_ACCEPT_16BIT``)."""
    if result is None:
        return None, None
    try:
        return overlay_key(storage, slide, result, get_settings().accept_16bit), None
    except OverlayUnavailableError as exc:
        return None, str(exc)


def overlay_key(storage: ObjectStorage, slide: SlideImage, result: SpecimenResult, accept_16bit: bool) -> str | None:
    """The key of ``result``'s overlay PNG, rendered and stored first if it is not there yet (None: the result
    has no overlay). Raises :class:`OverlayUnavailableError` when it cannot be rendered, also when the object
    storage cannot be reached (the overlay is an aid: the result it belongs to is still shown)."""
    if result.overlay_key is None or result.overlay_layer_key is None:
        return result.overlay_key  # None, or the full overlay the worker made (results before the layer)
    try:
        return _cached_or_rendered(storage, slide, result, accept_16bit)
    except OverlayUnavailableError:
        raise
    except Exception as exc:  # storage down or refusing: each backend raises its own errors
        log.exception("overlay of slide %s could not be fetched or stored", slide.id)
        raise OverlayUnavailableError(f"the overlay cannot be shown now: the object storage did not answer "
                                      f"({type(exc).__name__}); try again later") from exc


def _cached_or_rendered(storage: ObjectStorage, slide: SlideImage, result: SpecimenResult,
                        accept_16bit: bool) -> str:
    try:
        storage.head(result.overlay_key)
        return result.overlay_key
    except ObjectNotFoundError:
        pass
    started = time.perf_counter()
    storage.put(result.overlay_key, render(storage, slide, result, accept_16bit), "image/png")
    log.info("overlay of slide %s rendered in %.0f ms", slide.id, (time.perf_counter() - started) * 1000.0)
    return result.overlay_key


def render(storage: ObjectStorage, slide: SlideImage, result: SpecimenResult, accept_16bit: bool) -> bytes:
    """The overlay PNG of ``result``: the slide's registered bytes (checked) composed with the result's layer."""
    try:
        stored = storage.fetch(slide.key, version_id=slide.version_id)
    except ObjectNotFoundError:
        raise OverlayUnavailableError(f"the analysed image {slide.key!r} no longer exists (deleted, or its "
                                      "version removed): the overlay cannot be drawn") from None
    sha256 = hashlib.sha256(stored.data).hexdigest()
    if slide.sha256 is None or sha256 != slide.sha256:
        raise OverlayUnavailableError(
            f"the image under {slide.key!r} is not the one analysed (sha256 {(slide.sha256 or '?')[:16]}… "
            f"registered, {sha256[:16]}… now): the overlay is not drawn on other bytes")
    try:
        layer = storage.get(result.overlay_layer_key or "")
    except ObjectNotFoundError:
        raise OverlayUnavailableError(f"the overlay layer {result.overlay_layer_key!r} is missing") from None
    try:
        return overlay_of_upload(stored.data, layer, accept_16bit)
    except (InvalidImageError, ValueError) as exc:
        raise OverlayUnavailableError(f"the overlay cannot be drawn: {exc}") from exc
