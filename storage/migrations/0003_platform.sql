-- The function platform: every invocation, object-event receipts, output lineage, schedules.
-- migrate:up
CREATE TABLE invocations (
    task_id     BIGINT NOT NULL,
    attempt     INTEGER NOT NULL,
    function    VARCHAR NOT NULL,
    -- upload | schedule | http | reprocess
    source      VARCHAR NOT NULL,
    event       JSON NOT NULL,
    worker      VARCHAR,
    started_at  TIMESTAMPTZ NOT NULL,
    duration_ms DOUBLE NOT NULL,
    -- succeeded | failed | timed_out
    outcome     VARCHAR NOT NULL,
    error       VARCHAR
);
-- One row per object event admitted for a function; (function, bucket, key, version) is
-- processed at most once, and an event older (by sequencer) than one admitted is stale.
CREATE TABLE object_receipts (
    function    VARCHAR NOT NULL,
    bucket      VARCHAR NOT NULL,
    "key"       VARCHAR NOT NULL,
    version     VARCHAR NOT NULL,
    sequencer   VARCHAR,
    event_name  VARCHAR NOT NULL,
    task_id     BIGINT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (function, bucket, "key", version)
);
-- The last object each handler wrote under a key, with how many handler hops produced it
-- (the recursion guard). Written before the object itself, so its event always finds it.
CREATE TABLE object_lineage (
    bucket     VARCHAR NOT NULL,
    "key"      VARCHAR NOT NULL,
    hop        INTEGER NOT NULL,
    function   VARCHAR NOT NULL,
    task_id    BIGINT NOT NULL,
    written_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (bucket, "key")
);
CREATE TABLE schedule_runs (
    schedule    VARCHAR PRIMARY KEY,
    last_fire   TIMESTAMPTZ NOT NULL,
    task_id     BIGINT NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);
-- migrate:down
DROP TABLE schedule_runs;
DROP TABLE object_lineage;
DROP TABLE object_receipts;
DROP TABLE invocations;
