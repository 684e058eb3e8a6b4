-- Notifications (an outbox): a row commits with the state change that causes it, so none is
-- lost; the emulator's notifier then writes its .eml file, e-mails it and posts the webhook,
-- retrying with backoff while SMTP or the webhook is down.
-- migrate:up
CREATE TABLE notifications (
    id              BIGINT PRIMARY KEY,
    -- template_sent | config_invalid | qc_passed | qc_failed | evaluation_completed | ...
    kind            VARCHAR NOT NULL,
    recipients      JSON NOT NULL,
    subject         VARCHAR NOT NULL,
    body            VARCHAR NOT NULL,
    attachments     JSON NOT NULL,
    entity_kind     VARCHAR,
    entity_id       VARCHAR,
    metadata        JSON NOT NULL,
    -- pending | sent | recorded (no channel configured: .eml only) | failed (attempts spent)
    status          VARCHAR NOT NULL,
    attempts        INTEGER NOT NULL,
    last_error      VARCHAR,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    email_sent_at   TIMESTAMPTZ,
    webhook_sent_at TIMESTAMPTZ,
    eml_path        VARCHAR,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL
);
-- migrate:down
DROP TABLE notifications;
