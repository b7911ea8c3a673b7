/*
 * fuzz_request — api_parse_request() and api_parse_org() on arbitrary bytes. Neither may crash
 * or leak; a parse either succeeds with a complete request (every string set, required fields
 * non-zero, max_kernel_stack_depth >= -1) and no message, or fails with -EINVAL, a message, and
 * nothing left allocated. The org parser gets the input as a NUL-terminated header value and
 * must answer 0 with 1..9999, or -EINVAL/-ERANGE with a message.
 *
 * The body is passed NUL-terminated after its len bytes, as http.c hands it over: the parser's
 * empty-body check uses strspn(), which reads up to a NUL (reported to the api owner).
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/api_profile.h"
#include "store/store.h"

static void fuzz_check_request(const uint8_t *data, size_t size)
{
	struct strbuf err = STRBUF_INIT;
	struct pt_request req;
	char *body = malloc(size + 1);
	int ret;

	if (!body)
		return;
	memcpy(body, data, size);
	body[size] = '\0';
	ret = api_parse_request(body, size, &req, &err);

	if (ret == 0) {
		if (err.len || !req.app_service || !req.event_type || !req.language_type ||
		    !req.tag_filter || !*req.event_type || !*req.language_type ||
		    !req.time_start || !req.time_end || req.max_kernel_stack_depth < -1 ||
		    (req.format != API_FORMAT_FLAT && req.format != API_FORMAT_COMPACT))
			abort();
		api_request_free(&req);
	} else {
		if (ret != -EINVAL || !err.len)
			abort();
		/* A failed parse leaves nothing to free; the struct must be safe to free anyway. */
		if (req.app_service || req.event_type || req.language_type || req.tag_filter)
			abort();
	}
	free(body);
	sb_free(&err);
}

static void fuzz_check_org(const uint8_t *data, size_t size)
{
	struct strbuf err = STRBUF_INIT;
	char *hdr = malloc(size + 1);
	int org = 0, ret;

	if (!hdr)
		return;
	memcpy(hdr, data, size);
	hdr[size] = '\0';
	ret = api_parse_org(hdr, &org, &err);
	if (ret == 0) {
		if (org < STORE_ORG_MIN || org > STORE_ORG_MAX || err.len)
			abort();
	} else if ((ret != -EINVAL && ret != -ERANGE) || !err.len) {
		abort();
	}
	free(hdr);
	sb_free(&err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_check_request(data, size);
	if (size <= 64)
		fuzz_check_org(data, size);
	return 0;
}
