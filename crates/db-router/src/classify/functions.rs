//! Built-in function lists. Every list is sorted (a unit test checks) and searched by
//! binary search on lowercase names.

/// Built-ins that write, take locks, need a transaction id, change session or server
/// state, or only work on a primary. Exact names; prefix families are in
/// [`WRITING_PREFIXES`].
const WRITING: &[&str] = &[
    "currval", // session state of the connection that called nextval
    "dblink",
    "dblink_exec",
    "lastval",
    "lo_creat",
    "lo_create",
    "lo_export",
    "lo_from_bytea",
    "lo_import",
    "lo_open",
    "lo_put",
    "lo_truncate",
    "lo_truncate64",
    "lo_unlink",
    "lowrite",
    "nextval",
    "pg_cancel_backend",
    "pg_create_restore_point",
    "pg_drop_replication_slot",
    "pg_file_rename",
    "pg_file_sync",
    "pg_file_unlink",
    "pg_file_write",
    "pg_import_system_collations",
    "pg_log_backend_memory_contexts",
    "pg_notify",
    "pg_promote",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_switch_wal",
    "pg_terminate_backend",
    "set_config",
    "setval",
];

/// Families of writing built-ins, matched by prefix (all but `txid_current` start with `pg_`,
/// which [`is_writing_builtin`] relies on): advisory locks are handled apart
/// because their names put `advisory` in the middle (`pg_try_advisory_xact_lock_shared`).
const WRITING_PREFIXES: &[&str] = &[
    "pg_backup_",             // pg_backup_start / pg_backup_stop
    "pg_copy_",               // pg_copy_logical_replication_slot ...
    "pg_create_",             // replication slots, restore points
    "pg_current_", // pg_current_wal_lsn, pg_current_xact_id: fail on a standby or assign an xid
    "pg_logical_", // pg_logical_emit_message, slot_get_changes (consumes)
    "pg_replication_origin_", // origin management writes catalog state
    "pg_replication_slot_", // pg_replication_slot_advance
    "pg_start_backup",
    "pg_stat_reset",
    "pg_stop_backup",
    "txid_current", // txid_current, txid_current_if_assigned, txid_current_snapshot
];

