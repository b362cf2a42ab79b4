-- Delivery claims: who may send a channel message now (core/src/ports.rs,
-- DeliveryStore::claim). Two copies of one message in the hands of two consumers (a fan-out
-- batch redone after a crash publishes its channel messages again) both found the key not
-- processed and both sent; the claim lets one of them send and makes the other wait until the
-- claim is processed or runs out. Purged with the processed marks.
CREATE TABLE IF NOT EXISTS delivery_claims (
    key         TEXT PRIMARY KEY NOT NULL,  -- ChannelMessage::delivery_key
    holder      TEXT NOT NULL,              -- one handling of one copy (a random id)
    held_until  INTEGER NOT NULL            -- end of the claim's lease, Unix microseconds
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS delivery_claims_by_time ON delivery_claims (held_until);
