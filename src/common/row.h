/*
 * row — one row of profile.in_process, the unit the agent sends, ingest validates and the
 * stores write. Strings are borrowed: whoever fills a row owns the memory (usually a batch
 * arena) and keeps it alive until the store call returns. NULL strings mean "".
 */
#ifndef EMBER_COMMON_ROW_H
#define EMBER_COMMON_ROW_H

#include <stddef.h>
#include <stdint.h>

#define ROW_MAX_TAGS 64

struct profile_row {
	int64_t time;                     /* window start, unix seconds */
	const char *app_service;          /* process comm, or "Total" */
	const char *app_instance;         /* as DeepFlow: the process name */
	const char *profile_location_str; /* folded stack, root first, ';'-separated */
	int64_t profile_value;            /* µs (cpu) or bytes (memory) */
	const char *profile_value_unit;   /* "microseconds" | "bytes" */
	const char *profile_event_type;   /* on-cpu, off-cpu, mem-alloc, mem-inuse */
	const char *profile_language_type; /* "eBPF" for agent data */
	int64_t profile_create_timestamp; /* µs since epoch, aggregated on the agent */
	int64_t profile_in_timestamp;     /* µs since epoch, written by the server */
	int64_t process_id;               /* 0 for Total */
	int64_t process_start_time;       /* ms since epoch, 0 for Total */
	const char *host;
	const char *agent;
	const char *host_ip;
	const char *container_id;
	const char *pod_cluster;
	const char *pod_ns;
	const char *pod_node;
	const char *pod;
	const char *pod_group;
	size_t n_tags;
	const char **tag_names;
	const char **tag_values;
	const char *trace_id;
	const char *span_name;
	const char *profile_id;
	const char *compression_algo; /* "" = plain text */
};

/* The event types whose value is a gauge: the query takes the latest value, not the sum. */
int row_event_is_gauge(const char *event_type);

#endif
