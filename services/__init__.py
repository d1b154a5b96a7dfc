"""The service layer: operations that both the HTTP API and the ``hep2`` CLI offer, written once.

Each function takes the caller's session and actor, writes its audit row in the same transaction, commits,
and sends Celery tasks only after the commit. Failures are :class:`NotFoundError` (404 / bad parameter) or
:class:`ConflictError` (409 / exit code 1); the API and the CLI only translate them.
"""

from __future__ import annotations


class NotFoundError(LookupError):
    """The object the operation names does not exist."""


class ConflictError(Exception):
    """The object exists but is in a state that does not allow the operation."""