/// Functions that PostgreSQL (15, with its contrib extensions) marks `VOLATILE` and that are
/// not on the [safe list](SAFE_VOLATILE), each with whether it can be called with a single
/// argument (and so through attribute notation, `(1::bigint).pg_advisory_lock`). Exact
/// names, sorted. This is the fallback before the router has read the server's own
/// `pg_proc`; generated with:
///
/// ```sql
/// SELECT p.proname, bool_or(p.pronargs - p.pronargdefaults <= 1 AND (p.pronargs >= 1 OR p.provariadic <> 0))
/// FROM pg_proc p LEFT JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
/// WHERE p.provolatile = 'v' AND (p.pronamespace = 'pg_catalog'::regnamespace OR d.objid IS NOT NULL)
/// GROUP BY 1 ORDER BY 1;
/// ```
///
/// (every contrib extension created; trigger, handler and access-method support functions left
/// out, safe-listed names removed).
pub(super) const VOLATILE_BUILTINS: &[(&str, bool)] = &[
    ("amvalidate", true),
    ("autoprewarm_dump_now", false),
    ("autoprewarm_start_worker", false),
    ("binary_upgrade_create_empty_extension", false),
    ("binary_upgrade_set_missing_value", false),
    ("binary_upgrade_set_next_array_pg_type_oid", true),
    ("binary_upgrade_set_next_attribute_versions", true),
    ("binary_upgrade_set_next_heap_pg_class_oid", true),
    ("binary_upgrade_set_next_heap_relfilenode", true),
    ("binary_upgrade_set_next_index_pg_class_oid", true),
    ("binary_upgrade_set_next_index_relfilenode", true),
    ("binary_upgrade_set_next_multirange_array_pg_type_oid", true),
    ("binary_upgrade_set_next_multirange_pg_type_oid", true),
    ("binary_upgrade_set_next_pg_authid_oid", true),
    ("binary_upgrade_set_next_pg_enum_oid", true),
    ("binary_upgrade_set_next_pg_tablespace_oid", true),
    ("binary_upgrade_set_next_pg_type_oid", true),
    ("binary_upgrade_set_next_toast_pg_class_oid", true),
    ("binary_upgrade_set_next_toast_relfilenode", true),
    ("binary_upgrade_set_record_init_privs", true),
    ("brin_desummarize_range", false),
    ("brin_metapage_info", true),
    ("brin_page_items", false),
    ("brin_page_type", true),
    ("brin_revmap_data", true),
    ("brin_summarize_new_values", true),
    ("brin_summarize_range", false),
    ("bt_index_check", true),
    ("bt_index_parent_check", true),
    ("bt_metap", true),
    ("bt_page_items", true),
    ("bt_page_stats", false),
    ("current_query", false),
    ("currtid2", false),
    ("currval", true),
    ("cursor_to_xml", false),
    ("cursor_to_xmlschema", false),
    ("dblink", true),
    ("dblink_build_sql_delete", false),
    ("dblink_build_sql_insert", false),
    ("dblink_build_sql_update", false),
    ("dblink_cancel_query", true),
    ("dblink_close", true),
    ("dblink_connect", true),
    ("dblink_connect_u", true),
    ("dblink_current_query", false),
    ("dblink_disconnect", true),
    ("dblink_error_message", true),
    ("dblink_exec", true),
    ("dblink_fdw_validator", false),
    ("dblink_fetch", false),
    ("dblink_get_connections", false),
    ("dblink_get_notify", true),
    ("dblink_get_pkey", true),
    ("dblink_get_result", true),
    ("dblink_is_busy", true),
    ("dblink_open", false),
    ("dblink_send_query", false),
    ("dsnowball_init", true),
    ("dsnowball_lexize", false),
    ("file_fdw_validator", false),
    ("fsm_page_contents", true),
    ("gen_salt", true),
    ("get_raw_page", false),
    ("gin_clean_pending_list", true),
    ("gin_leafpage_items", true),
    ("gin_metapage_info", true),
    ("gin_page_opaque_info", true),
    ("gist_page_items", false),
    ("gist_page_items_bytea", true),
    ("gist_page_opaque_info", true),
    ("hash_bitmap_info", false),
    ("hash_metapage_info", true),
    ("hash_page_items", true),
    ("hash_page_stats", true),
    ("hash_page_type", true),
    ("heap_force_freeze", false),
    ("heap_force_kill", false),
    ("heap_page_item_attrs", false),
    ("heap_page_items", true),
    ("heap_tuple_infomask_flags", false),
    ("lastval", false),
    ("lo_close", true),
    ("lo_creat", true),
    ("lo_create", true),
    ("lo_export", false),
    ("lo_from_bytea", false),
    ("lo_get", true),
    ("lo_import", true),
    ("lo_lseek", false),
    ("lo_lseek64", false),
    ("lo_open", false),
    ("lo_put", false),
    ("lo_tell", true),
    ("lo_tell64", true),
    ("lo_truncate", false),
    ("lo_truncate64", false),
    ("lo_unlink", true),
    ("loread", false),
    ("lowrite", false),
    ("nextval", true),
    ("normal_rand", false),
    ("page_checksum", false),
    ("page_header", true),
    ("pg_advisory_lock", true),
    ("pg_advisory_lock_shared", true),
    ("pg_advisory_unlock", true),
    ("pg_advisory_unlock_all", false),
    ("pg_advisory_unlock_shared", true),
    ("pg_advisory_xact_lock", true),
    ("pg_advisory_xact_lock_shared", true),
    ("pg_backup_start", true),
    ("pg_backup_stop", true),
    ("pg_buffercache_pages", false),
    ("pg_cancel_backend", true),
    ("pg_check_frozen", true),
    ("pg_check_visible", true),
    ("pg_collation_actual_version", true),
    ("pg_control_checkpoint", false),
    ("pg_control_init", false),
    ("pg_control_recovery", false),
    ("pg_control_system", false),
    ("pg_copy_logical_replication_slot", false),
    ("pg_copy_physical_replication_slot", false),
    ("pg_create_logical_replication_slot", false),
    ("pg_create_physical_replication_slot", true),
    ("pg_create_restore_point", true),
    ("pg_current_logfile", true),
    ("pg_current_wal_flush_lsn", false),
    ("pg_current_wal_insert_lsn", false),
    ("pg_current_wal_lsn", false),
    ("pg_database_collation_actual_version", true),
    ("pg_drop_replication_slot", true),
    ("pg_export_snapshot", false),
    ("pg_extension_config_dump", false),
    ("pg_file_rename", false),
    ("pg_file_sync", true),
    ("pg_file_unlink", true),
    ("pg_file_write", false),
    ("pg_freespace", true),
    ("pg_get_backend_memory_contexts", false),
    ("pg_get_multixact_members", true),
    ("pg_get_shmem_allocations", false),
    ("pg_get_wal_record_info", true),
    ("pg_get_wal_records_info", false),
    ("pg_get_wal_records_info_till_end_of_wal", true),
    ("pg_get_wal_resource_managers", false),
    ("pg_get_wal_stats", false),
    ("pg_get_wal_stats_till_end_of_wal", true),
    ("pg_hba_file_rules", false),
    ("pg_ident_file_mappings", false),
    ("pg_import_system_collations", true),
    ("pg_isolation_test_session_is_blocked", false),
    ("pg_jit_available", false),
    ("pg_last_committed_xact", false),
    ("pg_log_backend_memory_contexts", true),
    ("pg_logdir_ls", false),
    ("pg_logical_emit_message", false),
    ("pg_logical_slot_get_binary_changes", false),
    ("pg_logical_slot_get_changes", false),
    ("pg_logical_slot_peek_binary_changes", false),
    ("pg_logical_slot_peek_changes", false),
    ("pg_ls_archive_statusdir", false),
    ("pg_ls_dir", true),
    ("pg_ls_logdir", false),
    ("pg_ls_logicalmapdir", false),
    ("pg_ls_logicalsnapdir", false),
    ("pg_ls_replslotdir", true),
    ("pg_ls_tmpdir", true),
    ("pg_ls_waldir", false),
    ("pg_nextoid", false),
    ("pg_notification_queue_usage", false),
    ("pg_notify", false),
    ("pg_old_snapshot_time_mapping", false),
    ("pg_partition_ancestors", true),
    ("pg_partition_tree", true),
    ("pg_prepared_xact", false),
    ("pg_prewarm", true),
    ("pg_promote", true),
    ("pg_read_binary_file", true),
    ("pg_read_file", true),
    ("pg_read_file_old", false),
    ("pg_reload_conf", false),
    ("pg_relpages", true),
    ("pg_replication_origin_advance", false),
    ("pg_replication_origin_create", true),
    ("pg_replication_origin_drop", true),
    ("pg_replication_origin_progress", false),
    ("pg_replication_origin_session_is_setup", false),
    ("pg_replication_origin_session_progress", true),
    ("pg_replication_origin_session_reset", false),
    ("pg_replication_origin_session_setup", true),
    ("pg_replication_origin_xact_reset", false),
    ("pg_replication_origin_xact_setup", false),
    ("pg_replication_slot_advance", false),
    ("pg_rotate_logfile", false),
    ("pg_rotate_logfile_old", false),
    ("pg_sequence_last_value", true),
    ("pg_show_all_file_settings", false),
    ("pg_show_replication_origin_status", false),
    ("pg_stat_clear_snapshot", false),
    ("pg_stat_file", true),
    ("pg_stat_force_next_flush", false),
    ("pg_stat_get_recovery_prefetch", false),
    ("pg_stat_get_xact_blocks_fetched", true),
    ("pg_stat_get_xact_blocks_hit", true),
    ("pg_stat_get_xact_function_calls", true),
    ("pg_stat_get_xact_function_self_time", true),
    ("pg_stat_get_xact_function_total_time", true),
    ("pg_stat_get_xact_numscans", true),
    ("pg_stat_get_xact_tuples_deleted", true),
    ("pg_stat_get_xact_tuples_fetched", true),
    ("pg_stat_get_xact_tuples_hot_updated", true),
    ("pg_stat_get_xact_tuples_inserted", true),
    ("pg_stat_get_xact_tuples_returned", true),
    ("pg_stat_get_xact_tuples_updated", true),
    ("pg_stat_have_stats", false),
    ("pg_stat_reset", false),
    ("pg_stat_reset_replication_slot", true),
    ("pg_stat_reset_shared", true),
    ("pg_stat_reset_single_function_counters", true),
    ("pg_stat_reset_single_table_counters", true),
    ("pg_stat_reset_slru", true),
    ("pg_stat_reset_subscription_stats", true),
    ("pg_stop_making_pinned_objects", false),
    ("pg_switch_wal", false),
    ("pg_terminate_backend", true),
    ("pg_truncate_visibility_map", true),
    ("pg_try_advisory_lock", true),
    ("pg_try_advisory_lock_shared", true),
    ("pg_try_advisory_xact_lock", true),
    ("pg_try_advisory_xact_lock_shared", true),
    ("pg_visibility", true),
    ("pg_visibility_map", true),
    ("pg_visibility_map_summary", true),
    ("pg_wal_replay_pause", false),
    ("pg_wal_replay_resume", false),
    ("pg_xact_commit_timestamp", true),
    ("pg_xact_commit_timestamp_origin", true),
    ("pg_xact_status", true),
    ("pgp_pub_encrypt", false),
    ("pgp_pub_encrypt_bytea", false),
    ("pgp_sym_encrypt", false),
    ("pgp_sym_encrypt_bytea", false),
    ("pgrowlocks", true),
    ("pgstatginindex", true),
    ("pgstathashindex", true),
    ("pgstatindex", true),
    ("pgstattuple", true),
    ("pgstattuple_approx", true),
    ("plpgsql_inline_handler", true),
    ("plpgsql_validator", true),
    ("postgres_fdw_disconnect", true),
    ("postgres_fdw_disconnect_all", false),
    ("postgres_fdw_get_connections", false),
    ("postgres_fdw_validator", false),
    ("query_to_xml", false),
    ("query_to_xml_and_xmlschema", false),
    ("query_to_xmlschema", false),
    ("set_config", false),
    ("set_limit", true),
    ("setseed", true),
    ("setval", false),
    ("ssl_cipher", false),
    ("ssl_client_cert_present", false),
    ("ssl_client_dn", false),
    ("ssl_client_dn_field", true),
    ("ssl_client_serial", false),
    ("ssl_extension_info", false),
    ("ssl_is_used", false),
    ("ssl_issuer_dn", false),
    ("ssl_issuer_field", true),
    ("ssl_version", false),
    ("ts_rewrite", false),
    ("ts_stat", true),
    ("tuple_data_split", false),
    ("txid_status", true),
    ("verify_heapam", true),
    ("xslt_process", false),
];

