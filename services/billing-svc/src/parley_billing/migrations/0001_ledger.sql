-- billing-svc schema: an append-only usage ledger priced at ingest, two rollups maintained in
-- the same transaction as the ledger insert, budgets, and budget alerts.
-- Every table carries tenant_id and is protected by row-level security keyed on the
-- transaction-local setting app.tenant_id (set with set_config(..., true) per request).

CREATE TABLE usage_events (
    tenant_id             text        NOT NULL,
    idempotency_key       text        NOT NULL,
    occurred_at           timestamptz NOT NULL,
    received_at           timestamptz NOT NULL DEFAULT now(),
    session_id            text        NOT NULL,
    service               text        NOT NULL,
    usage_type            text        NOT NULL,
    provider              text        NOT NULL,
    model_id              text        NOT NULL,
    -- The billable quantity in `unit` (tokens, seconds, characters, minutes, frames).
    quantity              double precision NOT NULL,
    unit                  text        NOT NULL,
    -- LLM: prompt tokens including cached reads and cache writes; embedding: tokens.
    input_tokens          bigint      NOT NULL DEFAULT 0,
    cached_input_tokens   bigint      NOT NULL DEFAULT 0,
    cache_write_tokens    bigint      NOT NULL DEFAULT 0,
    output_tokens         bigint      NOT NULL DEFAULT 0,
    frames_seen           bigint      NOT NULL DEFAULT 0,
    frames_kept           bigint      NOT NULL DEFAULT 0,
    dropped_rate          bigint      NOT NULL DEFAULT 0,
    dropped_duplicate     bigint      NOT NULL DEFAULT 0,
    image_tokens_sent     bigint      NOT NULL DEFAULT 0,
    naive_image_tokens    bigint      NOT NULL DEFAULT 0,
    -- Priced once, at ingest, with the catalog entry in force at occurred_at. Money is
    -- integer pico-USD (1e-12 USD): exact, and sums never round.
    cost_pusd                  bigint NOT NULL,
    naive_pusd                 bigint NOT NULL,
    saved_caching_pusd         bigint NOT NULL DEFAULT 0,
    saved_routing_pusd         bigint NOT NULL DEFAULT 0,
    saved_dedup_pusd           bigint NOT NULL DEFAULT 0,
    saved_adaptive_fps_pusd    bigint NOT NULL DEFAULT 0,
    saved_embedding_cache_pusd bigint NOT NULL DEFAULT 0,
    price_version         text        NOT NULL,
    -- The event exactly as received (serialized parley.billing.v1.UsageEvent), for audit.
    event                 bytea       NOT NULL,
    PRIMARY KEY (tenant_id, idempotency_key)
);
CREATE INDEX usage_events_tenant_time ON usage_events (tenant_id, occurred_at);

-- Rollups, maintained in the ingest transaction. Money in pico-USD as bigint: one row holds at
-- most one hour of one model for one tenant, so the 9.2 million USD a bigint holds is far off
-- (and an overflow would fail the batch loudly, never round it); reports sum into numeric.
-- Hourly: a batch of live events touches about as many hourly rows as daily ones, and a report
-- over any period reads whole hours here and at most two partial hours from the ledger.
-- Per tenant / hour (UTC) / service / usage type / model.
CREATE TABLE usage_hourly (
    tenant_id             text        NOT NULL,
    hour                  timestamptz NOT NULL,
    day                   date        NOT NULL,  -- the hour's UTC day, for day reports
    service               text    NOT NULL,
    usage_type            text    NOT NULL,
    model_id              text    NOT NULL,
    events                bigint  NOT NULL,
    quantity              double precision NOT NULL,
    input_tokens          bigint  NOT NULL,
    cached_input_tokens   bigint  NOT NULL,
    cache_write_tokens    bigint  NOT NULL,
    output_tokens         bigint  NOT NULL,
    frames_seen           bigint  NOT NULL,
    frames_kept           bigint  NOT NULL,
    dropped_rate          bigint  NOT NULL,
    dropped_duplicate     bigint  NOT NULL,
    image_tokens_sent     bigint  NOT NULL,
    naive_image_tokens    bigint  NOT NULL,
    cost_pusd                  bigint  NOT NULL,
    naive_pusd                 bigint  NOT NULL,
    saved_caching_pusd         bigint  NOT NULL,
    saved_routing_pusd         bigint  NOT NULL,
    saved_dedup_pusd           bigint  NOT NULL,
    saved_adaptive_fps_pusd    bigint  NOT NULL,
    saved_embedding_cache_pusd bigint  NOT NULL,
    PRIMARY KEY (tenant_id, hour, service, usage_type, model_id)
);

