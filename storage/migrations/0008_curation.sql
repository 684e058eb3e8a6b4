-- Curation (batch results into Label Studio for review, reviewed labels back): one row per
-- export (a batch and a schema; its state and history are entity_states / state_history,
-- kind 'curation_export'), and one row per pull of reviewed annotations that found new ones.
-- migrate:up
CREATE TABLE curation_exports (
    id                 VARCHAR PRIMARY KEY,
    batch_id           VARCHAR NOT NULL,
    schema_name        VARCHAR NOT NULL,
    -- the schema itself (kind and labels or fields), as used
    schema             JSON NOT NULL,
    project_title      VARCHAR NOT NULL,
    -- the Label Studio import JSON in the bucket
    export_key         VARCHAR NOT NULL,
    tasks              INTEGER NOT NULL,
    -- lines whose answer does not fit the schema: [{custom_id, message}]
    problems           JSON NOT NULL,
    failed_requests    INTEGER NOT NULL,
    -- where reviewed datasets go for evaluation (both null: not evaluated)
    evaluate_use_case  VARCHAR,
    evaluate_model     VARCHAR,
    -- known once Label Studio has the project
    project_id         INTEGER,
    imported           INTEGER NOT NULL DEFAULT 0,
    -- the last failure to reach or use Label Studio, and whether trying again may help
    last_error         VARCHAR,
    retryable          BOOLEAN NOT NULL DEFAULT false,
    created_at         TIMESTAMPTZ NOT NULL,
    updated_at         TIMESTAMPTZ NOT NULL
);
CREATE TABLE curation_pulls (
    export_id    VARCHAR NOT NULL,
    -- a digest of the annotations read: the same reviews are not evaluated twice
    fingerprint  VARCHAR NOT NULL,
    reviewed     INTEGER NOT NULL,
    dataset_key  VARCHAR NOT NULL,
    pulled_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (export_id, fingerprint)
);
-- migrate:down
DROP TABLE curation_pulls;
DROP TABLE curation_exports;