/// Volatile functions that may still run on a replica: they write nothing, take no lock,
/// change no setting and need no transaction id; they are volatile only because their result
/// changes between calls (randomness, clocks, sizes, recovery progress). Calls to any other
/// `VOLATILE` function go to the primary. `(origin, name)`, where the origin is `pg_catalog`
/// or the extension that installs the function; sorted.
pub const SAFE_VOLATILE: &[(&str, &str)] = &[
    ("pg_catalog", "clock_timestamp"),
    ("pg_catalog", "gen_random_uuid"),
    ("pg_catalog", "pg_blocking_pids"),
    ("pg_catalog", "pg_database_size"),
    ("pg_catalog", "pg_get_wal_replay_pause_state"),
    ("pg_catalog", "pg_indexes_size"),
    ("pg_catalog", "pg_is_in_recovery"),
    ("pg_catalog", "pg_is_wal_replay_paused"),
    ("pg_catalog", "pg_last_wal_receive_lsn"),
    ("pg_catalog", "pg_last_wal_replay_lsn"),
    ("pg_catalog", "pg_last_xact_replay_timestamp"),
    ("pg_catalog", "pg_lock_status"),
    ("pg_catalog", "pg_relation_size"),
    ("pg_catalog", "pg_safe_snapshot_blocking_pids"),
    ("pg_catalog", "pg_sleep"),
    ("pg_catalog", "pg_sleep_for"),
    ("pg_catalog", "pg_sleep_until"),
    ("pg_catalog", "pg_table_size"),
    ("pg_catalog", "pg_tablespace_size"),
    ("pg_catalog", "pg_total_relation_size"),
    ("pg_catalog", "random"),
    ("pg_catalog", "timeofday"),
    ("pgcrypto", "gen_random_bytes"),
    ("pgcrypto", "gen_random_uuid"),
    ("uuid-ossp", "uuid_generate_v1"),
    ("uuid-ossp", "uuid_generate_v1mc"),
    ("uuid-ossp", "uuid_generate_v4"),
];

