-- The stock service's table and seed (the demo's `dtm-gozero-stock.sql`), MySQL / MariaDB.
--
-- Idempotent: safe to apply at every service start. Run it in the stock
-- service's database (the demo calls it `dtm-gozero-stock`).
CREATE TABLE IF NOT EXISTS `stock` (
  `id` bigint NOT NULL AUTO_INCREMENT,
  -- One stock row per goods: the deduction
  -- `update stock set num = num - ? where goods_id = ? and num >= ?`
  -- must find exactly one row to be meaningful.
  `goods_id` bigint NOT NULL DEFAULT '0' COMMENT 'goods id',
  `num` int NOT NULL DEFAULT '0' COMMENT 'units in stock',
  PRIMARY KEY (`id`),
  UNIQUE KEY `idx_goodsId` (`goods_id`)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_general_ci;

-- Goods 1 starts with 100 units. INSERT IGNORE (on the unique goods_id) makes
-- the seed a no-op once the row exists: a restart must not refill the stock.
INSERT IGNORE INTO `stock` (`goods_id`, `num`) VALUES (1, 100);
