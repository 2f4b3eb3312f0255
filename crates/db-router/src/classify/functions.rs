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

/// Families of writing built-ins, matched by prefix: advisory locks are handled apart
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

/// `true` for a built-in that must run on the primary (name already lowercase).
pub(super) fn is_writing_builtin(name: &[u8]) -> bool {
    // Every writing built-in starts with one of these letters; most calls stop here.
    if !matches!(
        name.first(),
        Some(b'c' | b'd' | b'l' | b'n' | b'p' | b's' | b't')
    ) {
        return false;
    }
    if contains(name, b"advisory") {
        return true; // pg_advisory_lock, pg_try_advisory_xact_lock, pg_advisory_unlock_all ...
    }
    if name.starts_with(b"pg_stat") && contains(name, b"reset") {
        return true; // pg_stat_statements_reset and friends
    }
    sorted_contains(WRITING, name)
        || WRITING_PREFIXES
            .iter()
            .any(|p| name.starts_with(p.as_bytes()))
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
    fn no_function_is_both_read_only_and_writing() {
        for name in READ_ONLY {
            assert!(!is_writing_builtin(name.as_bytes()), "{name}");
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
