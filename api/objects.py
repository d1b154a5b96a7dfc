"""``GET /v1/objects/{key}``: serves the embedded bucket for LocalStorage's presigned URLs (HMAC + expiry)."""

from __future__ import annotations

import mimetypes
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status

from hep2.storage import InvalidKeyError, LocalStorage, ObjectNotFoundError, storage_from_settings

router = APIRouter(prefix="/v1/objects", tags=["objects"])


@router.get("/{key:path}", response_class=Response, responses={200: {"content": {"application/octet-stream": {}}}})
def get_object(key: str, expires: Annotated[int, Query(ge=0, le=2**62)],
               signature: Annotated[str, Query(min_length=64, max_length=64, pattern="^[0-9a-f]{64}$")]) -> Response:
    """The object, if the URL's signature is valid and not expired (403 otherwise); 404 on S3 deployments."""
    storage = storage_from_settings()
    if not isinstance(storage, LocalStorage):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "objects are served by the S3 endpoint")
    try:
        if not storage.verify_signature(key, expires, signature):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "invalid or expired signature")
        data = storage.get(key)
    except (InvalidKeyError, ObjectNotFoundError) as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such object") from exc
    media = mimetypes.guess_type(key)[0] or "application/octet-stream"
    return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=60"})
