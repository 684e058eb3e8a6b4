-- Batch inference (OpenAI's Files and Batch API): file metadata (bytes live in the bucket),
-- batches (status and per-status times come from entity_states / state_history, kind
-- 'batch'), each line's outcome as it completes, failed requests, worker heartbeats and
-- benchmark figures. Lines, failures and figures are written first-wins (ON CONFLICT DO
-- NOTHING): a line retried after a crash never replaces the result already kept.
-- migrate:up
CREATE TABLE batch_files (
    id          VARCHAR PRIMARY KEY,
    filename    VARCHAR NOT NULL,
    -- batch | batch_output
    purpose     VARCHAR NOT NULL,
    bytes       BIGINT NOT NULL,
    -- where the bytes are: bucket and key
    bucket      VARCHAR NOT NULL,
    "key"       VARCHAR NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ,
    deleted_at  TIMESTAMPTZ
);
CREATE TABLE batches (
    id                VARCHAR PRIMARY KEY,
    input_file_id     VARCHAR NOT NULL,
    endpoint          VARCHAR NOT NULL,
    completion_window VARCHAR NOT NULL,
    metadata          JSON,
    -- api | file (dropped under batches/), and the input's name for the latter
    source            VARCHAR NOT NULL,
    name              VARCHAR,
    -- the batch this one was made from (its failed, cancelled or expired lines)
    retried_from      VARCHAR,
    created_at        TIMESTAMPTZ NOT NULL,
    expires_at        TIMESTAMPTZ NOT NULL,
    -- known once validated
    model             VARCHAR,
    total             INTEGER,
    chunks            INTEGER,
    errors            JSON,
    output_file_id    VARCHAR,
    error_file_id     VARCHAR
);
CREATE TABLE batch_lines (
    batch_id          VARCHAR NOT NULL,
    -- 1-based line number in the input file
    line              INTEGER NOT NULL,
    custom_id         VARCHAR NOT NULL,
    -- the upstream's HTTP status, NULL when no answer came (then error_code says why)
    status_code       INTEGER,
    request_id        VARCHAR,
    -- the upstream's JSON answer, verbatim
    response          JSON,
    error_code        VARCHAR,
    error_message     VARCHAR,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    attempts          INTEGER NOT NULL,
    worker            VARCHAR,
    finished_at       TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (batch_id, line)
);
CREATE TABLE batch_chunks_done (
    batch_id    VARCHAR NOT NULL,
    chunk       INTEGER NOT NULL,
    -- completed | stopped (cancelled or expired) | abandoned (its task died)
    outcome     VARCHAR NOT NULL,
    finished_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (batch_id, chunk)
);
-- The dead-letter table of the seed: every line that did not succeed, with its error and attempts.
CREATE TABLE batch_failed_requests (
    batch_id      VARCHAR NOT NULL,
    line          INTEGER NOT NULL,
    custom_id     VARCHAR NOT NULL,
    status_code   INTEGER,
    error_code    VARCHAR NOT NULL,
    error_message VARCHAR NOT NULL,
    attempts      INTEGER NOT NULL,
    failed_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (batch_id, line)
);
-- One row per beat (a worker's latest beat: arg_max over beat_at).
CREATE TABLE batch_worker_heartbeats (
    worker      VARCHAR NOT NULL,
    pid         INTEGER NOT NULL,
    host        VARCHAR NOT NULL,
    batch_id    VARCHAR NOT NULL,
    chunk       INTEGER NOT NULL,
    lines_done  INTEGER NOT NULL,
    beat_at     TIMESTAMPTZ NOT NULL
);
CREATE TABLE batch_benchmarks (
    batch_id          VARCHAR PRIMARY KEY,
    model             VARCHAR NOT NULL,
    lines             INTEGER NOT NULL,
    completed         INTEGER NOT NULL,
    failed            INTEGER NOT NULL,
    prompt_tokens     BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    duration_s        DOUBLE NOT NULL,
    lines_per_s       DOUBLE NOT NULL,
    tokens_per_s      DOUBLE NOT NULL,
    started_at        TIMESTAMPTZ NOT NULL,
    finished_at       TIMESTAMPTZ NOT NULL
);
-- migrate:down
DROP TABLE batch_benchmarks;
DROP TABLE batch_worker_heartbeats;
DROP TABLE batch_failed_requests;
DROP TABLE batch_chunks_done;
DROP TABLE batch_lines;
DROP TABLE batches;
DROP TABLE batch_files;
