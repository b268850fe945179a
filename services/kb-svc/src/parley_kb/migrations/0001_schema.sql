-- kb-svc schema: tenants, documents, chunks (LIST-partitioned per tenant), row-level security.
--
-- Every tenant-owned table has ENABLE + FORCE ROW LEVEL SECURITY and a policy on
-- current_setting('app.tenant_id', true): a session that never set it sees and changes nothing.
-- The service connects as a login role that is a member of parley_kb_runtime (NOBYPASSRLS,
-- not the owner), so the policies apply to it.

CREATE EXTENSION IF NOT EXISTS vector;

CREATE SCHEMA IF NOT EXISTS kb;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'parley_kb_runtime') THEN
        CREATE ROLE parley_kb_runtime NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
    END IF;
END
$$;

-- Tenant -> small integer used to name its partitions. Not readable by the runtime role:
-- only the SECURITY DEFINER functions below use it.
CREATE TABLE kb.tenant_keys (
    tenant_id   text PRIMARY KEY CHECK (tenant_id ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    tenant_key  integer GENERATED ALWAYS AS IDENTITY UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per embedding model: each gets its own table (vector(dimensions)) and HNSW index.
CREATE TABLE kb.embedding_spaces (
    space_id    integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model       text NOT NULL UNIQUE CHECK (model ~ '^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$'),
    dimensions  integer NOT NULL CHECK (dimensions BETWEEN 1 AND 2000),
    table_name  text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Per-tenant usage counters (kept in the ingest transaction; the row lock serialises a
-- tenant's writes so quotas hold under concurrency).
CREATE TABLE kb.tenants (
    tenant_id    text PRIMARY KEY REFERENCES kb.tenant_keys (tenant_id),
    documents    bigint NOT NULL DEFAULT 0,
    bytes        bigint NOT NULL DEFAULT 0,
    chunks       bigint NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE kb.documents (
    tenant_id        text NOT NULL,
    document_id      text NOT NULL CHECK (length(document_id) BETWEEN 1 AND 256),
    title            text NOT NULL DEFAULT '',
    content_type     text NOT NULL CHECK (content_type IN ('text', 'markdown', 'html', 'pdf')),
    content_hash     text NOT NULL,
    -- Hash of everything that defines the stored version (content, title, metadata, source,
    -- chunker settings, embedding model): equal fingerprint means an UNCHANGED re-ingest.
    fingerprint      text NOT NULL,
    size_bytes       bigint NOT NULL CHECK (size_bytes >= 0),
    chunk_count      integer NOT NULL CHECK (chunk_count >= 0),
    metadata         jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(metadata) = 'object'),
    source_uri       text NOT NULL DEFAULT '',
    embedding_model  text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, document_id)
);
CREATE INDEX documents_metadata_idx ON kb.documents USING gin (metadata jsonb_path_ops);

CREATE TABLE kb.chunks (
    tenant_id    text NOT NULL,
    document_id  text NOT NULL,
    chunk_index  integer NOT NULL CHECK (chunk_index >= 0),
    heading      text NOT NULL DEFAULT '',
    body         text NOT NULL,
    text_hash    text NOT NULL,
    tsv          tsvector GENERATED ALWAYS AS (
                     setweight(to_tsvector('english', heading), 'A')
                     || setweight(to_tsvector('english', body), 'B')
                 ) STORED,
    PRIMARY KEY (tenant_id, document_id, chunk_index)
) PARTITION BY LIST (tenant_id);
CREATE INDEX chunks_tsv_idx ON kb.chunks USING gin (tsv);

-- Row-level security on every tenant-owned table.
ALTER TABLE kb.tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE kb.tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON kb.tenants
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));

ALTER TABLE kb.documents ENABLE ROW LEVEL SECURITY;
ALTER TABLE kb.documents FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON kb.documents
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));

ALTER TABLE kb.chunks ENABLE ROW LEVEL SECURITY;
ALTER TABLE kb.chunks FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON kb.chunks
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));

-- Creates (once) the per-tenant partitions of kb.chunks and of every embedding table.
-- SECURITY DEFINER so the runtime role needs no DDL rights; it may only act for the tenant
-- its transaction is bound to.
CREATE FUNCTION kb.ensure_tenant(p_tenant text) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_key integer;
    v_space record;
    v_part text;
