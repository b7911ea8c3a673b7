/*
 * fuzz_wire — wire_decompress on arbitrary bytes must never crash, never exceed its cap, and
 * either succeed or say -EINVAL/-EFBIG; whatever wire_compress produces must come back intact.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/wire.h"

/* Small enough that a bomb in the corpus hits it quickly. */
#define FUZZ_WIRE_CAP (1u << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct strbuf out = STRBUF_INIT, z = STRBUF_INIT;
	int ret = wire_decompress((const char *)data, size, FUZZ_WIRE_CAP, &out);

	if (ret != 0 && ret != -EINVAL && ret != -EFBIG)
		abort();
	if (out.len > FUZZ_WIRE_CAP || (ret != 0 && out.len != 0))
		abort();
	if (wire_compress((const char *)data, size, &z) != 0)
		abort();
	if (wire_decompress(z.buf, z.len, size, &out) != 0 || out.len != size ||
	    (size && memcmp(out.buf, data, size) != 0))
		abort();
	sb_free(&out);
	sb_free(&z);
	return 0;
}
