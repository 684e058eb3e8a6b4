-- The highest task id ever given, kept when `queue cleanup` deletes tasks: new ids continue
-- above it, so an id in invocations, object_receipts or a log line names one task for good.
-- A database from before starts above every id any table still names (ids may have been
-- reused there already; this is the best that can be known now).
-- migrate:up
CREATE TABLE id_high_water (
    name    VARCHAR PRIMARY KEY,
    last_id BIGINT NOT NULL
);
INSERT INTO id_high_water
SELECT 'tasks', coalesce(max(id), 0) FROM (
    SELECT max(id) AS id FROM tasks
    UNION ALL SELECT max(task_id) FROM task_attempts
    UNION ALL SELECT max(greatest(task_id, coalesce(replayed_task_id, 0))) FROM dead_letters
    UNION ALL SELECT max(task_id) FROM invocations
    UNION ALL SELECT max(task_id) FROM object_receipts
    UNION ALL SELECT max(task_id) FROM object_lineage
    UNION ALL SELECT max(task_id) FROM schedule_runs
);
-- migrate:down
DROP TABLE id_high_water;
