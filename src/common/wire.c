/*
 * wire — see wire.h and docs/protocol.md.
 *
 * Encoding makes two passes over the rows: the first builds the batch's stack dictionary (an
 * open-addressing hash of the rows' profile_location_str, sized 2× the row count so it never
 * fills), the second writes each row as an object that carries only what differs from the
 * protocol's defaults. A second of agent data repeats most stacks across processes' Total rows
 * and event types, so the dictionary usually halves the body before zstd sees it.
 *
 * Strings are written with sb_json_escape, which replaces invalid UTF-8 by U+FFFD: JSON cannot
 * carry arbitrary bytes. Stacks, names and tags must therefore be UTF-8 to arrive unchanged;
 * symbol names from ELF files are in practice, and anything else is shown as U+FFFD.
 *
 * A row field left NULL or "" where the protocol has a non-empty default (event type, language,
 * unit, app_instance, host/agent/host_ip) is omitted, so the server applies the default: in a
 * row, "" means "the default", never "explicitly empty". A zero profile_create_timestamp
 * likewise means time×10⁶. compression_algo and profile_in_timestamp are not part of the
 * protocol and are not sent.
 *
 * Decompression streams into the output in bounded steps so a small bomb cannot allocate more
 * than the caller's cap, and the frame's window is limited to what the cap could ever need.
 */
#include "common/wire.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <zstd.h>
#include <zstd_errors.h>

#define LOG_MODULE "wire"
#include "common/log.h"

/* Level 1: batches are dictionary-deduplicated already, so higher levels buy little ratio and
 * cost agent CPU (compression was 6 % of the agent's time at level 3, bench/overhead). */
#define WIRE_ZSTD_LEVEL 1
/* Output is produced in steps of at most this many bytes (bounds the overshoot past the cap). */
#define WIRE_DECOMPRESS_STEP (256u << 10)
/* zstd's own default window limit (128 MiB): frames asking for more are refused. */
#define WIRE_WINDOW_LOG_MAX 27
#define WIRE_WINDOW_LOG_MIN 10

static const char *wire_s(const char *s)
{
	return s ? s : "";
}

int wire_batch_id_valid(const char *id)
{
	size_t n;

	if (!id)
		return 0;
	n = strlen(id);
	if (n == 0 || n > WIRE_BATCH_ID_MAX)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = id[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == ':' || c == '-'))
			return 0;
	}
	return 1;
}

/* The stack dictionary of one batch: slots hold 1 + index into uniq, 0 = empty. */
struct wire_dict {
	uint32_t *slots;
	size_t mask;
	const char **uniq;
	size_t n_uniq;
	uint32_t *row_idx; /* per row: its index into uniq */
};

static uint64_t wire_hash(const char *s)
{
	uint64_t h = 0xcbf29ce484222325ull;

	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
	return h;
}

static int wire_dict_build(struct wire_dict *d, const struct profile_row *rows, size_t n)
{
	size_t cap = 16;

	while (cap < 2 * n)
		cap *= 2;
	d->slots = calloc(cap, sizeof(*d->slots));
	d->uniq = calloc(n, sizeof(*d->uniq));
	d->row_idx = calloc(n, sizeof(*d->row_idx));
	d->mask = cap - 1;
	d->n_uniq = 0;
	if (!d->slots || !d->uniq || !d->row_idx)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		const char *s = rows[i].profile_location_str;
		size_t h = (size_t)wire_hash(s) & d->mask;

		while (d->slots[h] && strcmp(d->uniq[d->slots[h] - 1], s) != 0)
			h = (h + 1) & d->mask;
		if (!d->slots[h]) {
			d->uniq[d->n_uniq++] = s;
			d->slots[h] = (uint32_t)d->n_uniq;
		}
		d->row_idx[i] = d->slots[h] - 1;
	}
	return 0;
}

static void wire_dict_free(struct wire_dict *d)
{
	free(d->slots);
	free(d->uniq);
	free(d->row_idx);
}

/* Rejects rows the server would refuse for certain, so the caller learns at once. */
static int wire_row_check(const struct profile_row *r, size_t i)
{
	const char *why = NULL;

	if (r->time <= 0)
		why = "time must be > 0";
	else if (!r->app_service || !*r->app_service)
		why = "app_service is empty";
	else if (!r->profile_location_str || !*r->profile_location_str)
		why = "profile_location_str is empty";
	else if (r->profile_value < 0)
		why = "profile_value < 0";
	else if (r->process_id < 0 || r->process_id > UINT32_MAX || r->process_start_time < 0)
		why = "process_id or process_start_time out of range";
	else if (r->n_tags > ROW_MAX_TAGS)
		why = "more than ROW_MAX_TAGS tags";
	for (size_t t = 0; !why && t < r->n_tags; t++)
		if (!r->tag_names[t] || !*r->tag_names[t])
			why = "empty tag name";
	if (!why)
		return 0;
	log_warn("row %zu: %s", i, why);
	return -EINVAL;
}

