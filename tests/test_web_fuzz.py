"""Property test: requests generated from the app's own OpenAPI spec by schemathesis, valid and
invalid, for every operation, sent as an admin, as a labeler and signed out, on SQLite and on
PostgreSQL, never get a 5xx: every bad input is refused with a 4xx."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from test_web_api import make_site, tasks  # noqa: E402,F401 — make_site is the fixture

EXAMPLES = 25  # per operation and generation mode


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_no_request_gets_a_server_error(make_site, mode):
    site = make_site(tasks(5), signin_failures_per_minute=10**9)  # random tokens must not lock the fuzzer out
    for name in ("ada", "alice"):
        site.client(name)  # signs in and confirms the guideline, so requests get past the gate
    auths = [site.bearer(name) for name in ("ada", "alice")] + [{}]
    schema = schemathesis.openapi.from_asgi("/openapi.json", site.app)
    # Signing out ends the session the fuzzer sends: last.
    operations = sorted((result.ok() for result in schema.get_all_operations()), key=lambda op: op.label == "POST /logout")
    assert len(operations) >= 15
    if mode == GenerationMode.NEGATIVE:  # an operation that takes no input has no invalid request
        operations = [op for op in operations if len(op.query) or len(op.body)]
        assert len(operations) >= 4

    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def no_5xx(case):
            for auth in auths:
                response = case.call(headers=auth)
                assert response.status_code < 500, (operation.label, response.status_code, response.text[:300])

        no_5xx()