/// `true` when `(origin, name)` is on the [safe list](SAFE_VOLATILE).
pub(super) fn is_safe_volatile(origin: &str, name: &str) -> bool {
    SAFE_VOLATILE
        .binary_search_by(|&(o, n)| (o, n).cmp(&(origin, name)))
        .is_ok()
}

/// `true` for a built-in that must run on the primary (name already lowercase).
pub(super) fn is_writing_builtin(name: &[u8]) -> bool {
    // Every writing built-in starts with one of these letters; most calls stop here.
    if !matches!(
        name.first(),
        Some(b'c' | b'd' | b'l' | b'n' | b'p' | b's' | b't')
    ) {
        return false;
    }
    // Every family starts with `pg_` (or is `txid_current*`): the scans only run for those.
    if name.starts_with(b"pg_") {
        if contains(name, b"advisory") {
            return true; // pg_advisory_lock, pg_try_advisory_xact_lock, pg_advisory_unlock_all ...
        }
        if name.starts_with(b"pg_stat") && contains(name, b"reset") {
            return true; // pg_stat_statements_reset and friends
        }
        if WRITING_PREFIXES
            .iter()
            .any(|p| name.starts_with(p.as_bytes()))
        {
            return true;
        }
    } else if name.starts_with(b"txid_current") {
        return true;
    }
    sorted_contains(WRITING, name)
}