static void wire_put_key(struct strbuf *out, const char *key)
{
	sb_putc(out, ',');
	sb_putc(out, '"');
	sb_puts(out, key);
	sb_puts(out, "\":");
}

/* Writes "key":"value" unless value is NULL, "" or equal to dflt. */
static void wire_put_str(struct strbuf *out, const char *key, const char *value, const char *dflt)
{
	if (!value || !*value || (dflt && strcmp(value, dflt) == 0))
		return;
	wire_put_key(out, key);
	sb_json_str(out, value);
}

static void wire_put_int(struct strbuf *out, const char *key, int64_t value, int64_t dflt)
{
	if (value == dflt)
		return;
	wire_put_key(out, key);
	sb_put_i64(out, value);
}

static const char *wire_default_unit(const char *event_type)
{
	if (strncmp(event_type, "mem-", 4) == 0 || strncmp(event_type, "hbm-", 4) == 0)
		return "bytes";
	return "microseconds";
}

static void wire_put_row(struct strbuf *out, const struct wire_batch_hdr *hdr,
			 const struct profile_row *r, uint32_t stack)
{
	const char *ev =
	    r->profile_event_type && *r->profile_event_type ? r->profile_event_type : "on-cpu";

	sb_puts(out, "{\"time\":");
	sb_put_i64(out, r->time);
	wire_put_key(out, "app_service");
	sb_json_str(out, r->app_service);
	wire_put_key(out, "stack");
	sb_put_i64(out, stack);
	wire_put_key(out, "profile_value");
	sb_put_i64(out, r->profile_value);
	wire_put_str(out, "profile_event_type", ev, "on-cpu");
	wire_put_str(out, "profile_language_type", r->profile_language_type, "eBPF");
	wire_put_str(out, "profile_value_unit", r->profile_value_unit, wire_default_unit(ev));
	wire_put_str(out, "app_instance", r->app_instance, r->app_service);
	if (r->profile_create_timestamp)
		wire_put_int(out, "profile_create_timestamp", r->profile_create_timestamp,
			     r->time * 1000000);
	wire_put_int(out, "process_id", r->process_id, 0);
	wire_put_int(out, "process_start_time", r->process_start_time, 0);
	wire_put_str(out, "host", r->host, wire_s(hdr->host));
	wire_put_str(out, "agent", r->agent, wire_s(hdr->agent));
	wire_put_str(out, "host_ip", r->host_ip, wire_s(hdr->host_ip));
	wire_put_str(out, "container_id", r->container_id, NULL);
	wire_put_str(out, "pod_cluster", r->pod_cluster, NULL);
	wire_put_str(out, "pod_ns", r->pod_ns, NULL);
	wire_put_str(out, "pod_node", r->pod_node, NULL);
	wire_put_str(out, "pod", r->pod, NULL);
	wire_put_str(out, "pod_group", r->pod_group, NULL);
	wire_put_str(out, "trace_id", r->trace_id, NULL);
	wire_put_str(out, "span_name", r->span_name, NULL);
	wire_put_str(out, "profile_id", r->profile_id, NULL);
	if (r->n_tags) {
		wire_put_key(out, "tags");
		sb_putc(out, '{');
		for (size_t t = 0; t < r->n_tags; t++) {
			if (t)
				sb_putc(out, ',');
			sb_json_str(out, wire_s(r->tag_names[t]));
			sb_putc(out, ':');
			sb_json_str(out, wire_s(r->tag_values[t]));
		}
		sb_putc(out, '}');
	}
	sb_putc(out, '}');
}

int wire_encode(const struct wire_batch_hdr *hdr, const struct profile_row *rows, size_t n,
		struct strbuf *out)
{
	struct wire_dict d = {0};
	int ret;

	if (!wire_batch_id_valid(hdr->batch_id)) {
		log_warn("invalid batch id '%s'", wire_s(hdr->batch_id));
		return -EINVAL;
	}
	if (n == 0 || n > UINT32_MAX / 2) {
		log_warn("batch %s: %zu rows", hdr->batch_id, n);
		return -EINVAL;
	}
	for (size_t i = 0; i < n; i++) {
		ret = wire_row_check(&rows[i], i);
		if (ret)
			return ret;
	}
	ret = wire_dict_build(&d, rows, n);
	if (ret)
		goto cleanup;
	sb_printf(out, "{\"version\":%d,\"batch_id\":", WIRE_VERSION);
	sb_json_str(out, hdr->batch_id);
	sb_puts(out, ",\"host\":");
	sb_json_str(out, wire_s(hdr->host));
	sb_puts(out, ",\"agent\":");
	sb_json_str(out, wire_s(hdr->agent));
	sb_puts(out, ",\"host_ip\":");
	sb_json_str(out, wire_s(hdr->host_ip));
	sb_puts(out, ",\"stacks\":[");
	for (size_t i = 0; i < d.n_uniq; i++) {
		if (i)
			sb_putc(out, ',');
		sb_json_str(out, d.uniq[i]);
	}
	sb_puts(out, "],\"rows\":[");
	for (size_t i = 0; i < n; i++) {
		if (i)
			sb_putc(out, ',');
		wire_put_row(out, hdr, &rows[i], d.row_idx[i]);
	}
	sb_puts(out, "]}");
cleanup:
	wire_dict_free(&d);
	return ret;
}

