#!/bin/sh
# Applies the repository's schema files (sql/mysql/, mounted read-only at
# /sql/mysql) to the databases 00-databases.sql created, so there is one
# source of truth for every table: the same files the services embed and
# apply at start-up (every statement is idempotent).
#
# The MariaDB image's entrypoint sources this file when it is not executable
# and runs it when it is; it works both ways (no `exit`, no `set -u`), on the
# entrypoint's temporary socket-only server.
#
# To prepare a server you did not start from this image (a managed MySQL),
# run it from the repository root over TCP with the mysql client's own
# variables:
#
#   mariadb -h db.example -uroot -p < deploy/mysql/init/00-databases.sql
#   MYSQL_HOST=db.example MYSQL_ROOT_PASSWORD=... QUICKORDER_SQL_DIR=sql/mysql \
#       sh deploy/mysql/init/10-schemas.sh
set -e

QUICKORDER_SQL_DIR="${QUICKORDER_SQL_DIR:-/sql/mysql}"

quickorder_apply() {
    echo "quickorder: applying $QUICKORDER_SQL_DIR/$2 to database $1"
    if [ -n "${MYSQL_HOST:-}" ]; then
        # MYSQL_HOST / MYSQL_TCP_PORT are read by the client itself.
        MYSQL_PWD="$MYSQL_ROOT_PASSWORD" mariadb --protocol=tcp -uroot "$1" < "$QUICKORDER_SQL_DIR/$2"
    else
        # SOCKET is set by the entrypoint when this file is sourced.
        MYSQL_PWD="$MYSQL_ROOT_PASSWORD" mariadb --protocol=socket \
            --socket="${SOCKET:-/var/run/mysqld/mysqld.sock}" -uroot "$1" < "$QUICKORDER_SQL_DIR/$2"
    fi
}

quickorder_apply dtm coordinator.sql
quickorder_apply dtm_barrier barrier.sql
quickorder_apply dtm-gozero-order order.sql
quickorder_apply dtm-gozero-stock stock.sql
