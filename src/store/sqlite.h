/*
 * sqlite — the SQLite engine behind store.h (store_sqlite_open is declared there), and the few
 * things only this engine has: retention pruning and the rule that names an organisation's file.
 *
 * Organisation files: organisation 1 uses PATH as given; organisation N > 1 uses a sibling file
 * whose name is PATH with ".NNNN_profile" (N zero-padded to 4 digits, as DeepFlow's database
 * names) inserted before the extension of the last path component, or appended when it has none:
 *   ./ember.db -> ./ember.0002_profile.db
 *   /var/lib/ember/data -> /var/lib/ember/data.0002_profile
 *
 * Threading: like every store function, both are thread-safe and may run next to inserts and
 * queries; pruning takes each database's write lock for one bounded chunk at a time.
 */
#ifndef EMBER_STORE_SQLITE_H
#define EMBER_STORE_SQLITE_H

#include <stddef.h>
#include <stdint.h>

#include "store/store.h"

/* How long rows are kept when the server is not told otherwise (DeepFlow's profile TTL). */
#define STORE_SQLITE_RETENTION_DEFAULT_S (72 * 3600)

/*
 * Deletes, in every organisation's file that exists, the rows with time < before (unix seconds),
 * the stacks and contexts no row refers to any more, and the remembered batch ids received
 * before that time.
 * *rows_deleted (may be NULL) receives the number of rows deleted. Returns 0 or a negative errno
 * (-EINVAL if s is not a SQLite store; errmsg says why).
 */
int store_sqlite_prune(struct store *s, int64_t before, uint64_t *rows_deleted);

/* Writes the file name of organisation org into out. Returns 0, or -ENAMETOOLONG / -EINVAL. */
int store_sqlite_org_path(const char *path, int org, char *out, size_t outlen);

#endif