int wire_compress(const char *in, size_t len, struct strbuf *out)
{
	size_t bound = ZSTD_compressBound(len);
	ZSTD_CCtx *cc = ZSTD_createCCtx();
	size_t n;

	sb_reset(out);
	if (!cc)
		return -ENOMEM;
	/* The checksum lets the server tell a corrupted body from a valid one (4 bytes). */
	ZSTD_CCtx_setParameter(cc, ZSTD_c_compressionLevel, WIRE_ZSTD_LEVEL);
	ZSTD_CCtx_setParameter(cc, ZSTD_c_checksumFlag, 1);
	sb_grow(out, bound);
	n = ZSTD_compress2(cc, out->buf, bound, in, len);
	ZSTD_freeCCtx(cc);
	if (ZSTD_isError(n)) {
		log_error("zstd compress of %zu bytes: %s", len, ZSTD_getErrorName(n));
		return ZSTD_getErrorCode(n) == ZSTD_error_memory_allocation ? -ENOMEM : -EIO;
	}
	out->len = n;
	out->buf[n] = '\0';
	return 0;
}

/* The smallest window log that covers max bytes: a window larger than the output is useless. */
static int wire_window_log(size_t max)
{
	int log = WIRE_WINDOW_LOG_MIN;

	while (log < WIRE_WINDOW_LOG_MAX && ((size_t)1 << log) < max)
		log++;
	return log;
}

/*
 * A frame that declares its size (wire_compress always does) is decoded in one call straight
 * into a buffer of exactly that size: no copies out of zstd's window, no buffer growth. The
 * declared size is checked against max before anything is allocated, and zstd itself refuses a
 * frame whose content does not match its declaration.
 */
static int wire_decompress_sized(ZSTD_DCtx *dc, const char *in, size_t len, size_t size,
				 struct strbuf *out)
{
	size_t n;

	if (ZSTD_findFrameCompressedSize(in, len) != len)
		return -EINVAL; /* truncated, or bytes after the frame: not "one zstd frame" */
	sb_grow(out, size);
	n = ZSTD_decompressDCtx(dc, out->buf, size, in, len);
	if (ZSTD_isError(n) || n != size)
		return -EINVAL;
	out->len = n;
	out->buf[n] = '\0';
	return 0;
}

int wire_decompress(const char *in, size_t len, size_t max, struct strbuf *out)
{
	ZSTD_inBuffer ib = {in, len, 0};
	unsigned long long size;
	ZSTD_DCtx *dc;
	size_t r = 1;
	int ret = 0;

	sb_reset(out);
	if (len == 0)
		return -EINVAL;
	size = ZSTD_getFrameContentSize(in, len);
	if (size == ZSTD_CONTENTSIZE_ERROR)
		return -EINVAL;
	if (size != ZSTD_CONTENTSIZE_UNKNOWN && size > max)
		return -EFBIG;
	dc = ZSTD_createDCtx();
	if (!dc)
		return -ENOMEM;
	if (size != ZSTD_CONTENTSIZE_UNKNOWN) {
		ret = wire_decompress_sized(dc, in, len, (size_t)size, out);
		ZSTD_freeDCtx(dc);
		if (ret)
			sb_reset(out);
		return ret;
	}
	ZSTD_DCtx_setParameter(dc, ZSTD_d_windowLogMax, wire_window_log(max));
	while (r != 0) {
		/* One byte of room past max tells "exactly max" from "more than max". */
		size_t left = max - out->len;
		size_t room = left >= WIRE_DECOMPRESS_STEP ? WIRE_DECOMPRESS_STEP : left + 1;
		ZSTD_outBuffer ob;

		sb_grow(out, room);
		ob = (ZSTD_outBuffer){out->buf + out->len, room, 0};
		r = ZSTD_decompressStream(dc, &ob, &ib);
		if (ZSTD_isError(r)) {
			ret = ZSTD_getErrorCode(r) == ZSTD_error_frameParameter_windowTooLarge
				  ? -EFBIG
				  : -EINVAL;
			break;
		}
		out->len += ob.pos;
		out->buf[out->len] = '\0';
		if (out->len > max) {
			ret = -EFBIG;
			break;
		}
		/* No progress with input left over means a truncated frame. */
		if (r != 0 && ib.pos == ib.size && ob.pos < ob.size) {
			ret = -EINVAL;
			break;
		}
	}
	if (ret == 0 && ib.pos != ib.size)
		ret = -EINVAL; /* bytes after the frame: not "one zstd frame" */
	ZSTD_freeDCtx(dc);
	if (ret)
		sb_reset(out);
	return ret;
}