/// Words that may stand before `(` without being a function call: keywords with a
/// parenthesised operand and type names (`numeric(10, 2)`).
const NOT_CALLS: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "between",
    "bit",
    "by",
    "case",
    "char",
    "character",
    "collate",
    "conflict",
    "cube",
    "decimal",
    "distinct",
    "else",
    "except",
    "exists",
    "explain",
    "fetch",
    "filter",
    "float",
    "from",
    "group",
    "grouping",
    "having",
    "ilike",
    "in",
    "intersect",
    "interval",
    "is",
    "join",
    "lateral",
    "like",
    "limit",
    "materialized",
    "not",
    "numeric",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "over",
    "partition",
    "recursive",
    "repeatable",
    "returning",
    "rollup",
    "row",
    "rows",
    "select",
    "set",
    "sets",
    "similar",
    "some",
    "table",
    "tablesample",
    "then",
    "time",
    "timestamp",
    "union",
    "using",
    "values",
    "varbit",
    "varchar",
    "when",
    "where",
    "window",
    "with",
    "within",
];

/// `true` when `word (` is syntax rather than a call. Quoted words are always names.
pub(super) fn is_not_a_call(name: &[u8], quoted: bool) -> bool {
    !quoted && sorted_contains(NOT_CALLS, name)
}

