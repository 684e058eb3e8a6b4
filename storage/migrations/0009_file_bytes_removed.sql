-- When a file's bytes left the bucket. A file deleted (DELETE /v1/files) or expired reads as
-- gone at once (deleted_at, expires_at), but the input of a batch still running keeps its
-- bytes until the batch ends; the sweep (batches-expire-files) removes them then. Rows from
-- before this column are all unremoved: the sweep removes what is left (a missing object is
-- not an error).
-- migrate:up
ALTER TABLE batch_files ADD COLUMN removed_at TIMESTAMPTZ;
-- migrate:down
ALTER TABLE batch_files DROP COLUMN removed_at;
