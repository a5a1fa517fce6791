"""`openapi/openapi.json` is generated from the app and documents every endpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from service.cli import render_openapi

COMMITTED = Path(__file__).parent.parent / "openapi" / "openapi.json"


def test_committed_openapi_document_is_current() -> None:
    assert COMMITTED.read_text() == render_openapi(), (
        "openapi/openapi.json is stale: run `backsync openapi` and commit it"
    )


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    document = json.loads(render_openapi())
    return [
        (path, method, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]


def test_every_operation_has_a_summary_and_typed_responses() -> None:
    for path, method, operation in _operations():
        assert operation.get("summary"), f"{method} {path} has no summary"
        success = [code for code in operation["responses"] if code.startswith("2")]
        assert success, f"{method} {path} has no 2xx response"
        for code in success:
            if code == "204":
                continue
            content = operation["responses"][code].get("content", {})
            typed = {"application/json", "text/event-stream"} & set(content)
            assert typed, f"{method} {path} {code} has no JSON (or event-stream) body"


# Called by providers with the secret token in the URL as the credential, not an API key.
UNAUTHENTICATED = ("/v1/push/",)


def test_v1_operations_document_problem_errors_with_examples() -> None:
    for path, method, operation in _operations():
        if not path.startswith("/v1"):
            continue
        errors = {code: r for code, r in operation["responses"].items() if code[0] == "4"}
        if path.startswith(UNAUTHENTICATED):
            assert "401" not in errors and "404" in errors, f"{method} {path}"
        else:
            assert "401" in errors, f"{method} {path} does not document 401"
        for code, response in errors.items():
            assert list(response["content"]) == ["application/problem+json"], f"{path} {code}"
            problem = response["content"]["application/problem+json"]
            assert problem["schema"] == {"$ref": "#/components/schemas/Problem"}, f"{path} {code}"
            assert problem.get("example"), f"{method} {path} {code} has no example"


def test_request_and_response_models_carry_examples() -> None:
    document = json.loads(render_openapi())
    schemas = document["components"]["schemas"]
    for name in (
        "TaskIn",
        "TaskOut",
        "RunOut",
        "RecordFeed",
        "ChangeFeed",
        "Problem",
        "TaskPatch",
        "PushUrlCreated",
        "PushReceipt",
        "BatchIn",
        "BatchAccepted",
        "BatchOut",
        "SamplePage",
        "HealthChanges",
        "DailyOut",
        "SourcesIn",
    ):
        assert schemas[name].get("examples"), f"{name} has no example"


def test_operation_ids_are_readable_and_unique() -> None:
    """They name a generated client's methods: `list_tasks`, not `list_tasks_v1_tasks_get`."""
    ids = [operation["operationId"] for _, _, operation in _operations()]
    assert len(ids) == len(set(ids)), sorted(ids)
    assert "list_tasks" in ids and "get_run" in ids
    assert not [i for i in ids if "_v1_" in i]
