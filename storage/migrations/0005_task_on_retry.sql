-- Effects a task commits with each failed attempt that will be retried (e.g. an entity's
-- move to RETRYING), beside the on_dead effects it commits with its dead letter.
-- migrate:up
ALTER TABLE tasks ADD COLUMN on_retry JSON;
-- migrate:down
ALTER TABLE tasks DROP COLUMN on_retry;
