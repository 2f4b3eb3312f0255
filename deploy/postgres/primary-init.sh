#!/usr/bin/env bash
# Runs once, when the primary's data directory is created (/docker-entrypoint-initdb.d): a role
# the replicas stream WAL as, one physical replication slot per replica (REPLICA_SLOTS: the
# primary keeps the WAL a replica still needs while it is down), and a pg_hba line letting the
# role in from the compose network.
set -euo pipefail

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  --set=password="$REPLICATION_PASSWORD" <<'SQL'
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD :'password';
SQL

for slot in ${REPLICA_SLOTS:-}; do
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    --set=slot="$slot" <<'SQL'
SELECT pg_create_physical_replication_slot(:'slot');
SQL
done

# "all" in pg_hba's database column does not cover replication connections: they need their own.
echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"
