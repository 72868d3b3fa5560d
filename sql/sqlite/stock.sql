-- The stock service's table and seed (the demo's `dtm-gozero-stock.sql`), SQLite.
--
-- Idempotent: safe to apply at every service start.
CREATE TABLE IF NOT EXISTS stock (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  -- One stock row per goods: the deduction
  -- `update stock set num = num - ? where goods_id = ? and num >= ?`
  -- must find exactly one row to be meaningful.
  goods_id INTEGER NOT NULL DEFAULT 0 UNIQUE,
  num INTEGER NOT NULL DEFAULT 0
);

-- Goods 1 starts with 100 units. INSERT OR IGNORE (on the unique goods_id)
-- makes the seed a no-op once the row exists: a restart must not refill the
-- stock.
INSERT OR IGNORE INTO stock (goods_id, num) VALUES (1, 100);
