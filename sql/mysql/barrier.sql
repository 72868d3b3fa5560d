-- dtm's subtransaction barrier table, MySQL / MariaDB.
--
-- Same columns and keys as dtm's `sqls/dtmcli.barrier.mysql.sql`, so a Go
-- service using dtm's own SDK and a Rust service using the `barrier` crate can
-- share one table. Unlike dtm's file this one names no schema: run it inside
-- the database that should hold the table (dtm's default is `dtm_barrier`,
-- created by whoever owns the server with
-- `CREATE DATABASE IF NOT EXISTS dtm_barrier;`), e.g.
--
--     mariadb dtm_barrier < sql/mysql/barrier.sql
--
-- `barrier::schema::ensure_barrier_table` applies this file for any
-- configured table name: it rewrites the name that follows
-- `CREATE TABLE IF NOT EXISTS` below, so keep that phrase and the name
-- `barrier` together on one line.
--
-- One row = "this (gid, branch_id, op, barrier_id) has happened". The barrier
-- writes its rows in the SAME local transaction as the business SQL, so a row
-- exists exactly when the business effect was committed (or when a
-- compensation deliberately blocked a forward op that never ran).
CREATE TABLE IF NOT EXISTS barrier (
  id bigint(22) PRIMARY KEY AUTO_INCREMENT,
  trans_type varchar(45) DEFAULT '' COMMENT 'saga, tcc, msg, xa, workflow',
  -- Binary collation: gids are exact byte strings. With the table's default
  -- (case-insensitive) collation, the unique key below would make saga `abc`'s
  -- rows a "duplicate" of saga `AbC`'s, and its business would never run.
  -- `barrier::schema::ensure_barrier_table` migrates older tables to this.
  gid varchar(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin DEFAULT '' COMMENT 'global transaction id',
  branch_id varchar(128) DEFAULT '' COMMENT '01, 02, ... (00 for a 2-phase message)',
  op varchar(45) DEFAULT '' COMMENT 'action, compensate, try, confirm, cancel, msg, ...',
  barrier_id varchar(45) DEFAULT '' COMMENT '01, 02, ...: n-th guarded transaction of one request',
  reason varchar(45) DEFAULT '' COMMENT 'the branch type who insert this record',
  create_time datetime DEFAULT now(),
  update_time datetime DEFAULT now(),
  KEY (create_time),
  KEY (update_time),
  -- The whole barrier rests on this key. `insert ignore` of an existing key
  -- affects 0 rows instead of failing, and that 0 is how the barrier learns
  -- "this op already happened" (duplicate delivery), or "the compensation
  -- already ran" (a hanging forward op). A concurrent insert of the same key
  -- waits for the other transaction to commit or roll back, so two deliveries
  -- of one op can never both run the business code.
  UNIQUE KEY (gid, branch_id, op, barrier_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