/// Built-ins that only read, for [`FunctionPolicy::KnownReadOnly`](super::FunctionPolicy).
/// Volatile ones that write nothing (`random`, `clock_timestamp`) are here: a replica
/// runs them as well as the primary.
const READ_ONLY: &[&str] = &[
    "abs",
    "age",
    "array_agg",
    "array_append",
    "array_cat",
    "array_dims",
    "array_length",
    "array_lower",
    "array_position",
    "array_positions",
    "array_prepend",
    "array_remove",
    "array_replace",
    "array_to_json",
    "array_to_string",
    "array_upper",
    "ascii",
    "avg",
    "bit_and",
    "bit_length",
    "bit_or",
    "bool_and",
    "bool_or",
    "btrim",
    "cardinality",
    "cast",
    "cbrt",
    "ceil",
    "ceiling",
    "char_length",
    "character_length",
    "chr",
    "clock_timestamp",
    "coalesce",
    "col_description",
    "concat",
    "concat_ws",
    "corr",
    "count",
    "cume_dist",
    "current_database",
    "current_schema",
    "current_schemas",
    "current_setting",
    "date_bin",
    "date_part",
    "date_trunc",
    "decode",
    "degrees",
    "dense_rank",
    "div",
    "encode",
    "every",
    "exp",
    "extract",
    "first_value",
    "floor",
    "format",
    "format_type",
    "gen_random_uuid",
    "generate_series",
    "generate_subscripts",
    "greatest",
    "has_column_privilege",
    "has_database_privilege",
    "has_schema_privilege",
    "has_table_privilege",
    "inet_client_addr",
    "inet_server_addr",
    "inet_server_port",
    "initcap",
    "isfinite",
    "json_agg",
    "json_array_elements",
    "json_array_elements_text",
    "json_array_length",
    "json_build_array",
    "json_build_object",
    "json_each",
    "json_each_text",
    "json_extract_path",
    "json_extract_path_text",
    "json_object",
    "json_object_agg",
    "json_object_keys",
    "json_typeof",
    "jsonb_agg",
    "jsonb_array_elements",
    "jsonb_array_elements_text",
    "jsonb_array_length",
    "jsonb_build_array",
    "jsonb_build_object",
    "jsonb_each",
    "jsonb_each_text",
    "jsonb_extract_path",
    "jsonb_extract_path_text",
    "jsonb_insert",
    "jsonb_object",
    "jsonb_object_agg",
    "jsonb_object_keys",
    "jsonb_path_exists",
    "jsonb_path_match",
    "jsonb_path_query",
    "jsonb_path_query_array",
    "jsonb_path_query_first",
    "jsonb_pretty",
    "jsonb_set",
    "jsonb_strip_nulls",
    "jsonb_typeof",
    "justify_days",
    "justify_hours",
    "justify_interval",
    "lag",
    "last_value",
    "lead",
    "least",
    "left",
    "length",
    "ln",
    "log",
    "log10",
    "lower",
    "lpad",
    "ltrim",
    "make_date",
    "make_interval",
    "make_time",
    "make_timestamp",
    "make_timestamptz",
    "max",
    "md5",
    "min",
    "mod",
    "mode",
    "now",
    "nth_value",
    "ntile",
    "nullif",
    "num_nulls",
    "obj_description",
    "octet_length",
    "overlay",
    "percent_rank",
    "percentile_cont",
    "percentile_disc",
    "pg_backend_pid",
    "pg_column_size",
    "pg_database_size",
    "pg_get_constraintdef",
    "pg_get_functiondef",
    "pg_get_indexdef",
    "pg_get_viewdef",
    "pg_indexes_size",
    "pg_is_in_recovery",
    "pg_last_wal_receive_lsn",
    "pg_last_wal_replay_lsn",
    "pg_last_xact_replay_timestamp",
    "pg_postmaster_start_time",
    "pg_relation_size",
    "pg_size_pretty",
    "pg_sleep",
    "pg_table_size",
    "pg_total_relation_size",
    "pg_typeof",
    "phraseto_tsquery",
    "pi",
    "plainto_tsquery",
    "position",
    "pow",
    "power",
    "quote_ident",
    "quote_literal",
    "quote_nullable",
    "radians",
    "random",
    "rank",
    "regexp_count",
    "regexp_instr",
    "regexp_like",
    "regexp_match",
    "regexp_matches",
    "regexp_replace",
    "regexp_split_to_array",
    "regexp_split_to_table",
    "repeat",
    "replace",
    "reverse",
    "right",
    "round",
    "row_number",
    "row_to_json",
    "rpad",
    "rtrim",
    "setweight",
    "sha224",
    "sha256",
    "sha384",
    "sha512",
    "sign",
    "split_part",
    "sqrt",
    "starts_with",
    "statement_timestamp",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "string_agg",
    "string_to_array",
    "strpos",
    "substr",
    "substring",
    "sum",
    "timeofday",
    "to_char",
    "to_date",
    "to_hex",
    "to_json",
    "to_jsonb",
    "to_number",
    "to_regclass",
    "to_regtype",
    "to_timestamp",
    "to_tsquery",
    "to_tsvector",
    "transaction_timestamp",
    "translate",
    "trim",
    "trunc",
    "ts_headline",
    "ts_rank",
    "ts_rank_cd",
    "unnest",
    "upper",
    "var_pop",
    "var_samp",
    "variance",
    "version",
    "websearch_to_tsquery",
    "width_bucket",
];

