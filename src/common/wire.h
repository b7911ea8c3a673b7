/*
 * wire — the client half of the ingest protocol (docs/protocol.md, version 1): rows → JSON batch,
 * with stacks deduplicated into the batch's "stacks" dictionary, optionally zstd-compressed.
 * The server half (decoding, validation) is src/server/ingest.c. Stateless and thread-safe.
 */
#ifndef EMBER_COMMON_WIRE_H
#define EMBER_COMMON_WIRE_H

#include <stddef.h>

#include "common/row.h"
#include "common/strbuf.h"

#define WIRE_VERSION 1
#define WIRE_BATCH_ID_MAX 128

struct wire_batch_hdr {
	const char *batch_id; /* 1..128 bytes of [A-Za-z0-9._:-] */
	const char *host;
	const char *agent;
	const char *host_ip;
};

/* Appends the JSON body of one batch to out. Row fields equal to the batch's host/agent/host_ip
 * or to their protocol defaults are omitted (NULL/"" there means "the default"). Strings must be
 * UTF-8; invalid bytes arrive as U+FFFD. Returns 0 or -EINVAL (bad batch id, no rows, or a row
 * the server must refuse: time <= 0, empty app_service or stack, negative value, pid outside
 * 0..2^32-1, negative start time, > 64 tags, an empty tag name). */
int wire_encode(const struct wire_batch_hdr *hdr, const struct profile_row *rows, size_t n,
		struct strbuf *out);

/* zstd-compresses in into out (replacing its content). Returns 0 or -ENOMEM/-EIO. */
int wire_compress(const char *in, size_t len, struct strbuf *out);
/* Decompresses one zstd frame into out, refusing to produce more than max bytes (-EFBIG).
 * Returns 0, -EINVAL (not zstd / corrupt), -EFBIG. */
int wire_decompress(const char *in, size_t len, size_t max, struct strbuf *out);

/* 1 if id is a valid batch id. */
int wire_batch_id_valid(const char *id);

#endif
