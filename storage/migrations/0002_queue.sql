-- The durable task queue: tasks, every attempt, dead letters.
-- migrate:up
CREATE TABLE tasks (
    id              BIGINT PRIMARY KEY,
    name            VARCHAR NOT NULL,
    args            JSON NOT NULL,
    priority        INTEGER NOT NULL,
    -- queued | running | retrying | succeeded | dead
    status          VARCHAR NOT NULL,
    attempts        INTEGER NOT NULL,
    max_attempts    INTEGER NOT NULL,
    not_before      TIMESTAMPTZ NOT NULL,
    claimed_at      TIMESTAMPTZ,
    lease_expires   TIMESTAMPTZ,
    -- Fencing token of the current lease; a report with an older token is rejected.
    token           BIGINT,
    worker          VARCHAR,
    idempotency_key VARCHAR,
    last_error      VARCHAR,
    result          JSON,
    -- Effects (transitions, tasks) committed together with the dead letter if the task dies.
    on_dead         JSON,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    finished_at     TIMESTAMPTZ
);
CREATE TABLE task_attempts (
    task_id     BIGINT NOT NULL,
    attempt     INTEGER NOT NULL,
    token       BIGINT NOT NULL,
    worker      VARCHAR,
    started_at  TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ NOT NULL,
    -- failed | lease_expired (a success is recorded on the task row itself)
    outcome     VARCHAR NOT NULL,
    error       VARCHAR,
    traceback   VARCHAR,
    PRIMARY KEY (task_id, attempt)
);
CREATE TABLE dead_letters (
    task_id          BIGINT PRIMARY KEY,
    name             VARCHAR NOT NULL,
    args             JSON NOT NULL,
    attempts         INTEGER NOT NULL,
    last_error       VARCHAR,
    died_at          TIMESTAMPTZ NOT NULL,
    replayed_task_id BIGINT,
    replayed_at      TIMESTAMPTZ
);
-- migrate:down
DROP TABLE dead_letters;
DROP TABLE task_attempts;
DROP TABLE tasks;
