"""Admin REST specifics: OpenAPI, uploads (text and base64), validation, body limits."""

from __future__ import annotations

import base64
from collections.abc import Callable

import httpx
import pytest
from parley_kb.admin_api import create_admin_app
from parley_kb.testing import KbStack, auth_headers, make_pdf
from parley_runtime.auth import TokenVerifier
from parley_runtime.testing import TEST_KEYS

pytestmark = pytest.mark.integration


async def test_openapi_documents_every_endpoint(kb_stack: KbStack) -> None:
    spec = (await kb_stack.http.get("/openapi.json")).json()
    assert spec["info"]["title"] == "Parley kb-svc admin API"
    assert set(spec["paths"]) >= {"/v1/documents", "/v1/documents/{document_id}", "/v1/search",
                                  "/v1/usage", "/healthz"}
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert (await kb_stack.http.get("/healthz")).json() == {"status": "ok"}


async def test_uploads_and_validation(kb_stack: KbStack, unique: Callable[[str], str]) -> None:
    http, acme = kb_stack.http, auth_headers("acme")
    doc = unique("manual")
    pdf = base64.b64encode(make_pdf(["Gizmotron manual", "Oil the gizmotron hinge."])).decode()
    r = await http.put(f"/v1/documents/folder/{doc}.pdf", headers=acme, json={
        "content_type": "pdf", "content_base64": pdf, "title": "Manual",
        "metadata": {"lang": "en"}})
    assert r.status_code == 200 and r.json()["outcome"] == "created", r.text
    r = await http.get(f"/v1/documents/folder/{doc}.pdf", headers=acme)
    assert r.json()["content_type"] == "pdf" and r.json()["metadata"] == {"lang": "en"}
    r = await http.post("/v1/search", headers=acme, json={
        "query": "gizmotron hinge", "mode": "full_text", "metadata_filter": {"lang": "en"}})
    assert r.json()["hits"][0]["document_id"] == f"folder/{doc}.pdf"
    bad = [
        ({"content_type": "text"}, "exactly one"),
        ({"content_type": "text", "content": "x", "content_base64": "eA=="}, "exactly one"),
        ({"content_type": "pdf", "content_base64": "not base64!"}, "base64"),
        ({"content_type": "docx", "content": "x"}, "content_type"),
        ({"content": "no type"}, "content_type"),
        # A lone surrogate escaped in JSON decodes to a str that is not valid UTF-8.
        (b'{"content_type": "text", "content": "\\ud800"}', "UTF-8"),
        # ... and in the other text fields it failed inside the database driver (a 500).
        (b'{"content_type": "text", "content": "x", "title": "\\ud800"}', "title"),
        (b'{"content_type": "text", "content": "x", "source_uri": "\\udfff"}', "source_uri"),
        (b'{"content_type": "text", "content": "x", "metadata": {"k": "\\ud800"}}', "metadata"),
        (b'{"content_type": "text", "content": "x", "metadata": {"n": NaN}}', "finite"),
    ]
    for body, fragment in bad:
        if isinstance(body, bytes):
            r = await http.put(f"/v1/documents/{doc}-bad", content=body,
                               headers={**acme, "Content-Type": "application/json"})
        else:
            r = await http.put(f"/v1/documents/{doc}-bad", headers=acme, json=body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["code"] == "INVALID_ARGUMENT"
        assert fragment in r.json()["error"]["message"], r.text
    r = await http.post("/v1/search", headers=acme, json={"query": "x", "top_k": -1})
    assert r.status_code == 400
    for body in (b'{"query": "x\\ud800"}', b'{"query": "x", "document_ids": ["\\ud800"]}',
                 b'{"query": "x", "metadata_filter": {"\\ud800": 1}}'):
        r = await http.post("/v1/search", content=body,
                            headers={**acme, "Content-Type": "application/json"})
        assert r.status_code == 400, (body, r.text)
    r = await http.get("/v1/documents", headers=acme, params={"page_token": "garbage"})
    assert r.status_code == 400
    r = await http.put("/v1/documents/x", headers=auth_headers("frozen-co"),
                       json={"content_type": "text", "content": "x"})
    assert r.status_code == 412 and r.json()["error"]["code"] == "FAILED_PRECONDITION"


async def test_request_body_limit(kb_stack: KbStack) -> None:
    app = create_admin_app(kb_stack.runtime.kb, verifier=TokenVerifier(keys=dict(TEST_KEYS)),
                           max_body_bytes=1000)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://kb") as http:
        r = await http.put("/v1/documents/big", headers=auth_headers("acme"),
                           json={"content_type": "text", "content": "x" * 5000})
        assert r.status_code == 413 and r.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"

        async def chunks():  # no Content-Length: counted as it streams
            for _ in range(10):
                yield b"x" * 500

        r = await http.put("/v1/documents/big", headers=auth_headers("acme"), content=chunks())
        assert r.status_code == 413


async def test_ids_in_the_path_are_checked_on_the_raw_bytes(
    kb_stack: KbStack, unique: Callable[[str], str]
) -> None:
    """`doc%0A` must not reach `doc` (a route's `$` matches before a trailing newline) and
    `bad%FF` must not become `bad\ufffd` (shared with `bad%FE`): both are 400, nothing written."""
    http, acme = kb_stack.http, auth_headers("acme")
    doc = unique("nl")
    r = await http.put(f"/v1/documents/{doc}", headers=acme,
                       json={"content_type": "text", "content": "keep me"})
    assert r.status_code == 200, r.text
    for path in (f"/v1/documents/{doc}%0A", f"/v1/documents/{doc}%0D%0A",
                 f"/v1/documents/{doc}%FF", f"/v1/documents/{doc}%ED%A0%80"):
        for method in ("DELETE", "PUT", "GET"):
            r = await http.request(method, path, headers=acme,
                                   json={"content_type": "text", "content": "x"})
            assert r.status_code == 400, (method, path, r.text)
            assert r.json()["error"]["code"] == "INVALID_ARGUMENT"
    r = await http.get(f"/v1/documents/{doc}", headers=acme)
    assert r.status_code == 200, "the document was not deleted through doc%0A"
    r = await http.get("/v1/documents", headers=acme, params={"page_size": 500})
    ids = [d["document_id"] for d in r.json()["documents"]]
    assert not any(i.startswith(doc) and i != doc for i in ids), ids


async def test_framework_errors_have_the_apis_error_shape(kb_stack: KbStack) -> None:
    http, acme = kb_stack.http, auth_headers("acme")
    r = await http.get("/v1/nowhere", headers=acme)
    assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND"
    r = await http.patch("/v1/usage", headers=acme)
    assert r.status_code == 405 and r.json()["error"]["code"] == "METHOD_NOT_ALLOWED"
