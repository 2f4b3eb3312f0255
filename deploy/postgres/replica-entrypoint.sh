#!/usr/bin/env bash
# A streaming replica from the official postgres image: on first start, copy the primary with
# pg_basebackup (--write-recovery-conf writes standby.signal and primary_conninfo naming the
# slot the primary made for this replica), then start as the image always does.
set -euo pipefail

: "${PRIMARY_HOST:?}" "${REPLICATION_PASSWORD:?}" "${REPLICA_SLOT:?}"
export PGDATA="${PGDATA:-/var/lib/postgresql/data}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  mkdir -p "$PGDATA"
  chown -R postgres:postgres "$PGDATA"
  chmod 700 "$PGDATA"
  export PGPASSWORD="$REPLICATION_PASSWORD"
  # The primary may still be starting (compose waits for its health check, but its init scripts
  # restart it once).
  until gosu postgres pg_basebackup --host="$PRIMARY_HOST" --username=replicator \
      --pgdata="$PGDATA" --wal-method=stream --write-recovery-conf \
      --slot="$REPLICA_SLOT" --checkpoint=fast; do
    echo "replica: pg_basebackup from $PRIMARY_HOST failed; retrying in 2 s" >&2
    rm -rf "${PGDATA:?}"/*
    sleep 2
  done
  unset PGPASSWORD
fi

exec docker-entrypoint.sh "$@"