-- Per tenant / session / hour / service / usage type / model / price version (sessions last
-- minutes, so this is barely larger than one row per session and line item).
CREATE TABLE usage_session_hourly (
    tenant_id             text        NOT NULL,
    session_id            text        NOT NULL,
    hour                  timestamptz NOT NULL,
    day                   date        NOT NULL,
    service               text        NOT NULL,
    usage_type            text        NOT NULL,
    model_id              text        NOT NULL,
    price_version         text        NOT NULL,
    unit                  text        NOT NULL,
    events                bigint      NOT NULL,
    quantity              double precision NOT NULL,
    input_tokens          bigint      NOT NULL,
    cached_input_tokens   bigint      NOT NULL,
    cache_write_tokens    bigint      NOT NULL,
    output_tokens         bigint      NOT NULL,
    frames_seen           bigint      NOT NULL,
    frames_kept           bigint      NOT NULL,
    dropped_rate          bigint      NOT NULL,
    dropped_duplicate     bigint      NOT NULL,
    image_tokens_sent     bigint      NOT NULL,
    naive_image_tokens    bigint      NOT NULL,
    cost_pusd                  bigint  NOT NULL,
    naive_pusd                 bigint  NOT NULL,
    saved_caching_pusd         bigint  NOT NULL,
    saved_routing_pusd         bigint  NOT NULL,
    saved_dedup_pusd           bigint  NOT NULL,
    saved_adaptive_fps_pusd    bigint  NOT NULL,
    saved_embedding_cache_pusd bigint  NOT NULL,
    first_at              timestamptz NOT NULL,
    last_at               timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, session_id, hour, service, usage_type, model_id, price_version)
);
CREATE INDEX usage_session_hourly_tenant_hour ON usage_session_hourly (tenant_id, hour);

CREATE TABLE budgets (
    tenant_id         text             PRIMARY KEY,
    monthly_limit_usd numeric(20, 6)   NOT NULL CHECK (monthly_limit_usd >= 0),
    soft_limit_ratio  double precision NOT NULL CHECK (soft_limit_ratio > 0 AND soft_limit_ratio <= 1),
    hard_limit        boolean          NOT NULL,
    updated_at        timestamptz      NOT NULL DEFAULT now(),
    updated_by        text             NOT NULL DEFAULT ''
);

-- One row per alert fired, so each level alerts once per tenant and month across replicas.
CREATE TABLE budget_alerts (
    tenant_id  text        NOT NULL,
    month      date        NOT NULL,
    level      text        NOT NULL,
    spent_usd  numeric     NOT NULL,
    limit_usd  numeric     NOT NULL,
    fired_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, month, level)
);

-- The ledger is append-only, even for its owner (who can disable the trigger for retention).
CREATE FUNCTION usage_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'usage_events is an append-only ledger (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER usage_events_no_update_delete BEFORE UPDATE OR DELETE ON usage_events
    FOR EACH ROW EXECUTE FUNCTION usage_events_append_only();
CREATE TRIGGER usage_events_no_truncate BEFORE TRUNCATE ON usage_events
    FOR EACH STATEMENT EXECUTE FUNCTION usage_events_append_only();

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['usage_events', 'usage_hourly', 'usage_session_hourly', 'budgets',
                             'budget_alerts']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('REVOKE ALL ON %I FROM PUBLIC', t);
        -- current_setting(..., true) is NULL when unset: no tenant, no rows.
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I '
            'USING (tenant_id = current_setting(''app.tenant_id'', true)) '
            'WITH CHECK (tenant_id = current_setting(''app.tenant_id'', true))', t);
    END LOOP;
END
$$;

-- The ledger in USD for people reading it with psql; RLS applies through the view.
CREATE VIEW usage_events_usd WITH (security_invoker = true) AS
SELECT tenant_id, idempotency_key, occurred_at, received_at, session_id, service, usage_type,
       provider, model_id, quantity, unit, input_tokens, cached_input_tokens,
       cache_write_tokens, output_tokens, frames_seen, frames_kept, dropped_rate,
       dropped_duplicate, image_tokens_sent, naive_image_tokens,
       cost_pusd::numeric / 1e12 AS cost_usd, naive_pusd::numeric / 1e12 AS naive_usd,
       price_version
FROM usage_events;
