-- Delivery claims: who may send a channel message now (core/src/ports.rs,
-- DeliveryStore::claim; the same table as migrations/sqlite/deliveries/0002_claims.sql). Two
-- copies of one message in the hands of two consumers (a fan-out batch redone after a crash
-- publishes its channel messages again) both found the key not processed and both sent; the
-- claim lets one of them send and makes the other wait until the claim is processed or runs
-- out. One upsert claims (storage/src/mysql/deliveries.rs); purged by time with the marks.
CREATE TABLE IF NOT EXISTS delivery_claims (
    msg_key     VARCHAR(700) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    holder      VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    held_until  BIGINT NOT NULL,
    PRIMARY KEY (msg_key),
    KEY delivery_claims_by_time (held_until)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
