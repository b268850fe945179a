"""Tenant isolation: two tenants with overlapping content; every API (gRPC and admin REST)
tried cross-tenant, with forged tenant ids and with SQL-injection strings. Zero rows of the
other tenant are ever returned or changed."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import struct_pb2
from parley.common.v1 import common_pb2
from parley.kb.v1 import kb_pb2
from parley_kb.testing import KbStack, auth_headers, md_for, token_for

pytestmark = pytest.mark.integration

SHARED = """# Employee handbook

## Security

Badges must be worn at all times. Lost badges are reported to the security desk.

## Secrets

The vault combination for {tenant} is {secret}. Never share it outside {tenant}.
"""
SECRETS = {"acme": "ACMESECRET7781", "globex": "GLOBEXSECRET5523"}

INJECTIONS = [
    "' OR '1'='1",
    "'; DROP TABLE kb.chunks; --",
    "globex",
    "x' OR tenant_id <> current_setting('app.tenant_id', true) --",
    "acme'); SELECT set_config('app.tenant_id', 'globex', false); --",
    "$1",
    ") OR (1=1",
    "%' OR 1=1 --",
    "\\' OR 1=1; --",
    "\" OR \"\"=\"",
    "GLOBEXSECRET5523 | !acme & *",
    "'; UPDATE kb.documents SET title='pwned'; --",
]


def _struct(d: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(d)
    return s


async def _snapshot(stack: KbStack, tenant: str) -> tuple[Any, ...]:
    """Every row the tenant owns, read as the superuser (RLS does not hide anything here)."""
    conn = await asyncpg.connect(stack.db.admin_dsn)
    try:
        docs = await conn.fetch(
            "SELECT document_id, title, content_hash, metadata::text, chunk_count, updated_at"
            " FROM kb.documents WHERE tenant_id = $1 ORDER BY document_id", tenant)
        chunks = await conn.fetch(
            "SELECT document_id, chunk_index, body FROM kb.chunks WHERE tenant_id = $1"
            " ORDER BY 1, 2", tenant)
        emb = await conn.fetchval(
            "SELECT md5(string_agg(embedding::text, ',' ORDER BY document_id, chunk_index))"
            " FROM kb.emb_1 WHERE tenant_id = $1", tenant)
        counters = await conn.fetchrow(
            "SELECT documents, bytes, chunks FROM kb.tenants WHERE tenant_id = $1", tenant)
        tables = await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'kb'")
        return (tuple(map(tuple, docs)), tuple(map(tuple, chunks)), emb, tuple(counters or ()),
                tables)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
async def two_tenants(kb_stack: KbStack) -> KbStack:
    async with kb_stack.channel() as ch:
        stub = kb_stack.stub(ch)
        for tenant, secret in SECRETS.items():
            md = md_for(tenant)
            for doc_id in ("iso-handbook", "iso-faq"):
                await stub.IngestDocument(kb_pb2.IngestDocumentRequest(
                    document_id=doc_id, title=f"{tenant} {doc_id}",
                    content_type=kb_pb2.CONTENT_TYPE_MARKDOWN,
                    content=SHARED.format(tenant=tenant, secret=secret).encode(),
                    metadata=_struct({"owner": tenant, "kind": "handbook"})), metadata=md)
            await stub.IngestDocument(kb_pb2.IngestDocumentRequest(
                document_id=f"iso-only-{tenant}", content_type=kb_pb2.CONTENT_TYPE_TEXT,
                content=f"Private note of {tenant}: {secret}.".encode(),
                metadata=_struct({"owner": tenant})), metadata=md)
    return kb_stack


def _assert_only(hits: Any, tenant: str) -> None:
    """No hit comes from another tenant: no foreign owner, secret or tenant-only document."""
    for hit in hits:
        if isinstance(hit, dict):
            metadata, text, doc_id = hit["metadata"], hit["text"], hit["document_id"]
        else:
            metadata = dict(hit.metadata.items())
            text, doc_id = hit.text, hit.document_id
        assert metadata.get("owner", tenant) == tenant, hit
        for other, secret in SECRETS.items():
            if other != tenant:
                assert secret not in text, hit
                assert doc_id != f"iso-only-{other}", hit


async def test_search_sees_only_own_rows_in_every_mode(two_tenants: KbStack) -> None:
    async with two_tenants.channel() as ch:
        stub = two_tenants.stub(ch)
        for tenant in SECRETS:
            for mode in (kb_pb2.SEARCH_MODE_VECTOR, kb_pb2.SEARCH_MODE_FULL_TEXT,
                         kb_pb2.SEARCH_MODE_HYBRID):
                for query in ("vault combination", SECRETS["globex"], SECRETS["acme"]):
                    res = await stub.Search(kb_pb2.SearchRequest(query=query, mode=mode, top_k=50),
                                            metadata=md_for(tenant))
                    _assert_only(res.hits, tenant)
                own = await stub.Search(kb_pb2.SearchRequest(
                    query="vault combination", mode=mode, top_k=3), metadata=md_for(tenant))
                assert own.hits and SECRETS[tenant] in " ".join(h.text for h in own.hits)
            other = next(t for t in SECRETS if t != tenant)
            # Filters naming the other tenant's documents or metadata find nothing.
            for request in (
                kb_pb2.SearchRequest(query="note", document_ids=[f"iso-only-{other}"]),
                kb_pb2.SearchRequest(query="vault", metadata_filter=_struct({"owner": other})),
            ):
                res = await stub.Search(request, metadata=md_for(tenant))
                assert list(res.hits) == []


async def test_documents_of_another_tenant_cannot_be_read_listed_or_changed(
    two_tenants: KbStack,
) -> None:
    before = await _snapshot(two_tenants, "globex")
    async with two_tenants.channel() as ch:
        stub = two_tenants.stub(ch)
        md = md_for("acme")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetDocument(kb_pb2.GetDocumentRequest(document_id="iso-only-globex"),
                                   metadata=md)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        # The same id in both tenants: each sees its own.
        got = await stub.GetDocument(kb_pb2.GetDocumentRequest(document_id="iso-handbook"),
                                     metadata=md)
        assert got.document.title == "acme iso-handbook"
        listed = await stub.ListDocuments(kb_pb2.ListDocumentsRequest(
            page=common_pb2.PageRequest(page_size=500)), metadata=md)
        assert "iso-only-globex" not in {d.document_id for d in listed.documents}
        assert all(d.metadata["owner"] == "acme" for d in listed.documents
                   if "owner" in d.metadata)
        deleted = await stub.DeleteDocument(
            kb_pb2.DeleteDocumentRequest(document_id="iso-only-globex"), metadata=md)
        assert not deleted.deleted and deleted.chunks_deleted == 0
        # Ingesting under the other tenant's document id creates acme's own document.
        created = await stub.IngestDocument(kb_pb2.IngestDocumentRequest(
            document_id="iso-only-globex", content_type=kb_pb2.CONTENT_TYPE_TEXT,
            content=b"acme overwrites?", metadata=_struct({"owner": "acme"})), metadata=md)
        assert created.outcome == kb_pb2.INGEST_OUTCOME_CREATED
        await stub.DeleteDocument(kb_pb2.DeleteDocumentRequest(document_id="iso-only-globex"),
                                  metadata=md)
    assert await _snapshot(two_tenants, "globex") == before


async def test_forged_tenant_ids_are_refused(two_tenants: KbStack) -> None:
    before = await _snapshot(two_tenants, "globex")
    async with two_tenants.channel() as ch:
        stub = two_tenants.stub(ch)
        calls: list[Callable[[list[tuple[str, str]]], Any]] = [
            lambda md: stub.IngestDocument(kb_pb2.IngestDocumentRequest(
                document_id="iso-only-globex", content_type=kb_pb2.CONTENT_TYPE_TEXT,
                content=b"forged"), metadata=md),
            lambda md: stub.Search(kb_pb2.SearchRequest(query="vault"), metadata=md),
            lambda md: stub.GetDocument(kb_pb2.GetDocumentRequest(
                document_id="iso-only-globex"), metadata=md),
            lambda md: stub.ListDocuments(kb_pb2.ListDocumentsRequest(), metadata=md),
            lambda md: stub.DeleteDocument(kb_pb2.DeleteDocumentRequest(
                document_id="iso-only-globex"), metadata=md),
        ]
        forged = [
            # A token for acme with metadata naming globex.
            (md_for("acme", header_tenant="globex"), grpc.StatusCode.PERMISSION_DENIED),
            # A token naming no tenant cannot act for one.
            ([("authorization", f"Bearer {token_for(None)}"),
              ("x-parley-tenant-id", "globex")], grpc.StatusCode.PERMISSION_DENIED),
            ([("authorization", f"Bearer {token_for(None)}")], grpc.StatusCode.UNAUTHENTICATED),
            # A token claiming globex but signed with a key nobody trusts.
            ([("authorization", f"Bearer {token_for('globex', secret='x' * 48)}")],
             grpc.StatusCode.UNAUTHENTICATED),
            # Tenant header alone, no token.
            ([("x-parley-tenant-id", "globex")], grpc.StatusCode.UNAUTHENTICATED),
            # A token whose tenant claim is an injection string: an unknown tenant.
            ([("authorization", f"Bearer {token_for(INJECTIONS[0])}")],
             grpc.StatusCode.NOT_FOUND),
        ]
        for md, code in forged:
            for call in calls:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call(md)
                assert err.value.code() == code, (md, err.value.details())
    assert await _snapshot(two_tenants, "globex") == before


async def test_sql_injection_strings_are_inert(two_tenants: KbStack) -> None:
    before = await _snapshot(two_tenants, "globex")
    async with two_tenants.channel() as ch:
        stub = two_tenants.stub(ch)
        md = md_for("acme")
        for evil in INJECTIONS:
            for mode in (kb_pb2.SEARCH_MODE_VECTOR, kb_pb2.SEARCH_MODE_FULL_TEXT,
                         kb_pb2.SEARCH_MODE_HYBRID):
                res = await stub.Search(kb_pb2.SearchRequest(query=evil, mode=mode, top_k=50),
                                        metadata=md)
                _assert_only(res.hits, "acme")
                for flt in ({evil: "acme"}, {"owner": evil}, {"owner": {evil: [evil]}}):
                    res = await stub.Search(kb_pb2.SearchRequest(
                        query="vault", mode=mode, metadata_filter=_struct(flt)), metadata=md)
                    assert list(res.hits) == []
                res = await stub.Search(kb_pb2.SearchRequest(
                    query="vault", mode=mode, document_ids=[evil, "iso-only-globex"]),
                    metadata=md)
                assert list(res.hits) == []
            for call in (
                stub.GetDocument(kb_pb2.GetDocumentRequest(document_id=evil), metadata=md),
                stub.ListDocuments(kb_pb2.ListDocumentsRequest(page=common_pb2.PageRequest(
                    page_token=base64.urlsafe_b64encode(
                        json.dumps({"after": evil}).encode()).decode())),
                    metadata=md),
            ):
                try:
                    res = await call
                    docs = getattr(res, "documents", [])
                    assert all(d.metadata["owner"] == "acme" for d in docs
                               if "owner" in d.metadata)
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() in (grpc.StatusCode.NOT_FOUND,
                                          grpc.StatusCode.INVALID_ARGUMENT)
            deleted = await stub.DeleteDocument(kb_pb2.DeleteDocumentRequest(document_id=evil),
                                                metadata=md)
            assert not deleted.deleted
            # Injection strings as stored data are just data.
            res = await stub.IngestDocument(kb_pb2.IngestDocumentRequest(
                document_id=evil, title=evil, content_type=kb_pb2.CONTENT_TYPE_TEXT,
                content=f"{evil} text".encode(), source_uri=evil,
                metadata=_struct({"owner": "acme", evil: evil})), metadata=md)
            assert res.outcome in (kb_pb2.INGEST_OUTCOME_CREATED,
                                   kb_pb2.INGEST_OUTCOME_UNCHANGED)
            got = await stub.GetDocument(kb_pb2.GetDocumentRequest(document_id=evil), metadata=md)
            assert got.document.title == evil and got.document.metadata[evil] == evil
            hits = await stub.Search(kb_pb2.SearchRequest(
                query="text", mode=kb_pb2.SEARCH_MODE_FULL_TEXT, document_ids=[evil],
                metadata_filter=_struct({evil: evil})), metadata=md)
            assert [h.document_id for h in hits.hits] == [evil]
            deleted = await stub.DeleteDocument(kb_pb2.DeleteDocumentRequest(document_id=evil),
                                                metadata=md)
            assert deleted.deleted
    assert await _snapshot(two_tenants, "globex") == before


async def test_admin_rest_is_tenant_scoped(two_tenants: KbStack) -> None:
    before = await _snapshot(two_tenants, "globex")
    http = two_tenants.http
    acme = auth_headers("acme")
    # Authentication.
    assert (await http.get("/v1/documents")).status_code == 401
    r = await http.get("/v1/documents", headers={"Authorization": "Bearer not-a-jwt"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHENTICATED"
    r = await http.get("/v1/documents", headers=auth_headers("acme", header_tenant="globex"))
    assert r.status_code == 403
    r = await http.get("/v1/documents", headers={"Authorization": f"Bearer {token_for(None)}"})
    assert r.status_code == 403
    r = await http.get("/v1/documents", headers=auth_headers("umbrella"))
    assert r.status_code == 404 and "unknown tenant" in r.json()["error"]["message"]
    # Reads.
    r = await http.get("/v1/documents", params={"page_size": 500}, headers=acme)
    ids = {d["document_id"] for d in r.json()["documents"]}
    assert "iso-only-acme" in ids and "iso-only-globex" not in ids
    assert (await http.get("/v1/documents/iso-only-globex", headers=acme)).status_code == 404
    r = await http.get("/v1/documents/iso-handbook", headers=acme)
    assert r.status_code == 200 and r.json()["metadata"]["owner"] == "acme"
    for evil in INJECTIONS:
        for mode in ("vector", "full_text", "hybrid"):
            r = await http.post("/v1/search", headers=acme, json={
                "query": evil, "mode": mode, "top_k": 50})
            assert r.status_code == 200
            _assert_only(r.json()["hits"], "acme")
            r = await http.post("/v1/search", headers=acme, json={
                "query": "vault", "mode": mode, "metadata_filter": {"owner": evil},
                "document_ids": [evil]})
            assert r.status_code == 200 and r.json()["hits"] == []
        r = await http.get(f"/v1/documents/{evil}", headers=acme)
        assert r.status_code == 404
    r = await http.post("/v1/search", headers=acme, json={"query": SECRETS["globex"],
                                                          "top_k": 50})
    _assert_only(r.json()["hits"], "acme")
    # Writes.
    r = await http.delete("/v1/documents/iso-only-globex", headers=acme)
    assert r.status_code == 200 and r.json() == {"deleted": False, "chunks_deleted": 0}
    r = await http.put("/v1/documents/iso-only-globex", headers=acme, json={
        "content_type": "text", "content": "acme's own", "metadata": {"owner": "acme"}})
    assert r.status_code == 200 and r.json()["outcome"] == "created"
    r = await http.delete("/v1/documents/iso-only-globex", headers=acme)
    assert r.json()["deleted"] is True
    r = await http.put("/v1/documents/x", headers=auth_headers("acme", header_tenant="globex"),
                       json={"content_type": "text", "content": "forged"})
    assert r.status_code == 403
    r = await http.get("/v1/usage", headers=acme)
    assert r.status_code == 200 and r.json()["tenant_id"] == "acme"
    assert await _snapshot(two_tenants, "globex") == before
