-- First-start initialisation of the MariaDB container (docker-compose.yml
-- mounts this folder as /docker-entrypoint-initdb.d; deploy/k8s/mysql-init.yaml
-- carries the same files). The entrypoint runs the files in name order, once,
-- on an empty data directory, before the server accepts TCP connections.
--
-- The databases the etc/ files and docker-compose.yml / deploy/k8s point at.
-- The coordinator, order-srv and stock-srv would create theirs (and
-- dtm_barrier) if their user may, but a production user usually may not,
-- so the server's owner creates them here.
CREATE DATABASE IF NOT EXISTS `dtm` DEFAULT CHARACTER SET utf8mb4;              -- the coordinator (STORE_DB)
CREATE DATABASE IF NOT EXISTS `dtm_barrier` DEFAULT CHARACTER SET utf8mb4;      -- dtm's fixed barrier database
CREATE DATABASE IF NOT EXISTS `dtm-gozero-order` DEFAULT CHARACTER SET utf8mb4; -- order-srv (ORDER_DSN)
CREATE DATABASE IF NOT EXISTS `dtm-gozero-stock` DEFAULT CHARACTER SET utf8mb4; -- stock-srv (STOCK_DSN)
