"""Command line: `python -m parley_kb [serve|migrate|ingest|search|tenants|reembed|export|
offboard]` (serve is the default)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from parley_runtime.errors import ParleyError
from parley_runtime.usage import UsageRecorder, make_usage_recorder

from . import tuning
from .config import KbTenants, Settings
from .models import ContentType, DocumentInput, SearchMode, SearchQuery

logger = logging.getLogger(__name__)

SUFFIX_TYPES = {
    ".txt": ContentType.TEXT,
    ".text": ContentType.TEXT,
    ".md": ContentType.MARKDOWN,
    ".markdown": ContentType.MARKDOWN,
    ".html": ContentType.HTML,
    ".htm": ContentType.HTML,
    ".pdf": ContentType.PDF,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m parley_kb",
        description="Parley kb-svc: per-tenant knowledge bases on PostgreSQL + pgvector.",
    )
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the gRPC service and the admin REST API (default)")

    mig = sub.add_parser("migrate", help="apply schema migrations (MIGRATE_DATABASE_URL)")
    mig.add_argument("--dsn", help="owner/superuser DSN (default: MIGRATE_DATABASE_URL)")

    ing = sub.add_parser("ingest", help="ingest files into a tenant's knowledge base")
    ing.add_argument("paths", nargs="+", help="files, directories or globs (** allowed)")
    ing.add_argument("--tenant", required=True)
    ing.add_argument(
        "--content-type", choices=["auto", *[c.value for c in ContentType]], default="auto",
        help="default: from the file suffix",
    )
    ing.add_argument("--base", help="document ids are paths relative to this folder "
                     "(default: the current folder)")
    ing.add_argument("--id-prefix", default="", help="prepended to every document id")
    ing.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE",
                     help="metadata for every document (repeatable)")
    ing.add_argument("--concurrency", type=int, default=4)
    ing.add_argument("--no-progress", action="store_true", help="no progress bar")

    srch = sub.add_parser("search", help="search a tenant's knowledge base")
    srch.add_argument("query")
    srch.add_argument("--tenant", required=True)
    srch.add_argument("--mode", choices=[m.value for m in SearchMode], default="hybrid")
    srch.add_argument("--top-k", type=int, default=5)
    srch.add_argument("--min-score", type=float, default=0.0)
    srch.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                      help="metadata filter (repeatable)")
    srch.add_argument("--json", action="store_true", help="print JSON")

    sub.add_parser("tenants", help="tenants with storage: documents, chunks, and chunks that "
                   "have a vector of the configured model")

    emb = sub.add_parser(
        "reembed",
        help="give every chunk a vector of the configured embedding model (after a model "
             "change); resumable: a second run skips finished documents",
    )
    scope = emb.add_mutually_exclusive_group(required=True)
    scope.add_argument("--tenant", action="append", dest="tenants", metavar="TENANT",
                       help="repeatable")
    scope.add_argument("--all-tenants", action="store_true",
                       help="every tenant with storage, configured or not")
    emb.add_argument("--batch-chunks", type=int, default=None,
                     help="chunks per batch, one transaction each "
                          "(default PARLEY_KB_REEMBED_BATCH_CHUNKS, 256)")
    emb.add_argument("--no-progress", action="store_true", help="no progress bar")
    emb.add_argument("--json", action="store_true", help="print the reports as JSON")

    tune = sub.add_parser(
        "tune-search",
        help="large tenants: rebuild their partition's HNSW graph denser (concurrently) and "
             "calibrate the ef_search it needs (owner DSN: MIGRATE_DATABASE_URL)",
    )
    tscope = tune.add_mutually_exclusive_group(required=True)
    tscope.add_argument("--tenant", action="append", dest="tenants", metavar="TENANT",
                        help="repeatable")
    tscope.add_argument("--all-tenants", action="store_true",
                        help="every tenant with storage (small ones are skipped)")
    tune.add_argument("--dsn", help="owner/superuser DSN (default: MIGRATE_DATABASE_URL)")
    tune.add_argument("--min-chunks", type=int, default=None,
                      help="partitions smaller than this are left alone "
                           "(default PARLEY_KB_HNSW_EF_REFERENCE_CHUNKS, 50000)")
    tune.add_argument("--ef-construction", type=int, default=tuning.DEFAULT_EF_CONSTRUCTION,
                      help="graph to rebuild with when built with less "
                           f"(default {tuning.DEFAULT_EF_CONSTRUCTION})")
    tune.add_argument("--target-recall", type=float, default=tuning.DEFAULT_TARGET_RECALL,
                      help="recall@10 on the partition's own vectors "
                           f"(default {tuning.DEFAULT_TARGET_RECALL})")
    tune.add_argument("--sample", type=int, default=tuning.DEFAULT_SAMPLE,
                      help=f"calibration queries (default {tuning.DEFAULT_SAMPLE})")
    tune.add_argument("--maintenance-work-mem", default=None, metavar="SIZE",
                      help="for the rebuild, e.g. 2GB (default: the server's)")
    tune.add_argument("--json", action="store_true", help="print the reports as JSON")

    exp = sub.add_parser("export", help="a tenant's documents as JSON lines (metadata and "
                         "chunk text; the original files are not stored)")
    exp.add_argument("--tenant", required=True)
    exp.add_argument("--output", "-o", help="file to write (default: standard output)")

    off = sub.add_parser("offboard", help="delete ALL of a tenant's data: documents, chunks, "
                         "vectors, partitions, counters, cache entries")
    off.add_argument("--tenant", required=True)
    off.add_argument("--confirm", required=True, metavar="TENANT",
                     help="repeat the tenant id to confirm")
    off.add_argument("--export", metavar="FILE",
                     help="export the tenant's documents to FILE (JSON lines) first")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command or "serve"
    if command == "serve":
        from .service import serve

        asyncio.run(serve(Settings()))
        return 0
    logging.basicConfig(level=os.environ.get("PARLEY_LOG_LEVEL", "WARNING").upper(),
                        format="%(levelname)s %(name)s %(message)s")
    try:
        if command == "migrate":
            return asyncio.run(_migrate(Settings(), args.dsn))
        if command == "ingest":
            return asyncio.run(_ingest(Settings(), args))
        if command == "search":
            return asyncio.run(_search(Settings(), args))
        if command == "tenants":
            return asyncio.run(_tenants(Settings()))
        if command == "reembed":
            return asyncio.run(_reembed(Settings(), args))
        if command == "tune-search":
            return asyncio.run(_tune_search(Settings(), args))
        if command == "export":
            return asyncio.run(_export(Settings(), args))
        if command == "offboard":
            return asyncio.run(_offboard(Settings(), args))
    except ParleyError as exc:
        print(f"error: {exc.code.name}: {exc.message}", file=sys.stderr)
        return 2
    raise AssertionError(command)


async def _migrate(settings: Settings, dsn: str | None) -> int:
    from .app import build_embedder, run_migrations

    tenants = KbTenants.from_settings(settings) if settings.tenants_file else None
    embedder = build_embedder(settings)
    report = await run_migrations(settings, tenants, embedder, dsn)
    print(
        f"migrations applied: {report.applied or 'none'}; already applied: "
        f"{report.already_applied or 'none'}; app role: {report.app_role}; "
        f"embedding table for {embedder.model_id}: kb.{report.embedding_table}; "
        f"tenants prepared: {report.tenants}"
    )
    return 0


def _recorder(settings: Settings) -> UsageRecorder:
    from parley_runtime.server import make_signer

    signer = None
    if not settings.auth_disabled and settings.auth_keys.get(settings.signing_kid):
        signer = make_signer(settings)
    return make_usage_recorder(settings.service_name, signer)


def _pairs(items: Sequence[str], what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{what} must be KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def expand_paths(patterns: Sequence[str]) -> list[Path]:
    """Files named by paths, directories (walked) and globs, deduplicated, sorted."""
    found: set[Path] = set()
    for pattern in patterns:
        matches = glob.glob(pattern, recursive=True) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise SystemExit(f"no files match {pattern!r}")
        for match in matches:
            path = Path(match)
            if path.is_dir():
                found.update(p for p in path.rglob("*")
                             if p.is_file() and p.suffix.lower() in SUFFIX_TYPES)
            elif path.is_file():
                found.add(path)
            else:
                raise SystemExit(f"{match!r} is not a file or folder")
    return sorted(found)


def document_id_for(path: Path, base: Path, prefix: str) -> str:
    resolved = path.resolve()
    try:
        rel = resolved.relative_to(base.resolve()).as_posix()
    except ValueError:
        rel = resolved.as_posix()
    return f"{prefix}{rel}"


async def _ingest(settings: Settings, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .app import build_runtime

    tenants = KbTenants.from_settings(settings)
    tenants.limits(args.tenant)  # unknown tenant: NOT_FOUND before any work
    files = expand_paths(args.paths)
    metadata = _pairs(args.metadata, "--metadata")
    base = Path(args.base) if args.base else Path.cwd()
    recorder = _recorder(settings)
    runtime = await build_runtime(settings, tenants=tenants, recorder=recorder,
                                  prepare_tenants=False)
    counts: Counter[str] = Counter()
    chunks = embedded = 0
    bar = tqdm(total=len(files), unit="doc", disable=args.no_progress, file=sys.stderr,
               desc=f"ingest {args.tenant}")
    semaphore = asyncio.Semaphore(max(1, args.concurrency))

    async def one(path: Path) -> None:
        nonlocal chunks, embedded
        async with semaphore:
            if args.content_type == "auto":
                ctype = SUFFIX_TYPES.get(path.suffix.lower())
                if ctype is None:
                    counts["skipped"] += 1
                    bar.write(f"skipped {path}: unknown suffix (use --content-type)",
                              file=sys.stderr)
                    bar.update()
                    return
            else:
                ctype = ContentType(args.content_type)
            doc_id = document_id_for(path, base, args.id_prefix)
            try:
                result = await runtime.kb.ingest(
                    args.tenant,
                    DocumentInput(
                        document_id=doc_id, content=path.read_bytes(), content_type=ctype,
                        title=path.stem, metadata=metadata, source_uri=path.resolve().as_uri(),
                    ),
                )
            except ParleyError as exc:
                counts["failed"] += 1
                bar.write(f"failed {path}: {exc.code.name}: {exc.message}", file=sys.stderr)
            else:
                counts[result.outcome.value] += 1
                chunks += result.chunks
                embedded += result.chunks_embedded
            bar.set_postfix(dict(counts), refresh=False)
            bar.update()

    try:
        await asyncio.gather(*(one(p) for p in files))
    finally:
        bar.close()
        with contextlib.suppress(Exception):
            await recorder.flush(5.0)
            await recorder.close()
        await runtime.aclose()
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    print(f"{len(files)} files: {summary}; {chunks} chunks, {embedded} embedded now")
    return 1 if counts.get("failed") else 0


async def _search(settings: Settings, args: argparse.Namespace) -> int:
    from .app import build_runtime

    tenants = KbTenants.from_settings(settings)
    tenants.limits(args.tenant)
    recorder = _recorder(settings)
    runtime = await build_runtime(settings, tenants=tenants, recorder=recorder,
                                  prepare_tenants=False)
    try:
        result = await runtime.kb.search(
            args.tenant,
            SearchQuery(
                text=args.query, top_k=args.top_k, mode=SearchMode(args.mode),
                min_score=args.min_score, metadata_filter=_pairs(args.filter, "--filter"),
            ),
        )
    finally:
        with contextlib.suppress(Exception):
            await recorder.flush(5.0)
            await recorder.close()
        await runtime.aclose()
    if args.json:
        print(json.dumps(
            {"embedding_model": result.embedding_model,
             "hits": [{"chunk_id": h.chunk_id, "document_id": h.document_id,
                       "title": h.document_title, "score": h.score, "text": h.text,
                       "metadata": h.metadata} for h in result.hits]},
            ensure_ascii=False, indent=2,
        ))
        return 0
    if not result.hits:
        print("no results")
    for rank, hit in enumerate(result.hits, start=1):
        snippet = " ".join(hit.text.split())[:200]
        print(f"{rank:2d}. {hit.score:.4f}  {hit.chunk_id}  {hit.document_title}\n    {snippet}")
    return 0


async def _operator_runtime(settings: Settings, recorder: UsageRecorder | None = None) -> Any:
    """The runtime for operator commands: no tenant is prepared, and tenants absent from the
    tenants file are reachable (they may have been removed from it already)."""
    from .app import build_runtime

    tenants = KbTenants.from_settings(settings)
    return await build_runtime(settings, tenants=tenants, recorder=recorder,
                               prepare_tenants=False)


async def _tenants(settings: Settings) -> int:
    runtime = await _operator_runtime(settings)
    try:
        rows = await runtime.ops.status()
    finally:
        await runtime.aclose()
    model = runtime.ops.model
    print(f"{'tenant':<24} {'configured':>10} {'documents':>10} {'chunks':>10} "
          f"{'with ' + model:>24} {'missing':>8}")
    for st in rows:
        cov = st.coverage
        print(f"{st.tenant_id:<24} {'yes' if st.configured else 'no':>10} {cov.documents:>10} "
              f"{cov.chunks:>10} {cov.vectors:>24} {cov.missing:>8}")
    return 0


async def _reembed(settings: Settings, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .operations import check_tenant_id

    for tenant_id in args.tenants or ():
        check_tenant_id(tenant_id)
    batch = args.batch_chunks or settings.kb_reembed_batch_chunks
    recorder = _recorder(settings)
    runtime = await _operator_runtime(settings, recorder)
    reports = []
    failed: str | None = None
    bar: Any = None

    def on_start(tenant_id: str, missing: int) -> None:
        nonlocal bar
        if bar is not None:
            bar.close()
        bar = tqdm(total=missing, unit="chunk", disable=args.no_progress, file=sys.stderr,
                   desc=f"reembed {tenant_id}")

    def progress(tenant_id: str, done: int, total: int) -> None:
        if bar is not None:
            bar.update(done)

    try:
        tenants = args.tenants or await runtime.ops.stored_tenants()
        for tenant_id in tenants:
            try:
                reports.append(await runtime.ops.reembed(
                    tenant_id, batch_chunks=batch, progress=progress, on_start=on_start))
            except ParleyError as exc:
                failed = f"{tenant_id}: {exc.code.name}: {exc.message}"
                break
            except Exception as exc:  # a crash of the provider or database: resumable
                failed = f"{tenant_id}: {type(exc).__name__}: {exc}"
                break
    finally:
        if bar is not None:
            bar.close()
        with contextlib.suppress(Exception):
            await recorder.flush(5.0)
            await recorder.close()
        await runtime.aclose()
    if args.json:
        print(json.dumps([r.as_dict() for r in reports], indent=2))
    else:
        for r in reports:
            print(f"{r.tenant_id}: {r.reembedded_chunks} chunks of {r.reembedded_documents} "
                  f"documents re-embedded with {r.model} in {r.batches} batches "
                  f"({r.chunks_embedded} embedded, {r.chunks_cached} from cache); "
                  f"{r.already_done} of {r.chunks} already done; {r.remaining} remaining"
                  + (f"; {r.skipped_changed} documents changed meanwhile"
                     if r.skipped_changed else "")
                  + f" ({r.seconds:.1f}s)")
    if failed is not None:
        print(f"error: {failed}\nfinished batches are kept: run the same command again to "
              "resume", file=sys.stderr)
        return 1
    return 1 if any(r.remaining for r in reports) else 0


async def _tune_search(settings: Settings, args: argparse.Namespace) -> int:
    from .app import build_embedder
    from .operations import check_tenant_id

    for tenant_id in args.tenants or ():
        check_tenant_id(tenant_id)
    dsn = args.dsn or settings.migrate_database_url
    if not dsn:
        raise SystemExit("MIGRATE_DATABASE_URL is not set (the owner/superuser DSN)")
    model = build_embedder(settings).model_id

    def progress(tenant_id: str, what: str) -> None:
        if not args.json:
            print(f"{tenant_id}: {what}", file=sys.stderr, flush=True)

    try:
        reports = await tuning.tune_search(
            dsn, model=model, tenants=None if args.all_tenants else args.tenants,
            min_chunks=(args.min_chunks if args.min_chunks is not None
                        else settings.kb_hnsw_ef_reference_chunks),
            ef_construction=args.ef_construction, target_recall=args.target_recall,
            sample=args.sample, maintenance_work_mem=args.maintenance_work_mem,
            progress=progress,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([r.as_dict() for r in reports]))
        return 0
    for r in reports:
        if r.skipped:
            print(f"{r.tenant_id}: skipped ({r.skipped}; {r.chunks} chunks)")
        else:
            print(f"{r.tenant_id}: {r.chunks} chunks, ef_construction {r.ef_construction}"
                  f"{f' (rebuilt in {r.rebuild_s:.0f}s)' if r.rebuilt else ''},"
                  f" ef_search {r.ef_search} (recall@10 {r.recall:.3f} on its own vectors)")
    return 0


async def _write_export(runtime: Any, tenant_id: str, out: Any) -> int:
    count = 0
    async for row in runtime.ops.export(tenant_id):
        out.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
        count += 1
    out.flush()
    return count


async def _export(settings: Settings, args: argparse.Namespace) -> int:
    runtime = await _operator_runtime(settings)
    try:
        if args.output:
            with open(args.output, "w", encoding="utf-8") as fh:
                count = await _write_export(runtime, args.tenant, fh)
        else:
            count = await _write_export(runtime, args.tenant, sys.stdout)
    finally:
        await runtime.aclose()
    print(f"exported {count} documents of {args.tenant}", file=sys.stderr)
    return 0


async def _offboard(settings: Settings, args: argparse.Namespace) -> int:
    from .operations import check_tenant_id

    check_tenant_id(args.tenant)
    if args.confirm != args.tenant:
        print(f"error: --confirm must repeat the tenant id ({args.tenant!r}); nothing deleted",
              file=sys.stderr)
        return 2
    runtime = await _operator_runtime(settings)
    try:
        if args.export:
            with open(args.export, "w", encoding="utf-8") as fh:
                count = await _write_export(runtime, args.tenant, fh)
            print(f"exported {count} documents to {args.export}", file=sys.stderr)
        report = await runtime.ops.offboard(args.tenant, confirm=args.confirm)
    finally:
        await runtime.aclose()
    print(json.dumps(report.as_dict(), indent=2))
    return 0
