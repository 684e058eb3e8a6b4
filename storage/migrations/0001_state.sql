-- Entities driven by state machines and their full transition history.
-- migrate:up
CREATE TABLE entity_states (
    kind           VARCHAR NOT NULL,
    entity_id      VARCHAR NOT NULL,
    state          VARCHAR NOT NULL,
    -- Equals the seq of the entity's last history row; optimistic concurrency checks it.
    version        INTEGER NOT NULL,
    previous_state VARCHAR,
    created_at     TIMESTAMPTZ NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (kind, entity_id)
);
CREATE TABLE state_history (
    kind         VARCHAR NOT NULL,
    entity_id    VARCHAR NOT NULL,
    seq          INTEGER NOT NULL,
    from_state   VARCHAR,
    to_state     VARCHAR NOT NULL,
    "trigger"    VARCHAR NOT NULL,
    triggered_by VARCHAR NOT NULL,
    reason       VARCHAR,
    metadata     JSON,
    happened_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (kind, entity_id, seq)
);
-- migrate:down
DROP TABLE state_history;
DROP TABLE entity_states;
