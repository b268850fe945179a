-- Re-embedding after a model change, and tenant offboarding.
--
-- Invariant from this migration on: the rows of a document in any embedding table (one per
-- model, kb.emb_<n>) belong to the document's current version. Every write or delete of a
-- document removes its vectors from every model's table (kb.delete_document_vectors), not
-- only from the configured model's. So "document D is embedded with model M" is simply
-- "M's table holds chunk_count rows for D", which is what `reembed` resumes from.

-- Before this migration a write replaced vectors in the configured model's table only: rows
-- in other models' tables may belong to an older version of the document. Keep only the
-- rows of the model each document was last written with (and drop rows of documents that no
-- longer exist). Runs per tenant with the tenant bound, so it also works for a non-superuser
-- owner under FORCE ROW LEVEL SECURITY.
DO $$
DECLARE
    v_tenant record;
    v_space record;
BEGIN
    FOR v_tenant IN SELECT tenant_id FROM kb.tenant_keys LOOP
        PERFORM set_config('app.tenant_id', v_tenant.tenant_id, true);
        FOR v_space IN SELECT model, table_name FROM kb.embedding_spaces LOOP
            EXECUTE format(
                'DELETE FROM kb.%I e WHERE e.tenant_id = $1 AND NOT EXISTS ('
                ' SELECT 1 FROM kb.documents d WHERE d.tenant_id = $1'
                ' AND d.document_id = e.document_id AND d.embedding_model = $2)',
                v_space.table_name)
                USING v_tenant.tenant_id, v_space.model;
        END LOOP;
    END LOOP;
    PERFORM set_config('app.tenant_id', '', true);
END
$$;

-- Removes a document's vectors from every embedding table (the caller's rights: row-level
-- security applies, so only rows of the tenant the transaction is bound to are reachable).
CREATE FUNCTION kb.delete_document_vectors(p_tenant text, p_document text) RETURNS bigint
    LANGUAGE plpgsql SECURITY INVOKER
    SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_space record;
    v_count bigint;
    v_total bigint := 0;
BEGIN
    FOR v_space IN SELECT table_name FROM kb.embedding_spaces ORDER BY space_id LOOP
        EXECUTE format('DELETE FROM kb.%I WHERE tenant_id = $1 AND document_id = $2',
                       v_space.table_name)
            USING p_tenant, p_document;
        GET DIAGNOSTICS v_count = ROW_COUNT;
        v_total := v_total + v_count;
    END LOOP;
    RETURN v_total;
END
$fn$;

-- Tenants that have storage (partitions), for operator commands over every tenant. The
-- runtime role cannot read kb.tenant_keys itself; tenant ids are not secret to it.
CREATE FUNCTION kb.stored_tenants() RETURNS SETOF text
    LANGUAGE sql SECURITY DEFINER STABLE
    SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT tenant_id FROM kb.tenant_keys ORDER BY tenant_id
$fn$;

-- Deletes everything kb-svc stores for a tenant: its partitions of kb.chunks and of every
-- embedding table (rows and HNSW/GIN/primary-key indexes go with them), its documents, its
-- usage counters and its partition key. Like ensure_tenant it acts only for the tenant the
-- transaction is bound to. Idempotent: a second call finds nothing and reports zeros.
--
-- Dropping a partition takes an ACCESS EXCLUSIVE lock on the parent table, which waits for
-- in-flight statements of other tenants on it and holds new ones back while it waits; the
-- lock timeout bounds that wait (the whole call then fails and changes nothing: retry).
CREATE FUNCTION kb.offboard_tenant(p_tenant text, p_lock_timeout_ms integer DEFAULT 5000)
    RETURNS jsonb
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_key integer;
    v_space record;
    v_part text;
    v_count bigint;
    v_documents bigint;
    v_bytes bigint;
    v_chunks bigint := 0;
    v_embeddings jsonb := '{}'::jsonb;
    v_dropped text[] := ARRAY[]::text[];
BEGIN
    IF p_tenant IS NULL OR p_tenant !~ '^[a-z0-9][a-z0-9-]{0,62}$' THEN
        RAISE EXCEPTION 'invalid tenant id' USING ERRCODE = '22023';
    END IF;
    IF p_tenant IS DISTINCT FROM current_setting('app.tenant_id', true) THEN
        RAISE EXCEPTION 'offboard_tenant may only act for the current tenant'
            USING ERRCODE = '42501';
    END IF;
    PERFORM set_config('lock_timeout', greatest(p_lock_timeout_ms, 1)::text || 'ms', true);
    PERFORM pg_advisory_xact_lock(hashtext('parley_kb.partitions'));
    SELECT tenant_key INTO v_key FROM kb.tenant_keys WHERE tenant_id = p_tenant;

    SELECT count(*), coalesce(sum(size_bytes), 0) INTO v_documents, v_bytes
        FROM kb.documents WHERE tenant_id = p_tenant;
    IF v_key IS NOT NULL THEN
        v_part := format('chunks_p%s', v_key);
        IF to_regclass(format('kb.%I', v_part)) IS NOT NULL THEN
            EXECUTE format('SELECT count(*) FROM kb.%I', v_part) INTO v_chunks;
            EXECUTE format('DROP TABLE kb.%I', v_part);
            v_dropped := v_dropped || ('kb.' || v_part);
        END IF;
        FOR v_space IN SELECT model, table_name FROM kb.embedding_spaces ORDER BY space_id LOOP
            v_part := format('%s_p%s', v_space.table_name, v_key);
            IF to_regclass(format('kb.%I', v_part)) IS NOT NULL THEN
                EXECUTE format('SELECT count(*) FROM kb.%I', v_part) INTO v_count;
                v_embeddings := v_embeddings || jsonb_build_object(v_space.model, v_count);
                EXECUTE format('DROP TABLE kb.%I', v_part);
                v_dropped := v_dropped || ('kb.' || v_part);
            END IF;
        END LOOP;
    END IF;
    DELETE FROM kb.documents WHERE tenant_id = p_tenant;
    DELETE FROM kb.tenants WHERE tenant_id = p_tenant;
    DELETE FROM kb.tenant_keys WHERE tenant_id = p_tenant;
    RETURN jsonb_build_object(
        'tenant_id', p_tenant,
        'existed', v_key IS NOT NULL OR v_documents > 0,
        'documents', v_documents,
        'bytes', v_bytes,
        'chunks', v_chunks,
        'embeddings', v_embeddings,
        'partitions_dropped', to_jsonb(v_dropped));
END
$fn$;

REVOKE ALL ON FUNCTION kb.delete_document_vectors(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION kb.stored_tenants() FROM PUBLIC;
REVOKE ALL ON FUNCTION kb.offboard_tenant(text, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION kb.delete_document_vectors(text, text) TO parley_kb_runtime;
GRANT EXECUTE ON FUNCTION kb.stored_tenants() TO parley_kb_runtime;
GRANT EXECUTE ON FUNCTION kb.offboard_tenant(text, integer) TO parley_kb_runtime;
