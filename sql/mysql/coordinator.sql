-- Coordinator storage, MySQL / MariaDB. Same tables, columns and keys as dtm's
-- sqls/dtmsvr.storage.mysql.sql, so dtm's tooling and admin UI can read them.
-- Applied at every start: every statement is idempotent (IF NOT EXISTS).
-- All times are UTC (dtm writes the server's local time; see the crate docs).
--
-- One deliberate difference from dtm's file: the gid columns have a binary
-- collation. With the default (case-insensitive) one, a saga `abc` submitted
-- after a saga `AbC` is "the same gid" and is refused, never run. gids are
-- exact byte strings everywhere else (gRPC metadata, the barrier), so here
-- too. So are topic names (`kv.k`): `topic://Orders` and `topic://orders` are
-- two topics, as on PostgreSQL and SQLite. Tables created by dtm's file or an
-- older version of this one are migrated at start (`MySqlStore::open`,
-- `ALTER TABLE … MODIFY gid …`).
CREATE TABLE IF NOT EXISTS trans_global (
  id bigint(22) NOT NULL AUTO_INCREMENT,
  gid varchar(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL COMMENT 'global transaction id',
  trans_type varchar(45) NOT NULL COMMENT 'saga, xa, tcc, msg, workflow',
  status varchar(12) NOT NULL COMMENT 'prepared, submitted, aborting, succeed, failed',
  query_prepared varchar(1024) NOT NULL COMMENT 'msg check-back URL',
  protocol varchar(45) NOT NULL COMMENT 'http, grpc, json-rpc',
  create_time datetime DEFAULT NULL,
  update_time datetime DEFAULT NULL,
  finish_time datetime DEFAULT NULL,
  rollback_time datetime DEFAULT NULL,
  options varchar(1024) DEFAULT '' COMMENT 'JSON of the transaction options',
  custom_data varchar(1024) DEFAULT '' COMMENT 'saga orders, msg delay',
  next_cron_interval int(11) DEFAULT NULL COMMENT 'current retry interval, seconds',
  next_cron_time datetime DEFAULT NULL COMMENT 'when recovery may pick it up (the lease expiry)',
  owner varchar(128) NOT NULL DEFAULT '' COMMENT 'lease token of the poll that leased it',
  ext_data TEXT,
  result varchar(1024) DEFAULT '',
  rollback_reason varchar(1024) DEFAULT '',
  PRIMARY KEY (id),
  UNIQUE KEY gid (gid),
  KEY owner (owner),
  KEY status_next_cron_time (status, next_cron_time)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS trans_branch_op (
  id bigint(22) NOT NULL AUTO_INCREMENT,
  gid varchar(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  url varchar(1024) NOT NULL,
  data TEXT,
  bin_data BLOB,
  branch_id VARCHAR(128) NOT NULL,
  op varchar(45) NOT NULL,
  status varchar(45) NOT NULL,
  finish_time datetime DEFAULT NULL,
  rollback_time datetime DEFAULT NULL,
  create_time datetime DEFAULT NULL,
  update_time datetime DEFAULT NULL,
  PRIMARY KEY (id),
  UNIQUE KEY gid_uniq (gid, branch_id, op)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS kv (
  id bigint(22) NOT NULL AUTO_INCREMENT,
  cat varchar(45) NOT NULL,
  k varchar(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  v TEXT,
  version bigint(22) DEFAULT 1,
  create_time datetime DEFAULT NULL,
  update_time datetime DEFAULT NULL,
  PRIMARY KEY (id),
  UNIQUE KEY uniq_k (cat, k)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Not in dtm: the retry alerts (AlertRetryLimit / AlertWebHook) and their
-- outbox. One row per branch operation that failed transiently: the failures
-- counted so far, then the alert waiting to be (or already) delivered. A new
-- table rather than columns on dtm's: dtm's tables stay exactly dtm's.
-- status: counting (below the limit), pending (to deliver), sent.
-- Leased like trans_global: owner + next_attempt_time on the database's clock.
CREATE TABLE IF NOT EXISTS trans_alert (
  id bigint(22) NOT NULL AUTO_INCREMENT,
  gid varchar(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  branch_id varchar(128) NOT NULL,
  op varchar(45) NOT NULL,
  trans_status varchar(12) NOT NULL DEFAULT '' COMMENT 'global status at the last counted failure',
  retry_count int(11) NOT NULL DEFAULT 0 COMMENT 'transient failures counted, up to the alert',
  error varchar(1024) NOT NULL DEFAULT '' COMMENT 'the last counted failure',
  status varchar(12) NOT NULL COMMENT 'counting, pending, sent',
  attempts int(11) NOT NULL DEFAULT 0 COMMENT 'deliveries tried',
  next_attempt_time datetime DEFAULT NULL COMMENT 'next delivery (or the lease expiry while owned)',
  owner varchar(128) NOT NULL DEFAULT '' COMMENT 'lease token of the delivery that holds it',
  last_error varchar(1024) NOT NULL DEFAULT '' COMMENT 'why the last delivery failed',
  create_time datetime DEFAULT NULL,
  update_time datetime DEFAULT NULL,
  PRIMARY KEY (id),
  UNIQUE KEY gid_branch_op (gid, branch_id, op),
  KEY status_next_attempt_time (status, next_attempt_time)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Not in dtm: every branch call, for the console's timeline of a
-- transaction (crate::attempts). Written off the saga's path, in batches;
-- bounded per transaction and by age (AttemptsPerTransaction, AttemptsMaxAge).
CREATE TABLE IF NOT EXISTS trans_branch_attempt (
  id bigint(22) NOT NULL AUTO_INCREMENT,
  gid varchar(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  branch_id varchar(128) NOT NULL,
  op varchar(45) NOT NULL,
  result varchar(12) NOT NULL COMMENT 'success, failure, ongoing, error',
  error varchar(1024) NOT NULL DEFAULT '' COMMENT 'what the branch answered, when not a success',
  latency_ms bigint(22) NOT NULL DEFAULT 0,
  start_ms bigint(22) NOT NULL COMMENT 'when the call started, ms since the epoch (UTC)',
  PRIMARY KEY (id),
  KEY gid_id (gid, id),
  KEY start_ms (start_ms)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
