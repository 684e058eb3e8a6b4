-- Quotas of metered services (storage/quota.py) and the workflow monitoring views.
-- Usage is kept per service per minute (what a restart reloads, so it neither forgets nor
-- counts twice); the limiter's own state (GCRA: one theoretical arrival time per rate) and
-- what the upstream last said about its limits (x-ratelimit-* headers) beside it.
-- migrate:up
CREATE TABLE quota_usage (
    service        VARCHAR NOT NULL,
    -- the start of the minute (UTC)
    minute         TIMESTAMPTZ NOT NULL,
    requests       BIGINT NOT NULL,
    -- counted at admission (an estimate), corrected to the upstream's own count once answered
    tokens         BIGINT NOT NULL,
    input_tokens   BIGINT NOT NULL,
    output_tokens  BIGINT NOT NULL,
    cost_usd       DOUBLE NOT NULL,
    PRIMARY KEY (service, minute)
);
CREATE TABLE quota_limiter (
    service     VARCHAR NOT NULL,
    -- requests_per_minute | tokens_per_minute
    rate        VARCHAR NOT NULL,
    -- GCRA's theoretical arrival time, epoch microseconds
    tat_us      BIGINT NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (service, rate)
);
CREATE TABLE quota_upstream (
    service     VARCHAR NOT NULL,
    -- requests | tokens
    metric      VARCHAR NOT NULL,
    "limit"     BIGINT,
    remaining   BIGINT,
    reset_at    TIMESTAMPTZ NOT NULL,
    observed_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (service, metric)
);
-- Every transition of every workflow (any kind), with how long the entity spent in the state it left.
CREATE VIEW workflow_transitions AS
SELECT kind, entity_id, seq, from_state, to_state, "trigger", triggered_by, reason, metadata, happened_at,
       epoch(happened_at) - epoch(lag(happened_at) OVER (PARTITION BY kind, entity_id ORDER BY seq)) AS seconds_in_from_state
FROM state_history;
-- What happened to workflows, in time order: transitions and the notifications they sent.
CREATE VIEW workflow_events AS
SELECT kind, entity_id, 'transition' AS event, from_state || ' -> ' || to_state AS detail, triggered_by AS actor,
       reason, happened_at
FROM state_history
UNION ALL
SELECT entity_kind AS kind, entity_id, 'notification' AS event, kind || ': ' || subject AS detail, status AS actor,
       last_error AS reason, created_at AS happened_at
FROM notifications WHERE entity_kind IS NOT NULL;
-- Time spent per state (a state still held counts until now), per workflow kind.
CREATE VIEW workflow_metrics AS
WITH spans AS (
    SELECT kind, entity_id, to_state AS state,
           coalesce(epoch(lead(happened_at) OVER (PARTITION BY kind, entity_id ORDER BY seq)), epoch(now()))
               - epoch(happened_at) AS seconds
    FROM state_history
)
SELECT kind, state, count(*) AS entries, count(DISTINCT entity_id) AS entities, sum(seconds) AS total_seconds,
       avg(seconds) AS avg_seconds, max(seconds) AS max_seconds
FROM spans GROUP BY kind, state;
-- Workflows reaching each state per hour (completed per hour is throughput).
CREATE VIEW workflow_throughput_hourly AS
SELECT kind, to_state AS state, date_trunc('hour', happened_at) AS hour, count(*) AS transitions
FROM state_history GROUP BY kind, to_state, date_trunc('hour', happened_at);
-- Quota usage per service per hour.
CREATE VIEW quota_usage_hourly AS
SELECT service, date_trunc('hour', minute) AS hour, sum(requests) AS requests, sum(input_tokens) AS input_tokens,
       sum(output_tokens) AS output_tokens, sum(cost_usd) AS cost_usd
FROM quota_usage GROUP BY service, date_trunc('hour', minute);
-- migrate:down
DROP VIEW quota_usage_hourly;
DROP VIEW workflow_throughput_hourly;
DROP VIEW workflow_metrics;
DROP VIEW workflow_events;
DROP VIEW workflow_transitions;
DROP TABLE quota_upstream;
DROP TABLE quota_limiter;
DROP TABLE quota_usage;
