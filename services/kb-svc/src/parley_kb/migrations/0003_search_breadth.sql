-- Search breadth calibrated per tenant partition (`python -m parley_kb tune-search`, owner).
--
-- ef_search is the smallest HNSW search breadth whose recall@10 against exact search, on a
-- sample of the partition's own vectors used as queries, reached the target when the
-- partition held `chunks` rows; the service searches with it (grown by sqrt(chunks now /
-- chunks then), never below its configured base) instead of its size rule, which assumes the
-- default graph. ef_construction is the graph the partition's index was (re)built with.
-- Rows go with the tenant's key on offboarding (ON DELETE CASCADE).
CREATE TABLE kb.search_breadth (
    tenant_id        text NOT NULL REFERENCES kb.tenant_keys (tenant_id) ON DELETE CASCADE,
    table_name       text NOT NULL,
    ef_search        integer NOT NULL CHECK (ef_search BETWEEN 1 AND 1000),
    chunks           bigint NOT NULL CHECK (chunks >= 0),
    ef_construction  integer,
    recall           real NOT NULL,
    calibrated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, table_name)
);

ALTER TABLE kb.search_breadth ENABLE ROW LEVEL SECURITY;
ALTER TABLE kb.search_breadth FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON kb.search_breadth
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));

GRANT SELECT ON kb.search_breadth TO parley_kb_runtime;
