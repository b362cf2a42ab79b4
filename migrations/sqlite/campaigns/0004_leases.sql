-- Campaign ownership: one dispatcher at a time holds a campaign's lease (heartbeat until
-- lease_until); every acquisition raises lease_fence, which fenced writes (checkpoints) check.
-- Idempotency keys name the resource they create, bound when the key is claimed.
ALTER TABLE campaigns ADD COLUMN lease_owner TEXT;
ALTER TABLE campaigns ADD COLUMN lease_until INTEGER;
ALTER TABLE campaigns ADD COLUMN lease_fence INTEGER NOT NULL DEFAULT 0;
ALTER TABLE idempotency_keys ADD COLUMN resource_id TEXT NOT NULL DEFAULT '';
