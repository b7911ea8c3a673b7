/*
 * uuid5 — RFC 4122 name-based UUIDs (version 5, SHA-1) in the OID namespace
 * 6ba7b812-9dad-11d1-80b4-00c04fd430c8, the ids DeepFlow gives flame-graph nodes.
 *
 * A context holds the SHA-1 state after the namespace and whatever name bytes were fed so far,
 * so the ids of all prefixes of a folded stack cost one copy + one update + one finalize each:
 * hash "a;b", copy the context, feed ";c", finalize → id("a;b;c"). Contexts wrap an OpenSSL EVP
 * digest context (heap-allocated by OpenSSL); the owner releases them with uuid5_free(). A
 * context is used by one thread at a time. Functions return 0 or -ENOMEM / -EIO (libcrypto
 * failure).
 */
#ifndef EMBER_COMMON_UUID5_H
#define EMBER_COMMON_UUID5_H

#include <stddef.h>
#include <stdint.h>

#define UUID5_BYTES 16
#define UUID5_STR_LEN 36 /* "xxxxxxxx-xxxx-5xxx-yxxx-xxxxxxxxxxxx", lowercase, no NUL */

struct evp_md_ctx_st;

struct uuid5_ctx {
	struct evp_md_ctx_st *md; /* NULL until uuid5_init or uuid5_copy */
};

/* Starts a name: the namespace is hashed, no name bytes yet. Allocates when c->md is NULL. */
int uuid5_init(struct uuid5_ctx *c);
/* dst = src (dst may be zeroed or an earlier context; it is reused when possible). */
int uuid5_copy(struct uuid5_ctx *dst, const struct uuid5_ctx *src);
/* Appends name bytes. */
int uuid5_update(struct uuid5_ctx *c, const void *name, size_t len);
/* Writes the 16 id bytes. The context is spent: re-init or copy into it before reusing it. */
int uuid5_final(struct uuid5_ctx *c, uint8_t id[UUID5_BYTES]);
/* Frees the digest state; c may then be reused as a zeroed context. */
void uuid5_free(struct uuid5_ctx *c);

/* Text form: UUID5_STR_LEN lowercase characters followed by a NUL (out holds 37 bytes). */
void uuid5_format(const uint8_t id[UUID5_BYTES], char out[UUID5_STR_LEN + 1]);
/* One-shot: the text id of name[0..len). */
int uuid5_oid(const void *name, size_t len, char out[UUID5_STR_LEN + 1]);

#endif
