/*
 * uuid5 — see uuid5.h. SHA-1 through OpenSSL's EVP interface; the version and variant bits are
 * set on the first 16 bytes of the digest as RFC 4122 §4.3 says.
 */
#include "common/uuid5.h"

#include <errno.h>
#include <openssl/evp.h>

/* 6ba7b812-9dad-11d1-80b4-00c04fd430c8 (RFC 4122 appendix C, NameSpace_OID). */
static const uint8_t uuid5_ns_oid[UUID5_BYTES] = {
	0x6b, 0xa7, 0xb8, 0x12, 0x9d, 0xad, 0x11, 0xd1,
	0x80, 0xb4, 0x00, 0xc0, 0x4f, 0xd4, 0x30, 0xc8,
};

int uuid5_init(struct uuid5_ctx *c)
{
	if (!c->md) {
		c->md = EVP_MD_CTX_new();
		if (!c->md)
			return -ENOMEM;
	}
	if (!EVP_DigestInit_ex(c->md, EVP_sha1(), NULL) ||
	    !EVP_DigestUpdate(c->md, uuid5_ns_oid, sizeof(uuid5_ns_oid)))
		return -EIO;
	return 0;
}

int uuid5_copy(struct uuid5_ctx *dst, const struct uuid5_ctx *src)
{
	if (!dst->md) {
		dst->md = EVP_MD_CTX_new();
		if (!dst->md)
			return -ENOMEM;
	}
	return EVP_MD_CTX_copy_ex(dst->md, src->md) ? 0 : -EIO;
}

int uuid5_update(struct uuid5_ctx *c, const void *name, size_t len)
{
	if (len == 0)
		return 0;
	return EVP_DigestUpdate(c->md, name, len) ? 0 : -EIO;
}

int uuid5_final(struct uuid5_ctx *c, uint8_t id[UUID5_BYTES])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int n = 0;

	if (!EVP_DigestFinal_ex(c->md, md, &n) || n < UUID5_BYTES)
		return -EIO;
	for (int i = 0; i < UUID5_BYTES; i++)
		id[i] = md[i];
	id[6] = (uint8_t)((id[6] & 0x0f) | 0x50);
	id[8] = (uint8_t)((id[8] & 0x3f) | 0x80);
	return 0;
}

void uuid5_free(struct uuid5_ctx *c)
{
	EVP_MD_CTX_free(c->md);
	c->md = NULL;
}

void uuid5_format(const uint8_t id[UUID5_BYTES], char out[UUID5_STR_LEN + 1])
{
	static const char hex[] = "0123456789abcdef";
	char *p = out;

	for (int i = 0; i < UUID5_BYTES; i++) {
		if (i == 4 || i == 6 || i == 8 || i == 10)
			*p++ = '-';
		*p++ = hex[id[i] >> 4];
		*p++ = hex[id[i] & 15];
	}
	*p = '\0';
}

int uuid5_oid(const void *name, size_t len, char out[UUID5_STR_LEN + 1])
{
	struct uuid5_ctx c = {NULL};
	uint8_t id[UUID5_BYTES];
	int rc;

	rc = uuid5_init(&c);
	if (!rc)
		rc = uuid5_update(&c, name, len);
	if (!rc)
		rc = uuid5_final(&c, id);
	uuid5_free(&c);
	if (!rc)
		uuid5_format(id, out);
	return rc;
}
