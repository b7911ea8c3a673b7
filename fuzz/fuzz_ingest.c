/*
 * fuzz_ingest — ingest_decode() on arbitrary bytes (the JSON body of POST /v1/profile/ingest).
 * It must never crash or leak; it either accepts a batch whose every row satisfies the
 * protocol's rules after defaults (docs/protocol.md: time > 0, non-empty service and stack,
 * value >= 0, pid in 0..2^32-1, defaults filled in, in-timestamp stamped, tags bounded), or
 * refuses it with -EINVAL, a message, and an empty batch.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/wire.h"
#include "server/ingest.h"

#define FUZZ_MAX_ROWS 1000
#define FUZZ_IN_TS 1764064800123456ll

static void fuzz_check_row(const struct profile_row *r)
{
	if (r->time <= 0 || !r->app_service || !*r->app_service || !r->profile_location_str ||
	    !*r->profile_location_str || r->profile_value < 0 || r->process_id < 0 ||
	    r->process_id > UINT32_MAX || r->process_start_time < 0)
		abort();
	if (!r->profile_event_type || !*r->profile_event_type || !r->profile_language_type ||
	    !*r->profile_language_type || !r->profile_value_unit || !*r->profile_value_unit ||
	    !r->app_instance || !*r->app_instance || !r->host || !r->agent || !r->host_ip)
		abort();
	if (r->profile_in_timestamp != FUZZ_IN_TS || r->n_tags > ROW_MAX_TAGS)
		abort();
	for (size_t t = 0; t < r->n_tags; t++) {
		/* Touch every tag string so ASan sees a dangling pointer. */
		if (!r->tag_names[t] || !*r->tag_names[t] || !r->tag_values[t] ||
		    strlen(r->tag_values[t]) > SIZE_MAX / 2)
			abort();
	}
	if (strlen(r->profile_location_str) + strlen(r->app_service) + strlen(r->host) == 0)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct strbuf err = STRBUF_INIT;
	struct ingest_batch b;
	int ret = ingest_decode((const char *)data, size, FUZZ_MAX_ROWS, FUZZ_IN_TS, &b, &err);

	if (ret == 0) {
		if (err.len || !b.json || !b.batch_id || !wire_batch_id_valid(b.batch_id) || b.n == 0 ||
		    b.n > FUZZ_MAX_ROWS || !b.rows)
			abort();
		for (size_t i = 0; i < b.n; i++)
			fuzz_check_row(&b.rows[i]);
		ingest_batch_free(&b);
	} else {
		if (ret != -EINVAL || !err.len || b.json || b.rows || b.tags || b.n)
			abort();
	}
	sb_free(&err);
	return 0;
}
