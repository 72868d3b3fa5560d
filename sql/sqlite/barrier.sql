-- dtm's subtransaction barrier table, SQLite.
--
-- dtm has no SQLite variant; this is its MySQL table in SQLite types, with
-- the same columns and the same unique key, so the same barrier algorithm
-- (`insert or ignore`) works unchanged. SQLite has no schemas in the MySQL
-- sense, so the default table name is plain `barrier`.
--
-- `barrier::schema::ensure_barrier_table` applies this file for any
-- configured table name: it rewrites the name that follows
-- `CREATE TABLE IF NOT EXISTS` below, so keep that phrase and the name
-- `barrier` together on one line.
CREATE TABLE IF NOT EXISTS barrier (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  trans_type TEXT DEFAULT '',
  gid TEXT DEFAULT '',
  branch_id TEXT DEFAULT '',
  op TEXT DEFAULT '',
  barrier_id TEXT DEFAULT '',
  -- The op whose call inserted this row.
  reason TEXT DEFAULT '',
  create_time TEXT DEFAULT CURRENT_TIMESTAMP,
  update_time TEXT DEFAULT CURRENT_TIMESTAMP,
  -- The whole barrier rests on this key: `insert or ignore` of an existing
  -- key changes 0 rows, which is how the barrier recognises a duplicate
  -- delivery or a hanging forward op.
  CONSTRAINT uniq_barrier UNIQUE (gid, branch_id, op, barrier_id)
);
