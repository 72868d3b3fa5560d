-- The order service's table (the demo's `dtm-gozero-order.sql`), MySQL / MariaDB.
--
-- Idempotent: safe to apply at every service start. Run it in the order
-- service's database (the demo calls it `dtm-gozero-order`).
--
-- One change from the demo: the `gid` column. The Go demo's compensation
-- (`createRollback`) looked up "the latest order of this user and goods" and
-- cancelled it; with two quick orders of the same user in flight, the
-- rollback of one saga can cancel the other saga's order. Storing the saga's
-- gid on the order lets the compensation cancel exactly the order its own
-- action created: `update `order` set row_state = -1 where gid = ?`.
CREATE TABLE IF NOT EXISTS `order` (
  `id` bigint NOT NULL AUTO_INCREMENT,
  `user_id` bigint NOT NULL DEFAULT '0',
  `goods_id` bigint NOT NULL DEFAULT '0' COMMENT 'goods id',
  `num` int NOT NULL DEFAULT '0' COMMENT 'quantity ordered',
  -- The demo declares tinyint(1); sqlx reads tinyint(1) as a boolean, and this
  -- column holds -1, so it is a plain tinyint here.
  `row_state` tinyint NOT NULL DEFAULT '0' COMMENT '-1: rolled back (saga compensated), 0: live, awaiting payment',
  -- Binary collation: gids are exact byte strings, so the compensation of saga
  -- `abc` never cancels the order of saga `AbC` (the table's collation is
  -- case-insensitive). `barrier::schema::ensure_order_table` migrates older tables.
  `gid` varchar(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL DEFAULT '' COMMENT 'dtm gid of the saga that created this order',
  PRIMARY KEY (`id`),
  -- Not unique: orders created outside a saga keep the default ''.
  KEY `idx_gid` (`gid`)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_general_ci;
