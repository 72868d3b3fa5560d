-- The order service's table (the demo's `dtm-gozero-order.sql`), SQLite.
--
-- Idempotent: safe to apply at every service start.
--
-- One change from the demo: the `gid` column. The Go demo's compensation
-- looked up "the latest order of this user and goods" and cancelled it; with
-- two quick orders of the same user in flight, one saga's rollback can cancel
-- the other's order. Storing the saga's gid lets the compensation cancel
-- exactly the order its own action created.
-- `order` is a keyword: always quote it.
CREATE TABLE IF NOT EXISTS "order" (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  user_id INTEGER NOT NULL DEFAULT 0,
  goods_id INTEGER NOT NULL DEFAULT 0,
  num INTEGER NOT NULL DEFAULT 0,
  -- -1: rolled back (saga compensated), 0: live, awaiting payment.
  row_state INTEGER NOT NULL DEFAULT 0,
  -- dtm gid of the saga that created this order ('' outside a saga).
  gid TEXT NOT NULL DEFAULT ''
);

-- Not unique: orders created outside a saga keep the default ''.
CREATE INDEX IF NOT EXISTS order_gid_idx ON "order" (gid);
