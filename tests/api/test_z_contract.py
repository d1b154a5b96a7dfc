"""Contract: schemathesis generates requests from the published OpenAPI schema; none may get a 5xx.

Runs last in this folder (it writes random reviews and keys). Key revocation is left out so that it cannot
revoke the keys the calls use (the role tests cover it), and so is readiness (tests/integration/test_health.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from api.app import create_app
from tests.api.conftest import SentTasks, auth

pytestmark = pytest.mark.integration


# readiness is covered by tests/integration/test_health.py (the stubbed broker below makes it 503 here)
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app()).exclude(
    path=["/v1/api-keys/{key_id}/revoke", "/health/ready"])


@pytest.fixture(scope="module", autouse=True)
def no_tasks(api_env: dict[str, str]) -> Iterator[None]:
    """No Celery task leaves the process."""
    with pytest.MonkeyPatch.context() as patch:
        recorder = SentTasks()
        patch.setattr("workers.celery_app.celery_client", lambda settings=None: recorder)
        yield


@schema.parametrize()
@settings(max_examples=4, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: Any, keys: dict[str, str]) -> None:
    for key in (keys["admin"], keys["scanner"]):
        response = case.call(headers=auth(key))
        body = response.content  # bytes: some routes return images
        assert response.status_code < 500, f"{case.method} {case.formatted_path}: {body[:300]!r}"
        assert b"Traceback" not in body