/// `true` for a built-in known to only read (name already lowercase).
pub(super) fn is_read_only_builtin(name: &[u8]) -> bool {
    sorted_contains(READ_ONLY, name)
}

fn sorted_contains(list: &[&str], name: &[u8]) -> bool {
    list.binary_search_by(|probe| probe.as_bytes().cmp(name))
        .is_ok()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_sorted_lowercase_and_unique() {
        for list in [WRITING, NOT_CALLS, READ_ONLY] {
            for pair in list.windows(2) {
                assert!(
                    pair[0] < pair[1],
                    "{:?} must come before {:?}",
                    pair[0],
                    pair[1]
                );
            }
            for name in list {
                assert_eq!(*name, name.to_ascii_lowercase());
            }
        }
    }

    #[test]
    fn volatile_and_safe_lists_are_sorted_and_disjoint() {
        for pair in VOLATILE_BUILTINS.windows(2) {
            assert!(
                pair[0].0 < pair[1].0,
                "{:?} must come before {:?}",
                pair[0],
                pair[1]
            );
        }
        for pair in SAFE_VOLATILE.windows(2) {
            assert!(
                pair[0] < pair[1],
                "{:?} must come before {:?}",
                pair[0],
                pair[1]
            );
        }
        for (_, name) in SAFE_VOLATILE {
            assert!(VOLATILE_BUILTINS.iter().all(|(n, _)| n != name), "{name}");
            assert!(!is_writing_builtin(name.as_bytes()), "{name}");
        }
        assert!(is_safe_volatile("pg_catalog", "random"));
        assert!(!is_safe_volatile("public", "random"));
    }

    #[test]
    fn no_function_is_both_read_only_and_writing() {
        for name in READ_ONLY {
            assert!(!is_writing_builtin(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn writing_prefixes_start_with_pg_or_are_txid_current() {
        for p in WRITING_PREFIXES {
            assert!(p.starts_with("pg_") || p.starts_with("txid_current"), "{p}");
        }
    }

    #[test]
    fn writing_families() {
        for name in [
            "pg_advisory_lock",
            "pg_advisory_xact_lock_shared",
            "pg_try_advisory_lock",
            "pg_advisory_unlock_all",
            "pg_current_wal_lsn",
            "pg_current_xact_id",
            "pg_current_xact_id_if_assigned",
            "txid_current",
            "pg_stat_reset_shared",
            "pg_stat_statements_reset",
            "pg_create_logical_replication_slot",
            "pg_logical_emit_message",
            "nextval",
            "set_config",
        ] {
            assert!(is_writing_builtin(name.as_bytes()), "{name}");
        }
        for name in [
            "lower",
            "count",
            "pg_is_in_recovery",
            "pg_stat_get_live_tuples",
            "current_setting",
        ] {
            assert!(!is_writing_builtin(name.as_bytes()), "{name}");
        }
    }
}
