-- Coordinator storage, SQLite (the embedded default). dtm has no SQLite
-- schema; this mirrors the MySQL one column for column. Times are UTC text
-- 'YYYY-MM-DDTHH:MM:SS+00:00' (whole seconds, so text order = time order).
-- Applied at every start: every statement is idempotent (IF NOT EXISTS).
CREATE TABLE IF NOT EXISTS trans_global (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  gid varchar(128) NOT NULL,
  trans_type varchar(45) NOT NULL,
  status varchar(12) NOT NULL,
  query_prepared varchar(1024) NOT NULL,
  protocol varchar(45) NOT NULL,
  create_time datetime DEFAULT NULL,
  update_time datetime DEFAULT NULL,
  finish_time datetime DEFAULT NULL,
  rollback_time datetime DEFAULT NULL,
  options varchar(1024) DEFAULT '',
  custom_data varchar(1024) DEFAULT '',
  next_cron_interval int DEFAULT NULL,
  next_cron_time datetime DEFAULT NULL,
  owner varchar(128) NOT NULL DEFAULT '',
  ext_data TEXT,
  result varchar(1024) DEFAULT '',
  rollback_reason varchar(1024) DEFAULT '',
  CONSTRAINT gid UNIQUE (gid)
);
CREATE INDEX IF NOT EXISTS owner ON trans_global (owner);
CREATE INDEX IF NOT EXISTS status_next_cron_time ON trans_global (status, next_cron_time);

CREATE TABLE IF NOT EXISTS trans_branch_op (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  gid varchar(128) NOT NULL,
  url varchar(1024) NOT NULL,
  data TEXT,
  bin_data BLOB,
  branch_id varchar(128) NOT NULL,
  op varchar(45) NOT NULL,
  status varchar(45) NOT NULL,
  finish_time datetime DEFAULT NULL,
  rollback_time datetime DEFAULT NULL,
  create_time datetime DEFAULT NULL,
  update_time datetime DEFAULT NULL,
  CONSTRAINT gid_uniq UNIQUE (gid, branch_id, op)
);

CREATE TABLE IF NOT EXISTS kv (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  cat varchar(45) NOT NULL,
  k varchar(128) NOT NULL,
  v TEXT,
  version bigint DEFAULT 1,
  create_time datetime DEFAULT NULL,
  update_time datetime DEFAULT NULL,
  CONSTRAINT uniq_k UNIQUE (cat, k)
);

-- Not in dtm: the retry alerts (AlertRetryLimit / AlertWebHook) and their
-- outbox; see sql/mysql/coordinator.sql for the columns.
CREATE TABLE IF NOT EXISTS trans_alert (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  gid varchar(128) NOT NULL,
  branch_id varchar(128) NOT NULL,
  op varchar(45) NOT NULL,
  trans_status varchar(12) NOT NULL DEFAULT '',
  retry_count int NOT NULL DEFAULT 0,
  error varchar(1024) NOT NULL DEFAULT '',
  status varchar(12) NOT NULL,
  attempts int NOT NULL DEFAULT 0,
  next_attempt_time datetime DEFAULT NULL,
  owner varchar(128) NOT NULL DEFAULT '',
  last_error varchar(1024) NOT NULL DEFAULT '',
  create_time datetime DEFAULT NULL,
  update_time datetime DEFAULT NULL,
  CONSTRAINT gid_branch_op UNIQUE (gid, branch_id, op)
);
CREATE INDEX IF NOT EXISTS status_next_attempt_time ON trans_alert (status, next_attempt_time);

-- Not in dtm: every branch call, for the console's timeline (see
-- sql/mysql/coordinator.sql for the columns).
CREATE TABLE IF NOT EXISTS trans_branch_attempt (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  gid varchar(128) NOT NULL,
  branch_id varchar(128) NOT NULL,
  op varchar(45) NOT NULL,
  result varchar(12) NOT NULL,
  error varchar(1024) NOT NULL DEFAULT '',
  latency_ms bigint NOT NULL DEFAULT 0,
  start_ms bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS attempt_gid_id ON trans_branch_attempt (gid, id);
CREATE INDEX IF NOT EXISTS attempt_start_ms ON trans_branch_attempt (start_ms);
-- Not in dtm's DDL, an extra index only: the console pages one status
-- newest first (keyset by id) without sorting all rows of that status.
CREATE INDEX IF NOT EXISTS status_id ON trans_global (status, id);
