-- Reserved for the quota branch's migration 0007: a no-op, so that curation's 0008 applies on
-- a branch without it. Replace this file with quota's 0007 when both are merged.
-- migrate:up
SELECT 1;
-- migrate:down
SELECT 1;