BEGIN
    IF p_tenant IS NULL OR p_tenant !~ '^[a-z0-9][a-z0-9-]{0,62}$' THEN
        RAISE EXCEPTION 'invalid tenant id' USING ERRCODE = '22023';
    END IF;
    IF p_tenant IS DISTINCT FROM current_setting('app.tenant_id', true) THEN
        RAISE EXCEPTION 'ensure_tenant may only act for the current tenant'
            USING ERRCODE = '42501';
    END IF;
    -- Serialise concurrent first ingests of the same tenant (and space creation).
    PERFORM pg_advisory_xact_lock(hashtext('parley_kb.partitions'));
    INSERT INTO kb.tenant_keys (tenant_id) VALUES (p_tenant) ON CONFLICT DO NOTHING;
    SELECT tenant_key INTO v_key FROM kb.tenant_keys WHERE tenant_id = p_tenant;
    INSERT INTO kb.tenants (tenant_id) VALUES (p_tenant) ON CONFLICT DO NOTHING;

    v_part := format('chunks_p%s', v_key);
    IF to_regclass(format('kb.%I', v_part)) IS NULL THEN
        EXECUTE format('CREATE TABLE kb.%I PARTITION OF kb.chunks FOR VALUES IN (%L)',
                       v_part, p_tenant);
    END IF;
    FOR v_space IN SELECT table_name FROM kb.embedding_spaces LOOP
        v_part := format('%s_p%s', v_space.table_name, v_key);
        IF to_regclass(format('kb.%I', v_part)) IS NULL THEN
            EXECUTE format('CREATE TABLE kb.%I PARTITION OF kb.%I FOR VALUES IN (%L)',
                           v_part, v_space.table_name, p_tenant);
        END IF;
    END LOOP;
    RETURN v_key;
END
$fn$;

-- Creates (once) the embedding table of a model: LIST-partitioned per tenant, one HNSW index
-- per partition (declared on the parent), partitions for every known tenant. Owner only.
CREATE FUNCTION kb.ensure_embedding_space(p_model text, p_dimensions integer,
                                          p_m integer DEFAULT 16,
                                          p_ef_construction integer DEFAULT 64)
    RETURNS text
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_space record;
    v_table text;
    v_tenant record;
    v_vector_schema text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('parley_kb.partitions'));
    SELECT extnamespace::regnamespace::text INTO v_vector_schema
        FROM pg_extension WHERE extname = 'vector';
    SELECT * INTO v_space FROM kb.embedding_spaces WHERE model = p_model;
    IF FOUND THEN
        IF v_space.dimensions <> p_dimensions THEN
            RAISE EXCEPTION 'embedding model % is stored with % dimensions, not %',
                p_model, v_space.dimensions, p_dimensions USING ERRCODE = '22023';
        END IF;
        v_table := v_space.table_name;
    ELSE
        INSERT INTO kb.embedding_spaces (model, dimensions, table_name)
            VALUES (p_model, p_dimensions, 'pending:' || p_model)
            RETURNING space_id INTO v_space;
        v_table := format('emb_%s', v_space.space_id);
        UPDATE kb.embedding_spaces SET table_name = v_table WHERE model = p_model;
        EXECUTE format(
            'CREATE TABLE kb.%I ('
            '  tenant_id text NOT NULL,'
            '  document_id text NOT NULL,'
            '  chunk_index integer NOT NULL,'
            '  embedding %s.vector(%s) NOT NULL,'
            '  PRIMARY KEY (tenant_id, document_id, chunk_index)'
            ') PARTITION BY LIST (tenant_id)', v_table, v_vector_schema, p_dimensions);
        EXECUTE format('CREATE INDEX %I ON kb.%I USING hnsw (embedding %s.vector_cosine_ops) '
                       'WITH (m = %s, ef_construction = %s)',
                       v_table || '_hnsw', v_table, v_vector_schema, p_m, p_ef_construction);
        EXECUTE format('ALTER TABLE kb.%I ENABLE ROW LEVEL SECURITY', v_table);
        EXECUTE format('ALTER TABLE kb.%I FORCE ROW LEVEL SECURITY', v_table);
        EXECUTE format('CREATE POLICY tenant_isolation ON kb.%I '
                       'USING (tenant_id = current_setting(''app.tenant_id'', true)) '
                       'WITH CHECK (tenant_id = current_setting(''app.tenant_id'', true))',
                       v_table);
        EXECUTE format('GRANT SELECT, INSERT, DELETE ON kb.%I TO parley_kb_runtime', v_table);
    END IF;
    FOR v_tenant IN SELECT tenant_id, tenant_key FROM kb.tenant_keys LOOP
        IF to_regclass(format('kb.%I', format('%s_p%s', v_table, v_tenant.tenant_key))) IS NULL
        THEN
            EXECUTE format('CREATE TABLE kb.%I PARTITION OF kb.%I FOR VALUES IN (%L)',
                           format('%s_p%s', v_table, v_tenant.tenant_key), v_table,
                           v_tenant.tenant_id);
        END IF;
    END LOOP;
    RETURN v_table;
END
$fn$;

REVOKE ALL ON FUNCTION kb.ensure_tenant(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION kb.ensure_embedding_space(text, integer, integer, integer) FROM PUBLIC;

GRANT USAGE ON SCHEMA kb TO parley_kb_runtime;
GRANT SELECT ON kb.embedding_spaces TO parley_kb_runtime;
GRANT SELECT, UPDATE ON kb.tenants TO parley_kb_runtime;
GRANT SELECT, INSERT, UPDATE, DELETE ON kb.documents TO parley_kb_runtime;
GRANT SELECT, INSERT, DELETE ON kb.chunks TO parley_kb_runtime;
GRANT EXECUTE ON FUNCTION kb.ensure_tenant(text) TO parley_kb_runtime;
