"""Ingestion through gRPC: outcomes, idempotency, failures that leave the previous version,
quotas, bad input, delete and list."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from typing import Any

import asyncpg
import grpc
import httpx
import pytest
from google.protobuf import struct_pb2
from parley.common.v1 import common_pb2
from parley.kb.v1 import kb_pb2
from parley_kb.testing import (
    KbDatabase,
    KbStack,
    make_pdf,
    make_settings,
    md_for,
    start_stack,
    stop_stack,
)

pytestmark = pytest.mark.integration

GUIDE = """# Onboarding guide

Welcome to the team. This guide explains the first week.

## Laptop setup

Your laptop arrives on day one. Install the VPN client before anything else and sign in
with your single sign-on account. The helpdesk can reimage a laptop within two hours.

## Expenses

Submit expenses within thirty days through the finance portal. Receipts above 25 euros
must be attached as PDF or photo. Travel is reimbursed at economy fares only.

## Holidays

Holiday requests go to your manager at least two weeks ahead. Unused days carry over
until the end of March of the following year.
"""


def ingest_req(doc_id: str, content: str | bytes, *, ctype: int = kb_pb2.CONTENT_TYPE_MARKDOWN,
               title: str = "", metadata: dict[str, Any] | None = None
               ) -> kb_pb2.IngestDocumentRequest:
    meta = struct_pb2.Struct()
    if metadata:
        meta.update(metadata)
    data = content.encode() if isinstance(content, str) else content
    return kb_pb2.IngestDocumentRequest(document_id=doc_id, title=title, content_type=ctype,
                                        content=data, metadata=meta)


async def counters_match_rows(db: KbDatabase, tenant: str) -> tuple[int, int, int]:
    conn = await asyncpg.connect(db.admin_dsn)
    try:
        counters = await conn.fetchrow(
            "SELECT documents, bytes, chunks FROM kb.tenants WHERE tenant_id = $1", tenant)
        actual = await conn.fetchrow(
            "SELECT count(*) AS documents, coalesce(sum(size_bytes), 0) AS bytes,"
            " (SELECT count(*) FROM kb.chunks WHERE tenant_id = $1) AS chunks"
            " FROM kb.documents WHERE tenant_id = $1", tenant)
        assert counters is not None and actual is not None
        assert tuple(counters) == tuple(actual), (tuple(counters), tuple(actual))
        emb = await conn.fetchval("SELECT count(*) FROM kb.emb_1 WHERE tenant_id = $1", tenant)
        assert emb == actual["chunks"]
        return tuple(counters)  # type: ignore[return-value]
    finally:
        await conn.close()


async def test_create_unchanged_update_and_reuse(kb_stack: KbStack,
                                                 unique: Callable[[str], str]) -> None:
    doc_id = unique("guide")
    async with kb_stack.channel() as ch:
        stub = kb_stack.stub(ch)
        md = md_for("acme")
        created = await stub.IngestDocument(ingest_req(doc_id, GUIDE, title="Guide"), metadata=md)
        assert created.outcome == kb_pb2.INGEST_OUTCOME_CREATED
        assert created.chunks == 4 and created.chunks_embedded == 4
        assert created.embedding_model == "local-wordllama-256"
        assert len(created.content_hash) == 64

        calls, texts = kb_stack.embedder.calls, kb_stack.embedder.texts
        again = await stub.IngestDocument(ingest_req(doc_id, GUIDE, title="Guide"), metadata=md)
        assert again.outcome == kb_pb2.INGEST_OUTCOME_UNCHANGED
        assert again.chunks == 4 and again.chunks_embedded == 0
        assert again.content_hash == created.content_hash
        assert (kb_stack.embedder.calls, kb_stack.embedder.texts) == (calls, texts)

        # New title only: a new version, but every chunk's embedding is reused.
        retitled = await stub.IngestDocument(ingest_req(doc_id, GUIDE, title="Guide v2"),
                                             metadata=md)
        assert retitled.outcome == kb_pb2.INGEST_OUTCOME_UPDATED
        assert retitled.chunks_embedded == 0 and kb_stack.embedder.texts == texts

        # One section changed: only that chunk is embedded again.
        changed = GUIDE.replace("thirty days", "sixty days")
        updated = await stub.IngestDocument(ingest_req(doc_id, changed, title="Guide v2"),
                                            metadata=md)
        assert updated.outcome == kb_pb2.INGEST_OUTCOME_UPDATED
        assert updated.chunks_embedded == 1 and kb_stack.embedder.texts == texts + 1

        got = await stub.GetDocument(kb_pb2.GetDocumentRequest(document_id=doc_id), metadata=md)
        assert got.document.title == "Guide v2" and got.document.chunks == 4
        assert got.document.content_hash == updated.content_hash
        assert got.document.content_type == kb_pb2.CONTENT_TYPE_MARKDOWN
        assert got.document.size_bytes == len(changed.encode())
        assert got.document.updated_at.ToDatetime() >= got.document.created_at.ToDatetime()

        hits = await stub.Search(kb_pb2.SearchRequest(query="how long do I have for expenses",
                                                      document_ids=[doc_id]), metadata=md)
        assert "sixty days" in hits.hits[0].text and "Expenses" in hits.hits[0].text
    # Usage reached the billing recorder, per tenant.
    events = [(t, e) for t, e in kb_stack.recorder.events if e.WhichOneof("usage") == "embedding"]
    assert events and all(e.service == "kb-svc" and e.idempotency_key for _, e in events)
    assert {t for t, _ in events} >= {"acme"}
    await counters_match_rows(kb_stack.db, "acme")


async def test_failed_ingest_leaves_previous_version(kb_stack: KbStack,
                                                     unique: Callable[[str], str]) -> None:
    doc_id = unique("policy")
    md = md_for("initech")
    admin = await asyncpg.connect(kb_stack.db.admin_dsn)
    async with kb_stack.channel() as ch:
        stub = kb_stack.stub(ch)
        first = await stub.IngestDocument(ingest_req(doc_id, GUIDE), metadata=md)
        before = await counters_match_rows(kb_stack.db, "initech")

        async def unchanged() -> None:
            got = await stub.GetDocument(kb_pb2.GetDocumentRequest(document_id=doc_id),
                                         metadata=md)
            assert got.document.content_hash == first.content_hash
            assert await counters_match_rows(kb_stack.db, "initech") == before
            bodies = await admin.fetch(
                "SELECT body FROM kb.chunks WHERE tenant_id = 'initech' AND document_id = $1"
                " ORDER BY chunk_index", doc_id)
            assert "thirty days" in " ".join(r["body"] for r in bodies)

        # 1. The embedding provider fails: nothing is written.
        kb_stack.embedder.fail_next = True
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.IngestDocument(ingest_req(doc_id, GUIDE + "\n\nNew line."), metadata=md)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        await unchanged()

        # 2. The database fails half-way through the write (after the old chunks were deleted
        #    and the document row was updated): the transaction rolls back as a whole.
        await admin.execute(
            "CREATE FUNCTION pg_temp.poison() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN IF NEW.body LIKE '%POISON%' THEN RAISE EXCEPTION 'disk on fire'; END IF;"
            " RETURN NEW; END $$;"
            " CREATE TRIGGER poison BEFORE INSERT ON kb.chunks FOR EACH ROW"
            " EXECUTE FUNCTION pg_temp.poison()")
        try:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.IngestDocument(ingest_req(doc_id, GUIDE + "\n\nPOISON pill."),
                                          metadata=md)
            assert err.value.code() == grpc.StatusCode.INTERNAL
            assert "disk on fire" not in (err.value.details() or "")
        finally:
            await admin.execute("DROP TRIGGER poison ON kb.chunks")
        await unchanged()
        # And the same version ingests fine afterwards.
        ok = await stub.IngestDocument(ingest_req(doc_id, GUIDE + "\n\nPOISON pill."),
                                       metadata=md)
        assert ok.outcome == kb_pb2.INGEST_OUTCOME_UPDATED
    await admin.close()
    await counters_match_rows(kb_stack.db, "initech")


async def test_quotas(kb_stack: KbStack, unique: Callable[[str], str]) -> None:
    md = md_for("quota-co")
    small = "# Note\n\nA short note about quotas."
    async with kb_stack.channel() as ch:
        stub = kb_stack.stub(ch)
        existing = await stub.ListDocuments(kb_pb2.ListDocumentsRequest(), metadata=md)
        for doc in existing.documents:
            await stub.DeleteDocument(kb_pb2.DeleteDocumentRequest(document_id=doc.document_id),
                                      metadata=md)
        await stub.IngestDocument(ingest_req("a", small), metadata=md)
        await stub.IngestDocument(ingest_req("b", small + " Second."), metadata=md)
        texts = kb_stack.embedder.texts
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.IngestDocument(ingest_req("c", small + " Third."), metadata=md)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "document quota" in (err.value.details() or "")
        # Replacing a document does not count as a new one.
        assert (await stub.IngestDocument(ingest_req("a", small + " Edited."), metadata=md)
                ).outcome == kb_pb2.INGEST_OUTCOME_UPDATED
        # Too many chunks (12 allowed): rejected before any embedding call.
        texts = kb_stack.embedder.texts
        many = "\n\n".join(f"# Part {i}\n\nBody {i}." for i in range(20))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.IngestDocument(ingest_req("a", many), metadata=md)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "chunk quota" in (err.value.details() or "")
        assert kb_stack.embedder.texts == texts
        # Too many bytes (6000 allowed in total).
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.IngestDocument(
                ingest_req("b", "word " * 1300, ctype=kb_pb2.CONTENT_TYPE_TEXT), metadata=md)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        got = await stub.GetDocument(kb_pb2.GetDocumentRequest(document_id="a"), metadata=md)
        assert got.document.chunks == 1
    await counters_match_rows(kb_stack.db, "quota-co")


@pytest.mark.parametrize(
    "request_factory, code, fragment",
    [
        (lambda d: ingest_req(d, b""), grpc.StatusCode.INVALID_ARGUMENT, "empty"),
        (lambda d: ingest_req(d, "   \n\n "), grpc.StatusCode.INVALID_ARGUMENT, "no text"),
        (lambda d: ingest_req(d, b"x" * (8 * 1024 * 1024 + 1), ctype=kb_pb2.CONTENT_TYPE_TEXT),
         grpc.StatusCode.INVALID_ARGUMENT, "limit is 8388608 bytes"),
        (lambda d: ingest_req(d, "text", ctype=kb_pb2.CONTENT_TYPE_UNSPECIFIED),
         grpc.StatusCode.INVALID_ARGUMENT, "unsupported content_type"),
        (lambda d: ingest_req(d, "text", ctype=99), grpc.StatusCode.INVALID_ARGUMENT,
         "unsupported content_type"),
        (lambda d: ingest_req(d, b"caf\xe9 au lait"), grpc.StatusCode.INVALID_ARGUMENT,
         "not valid UTF-8"),
        (lambda d: ingest_req(d, b"nul \x00 byte"), grpc.StatusCode.INVALID_ARGUMENT, "NUL"),
        (lambda d: ingest_req(d, b"%PDF-1.7 nope", ctype=kb_pb2.CONTENT_TYPE_PDF),
         grpc.StatusCode.INVALID_ARGUMENT, "PDF"),
        (lambda d: ingest_req("", "text"), grpc.StatusCode.INVALID_ARGUMENT, "document_id"),
        (lambda d: ingest_req("x" * 257, "text"), grpc.StatusCode.INVALID_ARGUMENT,
         "document_id"),
        (lambda d: ingest_req("line\nbreak", "text"), grpc.StatusCode.INVALID_ARGUMENT,
         "document_id"),
        (lambda d: ingest_req(d, "text", title="t\x00"), grpc.StatusCode.INVALID_ARGUMENT,
         "NUL"),
        (lambda d: ingest_req(d, "text", metadata={"k": "v\x00"}),
         grpc.StatusCode.INVALID_ARGUMENT, "NUL"),
        (lambda d: ingest_req(d, "text", metadata={"k": "v" * 20000}),
         grpc.StatusCode.INVALID_ARGUMENT, "larger than"),
        # JSON has no NaN or infinity: refused naming the place, not an INTERNAL error.
        (lambda d: ingest_req(d, "text", metadata={"n": float("nan")}),
         grpc.StatusCode.INVALID_ARGUMENT, "metadata.n is nan"),
        (lambda d: ingest_req(d, "text", metadata={"a": {"b": [1, float("-inf")]}}),
         grpc.StatusCode.INVALID_ARGUMENT, "metadata.a.b[1] is -inf"),
    ],
)
async def test_bad_input_is_rejected_and_writes_nothing(
    kb_stack: KbStack, unique: Callable[[str], str], request_factory: Any,
    code: grpc.StatusCode, fragment: str,
) -> None:
    doc_id = unique("bad")
    before = await counters_match_rows(kb_stack.db, "acme")
    async with kb_stack.channel() as ch:
        stub = kb_stack.stub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.IngestDocument(request_factory(doc_id), metadata=md_for("acme"))
        assert err.value.code() == code
        assert fragment in (err.value.details() or ""), err.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetDocument(kb_pb2.GetDocumentRequest(document_id=doc_id),
                                   metadata=md_for("acme"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert await counters_match_rows(kb_stack.db, "acme") == before


async def test_unknown_and_read_only_tenants(kb_stack: KbStack) -> None:
    async with kb_stack.channel() as ch:
        stub = kb_stack.stub(ch)
        calls: list[Any] = [
            lambda md: stub.IngestDocument(ingest_req("d", "text"), metadata=md),
            lambda md: stub.Search(kb_pb2.SearchRequest(query="x"), metadata=md),
            lambda md: stub.GetDocument(kb_pb2.GetDocumentRequest(document_id="d"), metadata=md),
            lambda md: stub.ListDocuments(kb_pb2.ListDocumentsRequest(), metadata=md),
            lambda md: stub.DeleteDocument(kb_pb2.DeleteDocumentRequest(document_id="d"),
                                           metadata=md),
        ]
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(md_for("umbrella"))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert "unknown tenant" in (err.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.IngestDocument(ingest_req("d", "text"), metadata=md_for("frozen-co"))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        # Read-only tenants can still search.
        res = await stub.Search(kb_pb2.SearchRequest(query="anything"),
                                metadata=md_for("frozen-co"))
        assert list(res.hits) == []


async def test_pdf_html_and_text_are_searchable(kb_stack: KbStack,
                                                unique: Callable[[str], str]) -> None:
    md = md_for("acme")
    ids = {t: unique(t) for t in ("pdf", "html", "text")}
    async with kb_stack.channel() as ch:
        stub = kb_stack.stub(ch)
        await stub.IngestDocument(ingest_req(
            ids["pdf"], make_pdf(["Warranty terms", "The zephyrine blender carries a five year"
                                  " warranty."]), ctype=kb_pb2.CONTENT_TYPE_PDF), metadata=md)
        await stub.IngestDocument(ingest_req(
            ids["html"], "<h1>Shipping</h1><p>Quokkaboxes ship within 48 hours.</p>"
            "<script>steal()</script>", ctype=kb_pb2.CONTENT_TYPE_HTML), metadata=md)
        await stub.IngestDocument(ingest_req(
            ids["text"], "The glimmerfish tank needs weekly cleaning.",
            ctype=kb_pb2.CONTENT_TYPE_TEXT), metadata=md)
        for word, doc in (("zephyrine", "pdf"), ("quokkaboxes", "html"), ("glimmerfish", "text")):
            res = await stub.Search(kb_pb2.SearchRequest(
                query=word, mode=kb_pb2.SEARCH_MODE_FULL_TEXT, document_ids=list(ids.values())),
                metadata=md)
            assert [h.document_id for h in res.hits] == [ids[doc]], word
        html = await stub.Search(kb_pb2.SearchRequest(
            query="quokkaboxes", mode=kb_pb2.SEARCH_MODE_FULL_TEXT, document_ids=[ids["html"]]),
            metadata=md)
        assert html.hits[0].text.startswith("Shipping\n\n") and "steal" not in html.hits[0].text


async def test_delete_and_list_pagination(kb_stack: KbStack,
                                          unique: Callable[[str], str]) -> None:
    md = md_for("globex")
    prefix = unique("page")
    async with kb_stack.channel() as ch:
        stub = kb_stack.stub(ch)
        for i in range(5):
            await stub.IngestDocument(ingest_req(f"{prefix}-{i}", f"Document number {i}.",
                                                 ctype=kb_pb2.CONTENT_TYPE_TEXT), metadata=md)
        seen: list[str] = []
        token = ""
        pages = 0
        while True:
            page = await stub.ListDocuments(kb_pb2.ListDocumentsRequest(
                page=common_pb2.PageRequest(page_size=2, page_token=token)), metadata=md)
            seen += [d.document_id for d in page.documents]
            pages += 1
            token = page.page.next_page_token
            if not token:
                break
        mine = [d for d in seen if d.startswith(prefix)]
        assert mine == [f"{prefix}-{i}" for i in range(5)]
        assert seen == sorted(seen) and len(seen) == len(set(seen)) and pages >= 3
        def crafted(after: object) -> str:
            return base64.urlsafe_b64encode(json.dumps({"after": after}).encode()).decode()

        # Tokens are unsigned base64 JSON: a decoded field that is not a document id (NUL,
        # lone surrogate, too long, not a string) is refused before it reaches PostgreSQL.
        for token in ("not-a-token", crafted("a\u0000"), crafted("a\ud800"), crafted("x" * 257),
                      crafted(7), crafted(None), "QQ" * 5000):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ListDocuments(kb_pb2.ListDocumentsRequest(
                    page=common_pb2.PageRequest(page_token=token)), metadata=md)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, token
            assert "start without it" in (err.value.details() or "")

        deleted = await stub.DeleteDocument(
            kb_pb2.DeleteDocumentRequest(document_id=f"{prefix}-0"), metadata=md)
        assert deleted.deleted and deleted.chunks_deleted == 1
        again = await stub.DeleteDocument(
            kb_pb2.DeleteDocumentRequest(document_id=f"{prefix}-0"), metadata=md)
        assert not again.deleted and again.chunks_deleted == 0
    await counters_match_rows(kb_stack.db, "globex")


async def test_concurrent_ingests_of_one_document_stay_consistent(
    kb_stack: KbStack, unique: Callable[[str], str]
) -> None:
    doc_id = unique("race")
    md = md_for("initech")
    async with kb_stack.channel() as ch:
        stub = kb_stack.stub(ch)
        versions = [GUIDE + f"\n\nRevision {i}." for i in range(8)]
        results = await asyncio.gather(*(
            stub.IngestDocument(ingest_req(doc_id, v), metadata=md) for v in versions))
        assert sum(r.outcome == kb_pb2.INGEST_OUTCOME_CREATED for r in results) == 1
    await counters_match_rows(kb_stack.db, "initech")


async def test_voyage_reingest_makes_no_provider_call(
    make_kb_database: Callable[..., Any], emulator_url: str, redis_url: str,
    wordllama_model: Any,
) -> None:
    """With VOYAGE_API_KEY set, embeddings come from Voyage (the emulator here); an unchanged
    re-ingest, even with cold caches (a new process), sends nothing to the provider."""
    from parley_kb.app import build_embedder

    db: KbDatabase = await make_kb_database("kbvoy", model="voyage-3.5", dimensions=1024)
    extra = {"voyage_api_key": "pa-kb-test", "voyage_base_url": f"{emulator_url}/v1"}

    async def inputs() -> int:
        async with httpx.AsyncClient(base_url=emulator_url) as client:
            stats = (await client.get("/admin/stats")).json()
        return int(stats["models"].get("voyage-3.5", {}).get("embedding_inputs", 0))

    embedder = build_embedder(make_settings(db, None, **extra))
    assert embedder.provider == "voyage" and embedder.dimensions == 1024
    stack = await start_stack(db, None, wordllama_model, embedder=embedder, **extra)
    try:
        async with stack.channel() as ch:
            stub = stack.stub(ch)
            before = await inputs()
            first = await stub.IngestDocument(ingest_req("guide", GUIDE), metadata=md_for("acme"))
            assert first.embedding_model == "voyage-3.5" and first.chunks_embedded == 4
            assert await inputs() == before + 4
            res = await stub.Search(kb_pb2.SearchRequest(query="expenses receipts"),
                                    metadata=md_for("acme"))
            assert res.embedding_model == "voyage-3.5" and "Expenses" in res.hits[0].text
            usage = [e.embedding for t, e in stack.recorder.events if t == "acme"]
            assert usage[0].provider == "voyage" and usage[0].tokens > 0
            assert usage[0].embedded_texts == 4
    finally:
        await stop_stack(stack)
    # A new process with empty in-memory caches and no Redis.
    stack = await start_stack(db, None, wordllama_model, embedder=build_embedder(
        make_settings(db, None, **extra)), **extra)
    try:
        async with stack.channel() as ch:
            stub = stack.stub(ch)
            mark = await inputs()
            again = await stub.IngestDocument(ingest_req("guide", GUIDE), metadata=md_for("acme"))
            assert again.outcome == kb_pb2.INGEST_OUTCOME_UNCHANGED
            assert await inputs() == mark
            edited = await stub.IngestDocument(
                ingest_req("guide", GUIDE.replace("two hours", "three hours")),
                metadata=md_for("acme"))
            assert edited.outcome == kb_pb2.INGEST_OUTCOME_UPDATED
            assert edited.chunks_embedded == 1 and await inputs() == mark + 1
    finally:
        await stop_stack(stack)
