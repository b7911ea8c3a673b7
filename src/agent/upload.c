/*
 * upload — see upload.h.
 *
 * One FIFO list holds every pending batch in sequence order; each batch lives either in memory
 * (its compressed bytes) or in a spool file. When memory is over its bound the OLDEST in-memory
 * batches move to disk, so the list is normally [spooled ...][in memory ...] and the sender
 * always takes the head: order is kept across memory, disk and restarts. The batch at the head
 * blocks the others while it is retried (head-of-line on purpose: the server sees time go
 * forward). Only 400 and 413 drop a batch: any other answer (5xx, 404 of a proxy, 429) or no
 * answer is retried, since the same bytes may succeed later.
 *
 * The sender marks the batch it is posting "in flight"; the spiller and the bound enforcement
 * skip such a batch, so the sender may read its bytes without the lock. All list and counter
 * changes happen under one mutex; the HTTP request and spool reads run without it. Spool writes
 * (write, fsync, rename) run under it: they happen only when memory is full, and then the sender
 * has nothing better to do than wait.
 *
 * Spool file: "<seq:020>-<rows>-<batch id>.zst", the exact request body. Writing goes through
 * ".tmp-<name>", fsync, rename, so a crash leaves either a whole batch or a temp file that the
 * next open deletes. The row count in the name lets a dropped file be counted without reading.
 */
#include "agent/upload.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "common/httpc.h"
#include "common/strbuf.h"
#include "common/wire.h"

#define LOG_MODULE "upload"
#include "common/log.h"

#define UPLOAD_MEM_BYTES_DEFAULT (16u << 20)
#define UPLOAD_SPOOL_BYTES_DEFAULT ((size_t)256 << 20)
#define UPLOAD_MAX_BACKOFF_DEFAULT_S 30.0
#define UPLOAD_CLOSE_GRACE_DEFAULT_S 3.0
#define UPLOAD_BACKOFF_MIN_S 0.5
/* A Retry-After beyond this is treated as this (a misconfigured server must not stall us). */
#define UPLOAD_RETRY_AFTER_MAX_S 300.0
#define UPLOAD_HTTP_TIMEOUT_MS 10000L
/* Rows per batch: a quarter of the server's default --max-batch-rows, so a larger submit is
 * split rather than refused, and one batch stays a few MB of JSON. */
#define UPLOAD_BATCH_ROWS_DEFAULT 50000
#define UPLOAD_MAX_RESPONSE (1u << 20)
/* The agent part of a batch id, so "<agent>-<boot>-<seq>" always fits WIRE_BATCH_ID_MAX. */
#define UPLOAD_ID_AGENT_MAX 96
#define UPLOAD_SPOOL_SUFFIX ".zst"
#define UPLOAD_SPOOL_TMP ".tmp-"
#define UPLOAD_INGEST_PATH "/v1/profile/ingest"

struct upload_batch {
	struct upload_batch *prev, *next;
	uint64_t seq;
	size_t rows;
	size_t len;   /* compressed body bytes */
	char *data;   /* the body when in memory, else NULL */
	int spooled;  /* the body is in the spool file */
	int inflight; /* the sender is posting it: not to be moved or dropped */
	char id[WIRE_BATCH_ID_MAX + 1];
};

struct uploader {
	char *url, *host, *agent, *host_ip, *spool_dir;
	char org_header[32];
	size_t mem_bytes, spool_bytes, batch_rows;
	double max_backoff_s, close_grace_s;
	int spool_fd; /* the spool directory, -1 without one */
	char id_prefix[UPLOAD_ID_AGENT_MAX + 16];

	pthread_mutex_t mu;
	pthread_cond_t wake; /* sender: new batch or stop */
	pthread_cond_t done; /* flush: a batch left the queue */
	pthread_t thread;
	int thread_started;

	struct upload_batch *head, *tail;
	uint64_t next_seq;
	struct upload_stats st; /* queued_bytes is the memory in use, spooled_bytes the disk */
	double backoff_s, next_try;
	uint64_t rng;
	int stop;
	atomic_int abort_request;
};

static double upload_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Waits on cv until the monotonic deadline; returns at once on spurious or real wake-ups. */
static void upload_wait_until(pthread_cond_t *cv, pthread_mutex_t *mu, double deadline)
{
	struct timespec ts;

	ts.tv_sec = (time_t)deadline;
	ts.tv_nsec = (long)((deadline - (double)ts.tv_sec) * 1e9);
	pthread_cond_timedwait(cv, mu, &ts);
}

/* xorshift64: jitter only, no need for quality. */
static double upload_random01(struct uploader *u)
{
	u->rng ^= u->rng << 13;
	u->rng ^= u->rng >> 7;
	u->rng ^= u->rng << 17;
	return (double)(u->rng >> 11) / (double)(1ull << 53);
}

static void upload_spool_name(const struct upload_batch *b, char *buf, size_t len)
{
	snprintf(buf, len, "%020" PRIu64 "-%zu-%s" UPLOAD_SPOOL_SUFFIX, b->seq, b->rows, b->id);
}

static void upload_unlink_locked(struct uploader *u, struct upload_batch *b)
{
	if (b->prev)
		b->prev->next = b->next;
	else
		u->head = b->next;
	if (b->next)
		b->next->prev = b->prev;
	else
		u->tail = b->prev;
	b->prev = b->next = NULL;
}

/* Takes b off the queue and frees it, deleting its spool file. */
static void upload_remove_locked(struct uploader *u, struct upload_batch *b)
{
	char name[256];

	upload_unlink_locked(u, b);
	if (b->data) {
		u->st.queued_bytes -= b->len;
		u->st.queued_batches--;
	}
	if (b->spooled) {
		upload_spool_name(b, name, sizeof(name));
		if (unlinkat(u->spool_fd, name, 0) && errno != ENOENT)
			log_warn("spool %s/%s: unlink: %s", u->spool_dir, name, strerror(errno));
		u->st.spooled_bytes -= b->len;
		u->st.spooled_batches--;
	}
	free(b->data);
	free(b);
	pthread_cond_broadcast(&u->done);
}

static void upload_drop_locked(struct uploader *u, struct upload_batch *b, const char *why)
{
	log_warn("dropped batch %s (%zu rows): %s", b->id, b->rows, why);
	u->st.batches_dropped++;
	u->st.rows_dropped += b->rows;
	upload_remove_locked(u, b);
}

/* Writes the body of b to its spool file atomically. */
static int upload_spool_write(struct uploader *u, const struct upload_batch *b)
{
	char name[256], tmp[272];
	size_t off = 0;
	int fd, ret = 0;

	upload_spool_name(b, name, sizeof(name));
	snprintf(tmp, sizeof(tmp), UPLOAD_SPOOL_TMP "%s", name);
	fd = openat(u->spool_fd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		ret = -errno;
		goto fail;
	}
	while (off < b->len) {
		ssize_t w = write(fd, b->data + off, b->len - off);

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0) {
			ret = -errno;
			break;
		}
		off += (size_t)w;
	}
	if (!ret && fsync(fd))
		ret = -errno;
	if (close(fd) && !ret)
		ret = -errno;
	if (!ret && renameat(u->spool_fd, tmp, u->spool_fd, name))
		ret = -errno;
	if (ret) {
		unlinkat(u->spool_fd, tmp, 0);
		goto fail;
	}
	fsync(u->spool_fd); /* makes the rename durable */
	return 0;
fail:
	log_error("spool %s/%s: write: %s", u->spool_dir, name, strerror(-ret));
	return ret;
}

/* Reads the spool file of b into a fresh buffer (the caller frees it). */
static int upload_spool_read(struct uploader *u, const struct upload_batch *b, char **out)
{
	char name[256];
	char *buf = malloc(b->len ? b->len : 1);
	size_t off = 0;
	int fd, ret = 0;

	upload_spool_name(b, name, sizeof(name));
	if (!buf)
		return -ENOMEM;
	fd = openat(u->spool_fd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		ret = -errno;
		goto out;
	}
	while (off < b->len) {
		ssize_t r = read(fd, buf + off, b->len - off);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			ret = r < 0 ? -errno : -EIO; /* shorter than when it was listed */
			break;
		}
		off += (size_t)r;
	}
	close(fd);
out:
	if (ret) {
		log_error("spool %s/%s: read: %s", u->spool_dir, name, strerror(-ret));
		free(buf);
		return ret;
	}
	*out = buf;
	return 0;
}

/* Drops the oldest spooled batches until the spool fits its bound. */
static void upload_trim_spool_locked(struct uploader *u)
{
	struct upload_batch *b = u->head;

	while (b && u->st.spooled_bytes > u->spool_bytes) {
		struct upload_batch *next = b->next;

		if (b->spooled && !b->inflight)
			upload_drop_locked(u, b, "spool bound reached");
		b = next;
	}
}

/* Moves the oldest in-memory batches to the spool (or drops them) until memory fits, then
 * drops the oldest spooled batches until the spool fits. */
static void upload_spill_locked(struct uploader *u)
{
	struct upload_batch *b = u->head;

	while (b && u->st.queued_bytes > u->mem_bytes) {
		struct upload_batch *next = b->next;

		if (!b->data || b->inflight) {
			b = next;
			continue;
		}
		if (u->spool_fd < 0) {
			upload_drop_locked(u, b, "memory bound reached, no spool");
		} else if (upload_spool_write(u, b)) {
			upload_drop_locked(u, b, "memory bound reached, spool write failed");
		} else {
			free(b->data);
			b->data = NULL;
			b->spooled = 1;
			u->st.queued_bytes -= b->len;
			u->st.queued_batches--;
			u->st.spooled_bytes += b->len;
			u->st.spooled_batches++;
		}
		b = next;
	}
	/* After the walk: trimming inside it could free the batch saved as next. */
	upload_trim_spool_locked(u);
}

/* Inserts b in sequence order (at the tail unless submits raced). */
static void upload_insert_locked(struct uploader *u, struct upload_batch *b)
{
	struct upload_batch *after = u->tail;

	while (after && after->seq > b->seq)
		after = after->prev;
	b->prev = after;
	b->next = after ? after->next : u->head;
	if (b->next)
		b->next->prev = b;
	else
		u->tail = b;
	if (after)
		after->next = b;
	else
		u->head = b;
}

static int upload_cmp_seq(const void *a, const void *b)
{
	const struct upload_batch *x = *(struct upload_batch *const *)a;
	const struct upload_batch *y = *(struct upload_batch *const *)b;

	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Parses "<seq>-<rows>-<id>.zst" into b. */
static int upload_spool_parse(const char *name, struct upload_batch *b)
{
	size_t n = strlen(name), sl = strlen(UPLOAD_SPOOL_SUFFIX), idlen;
	const char *p = name;
	char *end;

	if (n <= sl || strcmp(name + n - sl, UPLOAD_SPOOL_SUFFIX) != 0 || *p < '0' || *p > '9')
		return -EINVAL;
	b->seq = strtoull(p, &end, 10);
	if (*end != '-' || end[1] < '0' || end[1] > '9')
		return -EINVAL;
	b->rows = strtoull(end + 1, &end, 10);
	if (*end != '-')
		return -EINVAL;
	p = end + 1;
	idlen = (size_t)(name + n - sl - p);
	if (idlen == 0 || idlen > WIRE_BATCH_ID_MAX)
		return -EINVAL;
	memcpy(b->id, p, idlen);
	b->id[idlen] = '\0';
	return wire_batch_id_valid(b->id) ? 0 : -EINVAL;
}

/* Queues the batches a previous run left in the spool, oldest first. */
static int upload_spool_load(struct uploader *u)
{
	struct upload_batch **list = NULL;
	size_t n = 0, cap = 0;
	struct dirent *de;
	DIR *d;
	int dfd, ret;

	if (mkdir(u->spool_dir, 0700) && errno != EEXIST) {
		ret = -errno;
		log_error("spool %s: mkdir: %s", u->spool_dir, strerror(-ret));
		return ret;
	}
	u->spool_fd = open(u->spool_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (u->spool_fd < 0) {
		ret = -errno;
		log_error("spool %s: open: %s", u->spool_dir, strerror(-ret));
		return ret;
	}
	dfd = dup(u->spool_fd);
	d = dfd >= 0 ? fdopendir(dfd) : NULL;
	if (!d) {
		ret = -errno;
		log_error("spool %s: opendir: %s", u->spool_dir, strerror(-ret));
		if (dfd >= 0)
			close(dfd);
		return ret;
	}
	while ((de = readdir(d))) {
		struct upload_batch tmp = {0}, *b;
		struct stat sb;

		if (strncmp(de->d_name, UPLOAD_SPOOL_TMP, strlen(UPLOAD_SPOOL_TMP)) == 0) {
			unlinkat(u->spool_fd, de->d_name, 0); /* a write cut short by a crash */
			continue;
		}
		if (de->d_name[0] == '.' || upload_spool_parse(de->d_name, &tmp))
			continue;
		if (fstatat(u->spool_fd, de->d_name, &sb, 0) || !S_ISREG(sb.st_mode))
			continue;
		if (n == cap) {
			struct upload_batch **nl;

			cap = cap ? cap * 2 : 64;
			nl = realloc(list, cap * sizeof(*list));
			if (!nl)
				break;
			list = nl;
		}
		b = malloc(sizeof(*b));
		if (!b)
			break;
		*b = tmp;
		b->len = (size_t)sb.st_size;
		b->spooled = 1;
		list[n++] = b;
	}
	closedir(d);
	if (n)
		qsort(list, n, sizeof(*list), upload_cmp_seq);
	for (size_t i = 0; i < n; i++) {
		upload_insert_locked(u, list[i]);
		u->st.spooled_batches++;
		u->st.spooled_bytes += list[i]->len;
		if (list[i]->seq >= u->next_seq)
			u->next_seq = list[i]->seq + 1;
	}
	free(list);
	if (n)
		log_info("spool %s: %zu batches (%" PRIu64 " bytes) from a previous run",
			 u->spool_dir, n, u->st.spooled_bytes);
	upload_trim_spool_locked(u);
	return 0;
}

static int upload_should_abort(void *arg)
{
	struct uploader *u = arg;

	return atomic_load(&u->abort_request);
}

enum upload_outcome { UPLOAD_ACKED, UPLOAD_REJECTED, UPLOAD_RETRY };

/* POSTs one body; on UPLOAD_RETRY sets *retry_after (seconds, or -1). */
static enum upload_outcome upload_post(struct uploader *u, const struct upload_batch *b,
				       const char *body, int was_ok, long *retry_after, int *dup)
{
	const char *headers[] = {"Content-Type: application/json", "Content-Encoding: zstd",
				 u->org_header[0] ? u->org_header : NULL, NULL};
	struct httpc_req req = {.url = u->url,
				.body = body,
				.body_len = b->len,
				.headers = headers,
				.timeout_ms = UPLOAD_HTTP_TIMEOUT_MS,
				.max_response = UPLOAD_MAX_RESPONSE,
				.should_abort = upload_should_abort,
				.arg = u,
				.keep_alive = 1};
	struct httpc_resp resp = {.body = STRBUF_INIT};
	enum upload_outcome res = UPLOAD_RETRY;
	json_t *root = NULL;
	char err[256];
	int ret;

	*retry_after = -1;
	*dup = 0;
	ret = httpc_do(&req, &resp, err, sizeof(err));
	if (ret) {
		if (was_ok)
			log_warn("batch %s: %s; retrying with backoff", b->id, err);
		goto out;
	}
	if (resp.status == 200 || resp.status == 400 || resp.status == 413)
		root = json_loadb(resp.body.buf ? resp.body.buf : "", resp.body.len, 0, NULL);
	if (resp.status == 200) {
		res = UPLOAD_ACKED;
		*dup = json_is_true(json_object_get(json_object_get(root, "result"), "duplicate"));
	} else if (resp.status == 400 || resp.status == 413) {
		const char *desc = json_string_value(json_object_get(root, "DESCRIPTION"));

		if (!desc)
			desc = resp.body.buf ? resp.body.buf : "";
		/* The same bytes can never succeed: keeping them would block the queue forever. */
		log_error("batch %s (%zu rows) rejected by %s: HTTP %ld: %.300s", b->id, b->rows,
			  u->url, resp.status, desc);
		res = UPLOAD_REJECTED;
	} else {
		*retry_after = resp.retry_after;
		if (was_ok)
			log_warn("batch %s: %s answered HTTP %ld; retrying with backoff", b->id,
				 u->url, resp.status);
	}
out:
	json_decref(root);
	sb_free(&resp.body);
	return res;
}

/* Schedules the next attempt after a failure: exponential backoff with jitter, or Retry-After. */
static void upload_schedule_retry_locked(struct uploader *u, long retry_after)
{
	double delay = u->backoff_s < u->max_backoff_s ? u->backoff_s : u->max_backoff_s;

	delay *= 0.5 + 0.5 * upload_random01(u);
	if (retry_after >= 0) {
		double ra = (double)retry_after;

		if (ra > UPLOAD_RETRY_AFTER_MAX_S)
			ra = UPLOAD_RETRY_AFTER_MAX_S;
		if (ra > delay)
			delay = ra;
	}
	u->backoff_s *= 2;
	if (u->backoff_s > u->max_backoff_s)
		u->backoff_s = u->max_backoff_s;
	u->next_try = upload_now() + delay;
}

static void *upload_sender(void *arg)
{
	struct uploader *u = arg;

	pthread_mutex_lock(&u->mu);
	for (;;) {
		struct upload_batch *b;
		enum upload_outcome res;
		char *own = NULL;
		const char *body;
		long retry_after;
		int dup, was_ok;

		while (!u->stop && (!u->head || upload_now() < u->next_try)) {
			if (u->head)
				upload_wait_until(&u->wake, &u->mu, u->next_try);
			else
				pthread_cond_wait(&u->wake, &u->mu);
		}
		if (u->stop)
			break;
		b = u->head;
		b->inflight = 1;
		body = b->data;
		if (!body) {
			int ret;

			pthread_mutex_unlock(&u->mu);
			ret = upload_spool_read(u, b, &own);
			pthread_mutex_lock(&u->mu);
			b->inflight = 0;
			if (ret) {
				upload_drop_locked(u, b, "spool file unreadable");
				continue;
			}
			b->inflight = 1;
			body = own;
		}
		was_ok = u->st.server_ok;
		pthread_mutex_unlock(&u->mu);
		res = upload_post(u, b, body, was_ok, &retry_after, &dup);
		free(own);
		pthread_mutex_lock(&u->mu);
		b->inflight = 0;
		if (res == UPLOAD_RETRY) {
			u->st.retries++;
			u->st.server_ok = 0;
			upload_schedule_retry_locked(u, retry_after);
			continue;
		}
		if (!was_ok)
			log_info("server %s reachable again", u->url);
		u->st.server_ok = 1;
		u->backoff_s = UPLOAD_BACKOFF_MIN_S;
		u->next_try = 0;
		if (res == UPLOAD_ACKED) {
			u->st.batches_sent++;
			u->st.rows_sent += b->rows;
			u->st.batches_duplicate += (uint64_t)dup;
		} else {
			u->st.batches_rejected++;
		}
		upload_remove_locked(u, b);
	}
	pthread_mutex_unlock(&u->mu);
	return NULL;
}

static char *upload_strdup(const char *s)
{
	char *d = strdup(s ? s : "");

	if (!d)
		abort(); /* as strbuf: a few bytes at start-up */
	return d;
}

/* "<agent>-<8 random hex>-": the agent name reduced to the batch-id alphabet. */
static void upload_make_id_prefix(struct uploader *u)
{
	uint32_t boot = 0;
	size_t n = 0;
	const char *a = *u->agent ? u->agent : "ember";

	if (getrandom(&boot, sizeof(boot), 0) != sizeof(boot))
		boot = (uint32_t)time(NULL) ^ (uint32_t)getpid() << 16;
	u->rng = ((uint64_t)boot << 32 | (uint64_t)getpid()) | 1;
	for (; a[n] && n < UPLOAD_ID_AGENT_MAX; n++) {
		char c = a[n];
		char one[2] = {c, '\0'};

		u->id_prefix[n] = wire_batch_id_valid(one) ? c : '_';
	}
	snprintf(u->id_prefix + n, sizeof(u->id_prefix) - n, "-%08x-", boot);
}

int upload_open(const struct upload_opts *opts, struct uploader **out)
{
	struct uploader *u;
	pthread_condattr_t ca;
	size_t ulen;
	int ret;

	if (!opts->server_url || !*opts->server_url)
		return -EINVAL;
	u = calloc(1, sizeof(*u));
	if (!u)
		return -ENOMEM;
	ulen = strlen(opts->server_url);
	while (ulen && opts->server_url[ulen - 1] == '/')
		ulen--;
	u->url = malloc(ulen + sizeof(UPLOAD_INGEST_PATH));
	if (!u->url)
		abort();
	memcpy(u->url, opts->server_url, ulen);
	memcpy(u->url + ulen, UPLOAD_INGEST_PATH, sizeof(UPLOAD_INGEST_PATH));
	u->host = upload_strdup(opts->host);
	u->agent = upload_strdup(opts->agent);
	u->host_ip = upload_strdup(opts->host_ip);
	u->spool_dir = opts->spool_dir ? upload_strdup(opts->spool_dir) : NULL;
	u->spool_fd = -1;
	if (opts->org > 1)
		snprintf(u->org_header, sizeof(u->org_header), "X-Org-Id: %d", opts->org);
	u->mem_bytes = opts->mem_bytes ? opts->mem_bytes : UPLOAD_MEM_BYTES_DEFAULT;
	u->spool_bytes = opts->spool_bytes ? opts->spool_bytes : UPLOAD_SPOOL_BYTES_DEFAULT;
	u->max_backoff_s =
	    opts->max_backoff_s > 0 ? opts->max_backoff_s : UPLOAD_MAX_BACKOFF_DEFAULT_S;
	u->close_grace_s =
	    opts->close_grace_s > 0 ? opts->close_grace_s : UPLOAD_CLOSE_GRACE_DEFAULT_S;
	u->batch_rows = opts->batch_rows ? opts->batch_rows : UPLOAD_BATCH_ROWS_DEFAULT;
	u->backoff_s = UPLOAD_BACKOFF_MIN_S;
	u->next_seq = 1;
	u->st.server_ok = 1;
	upload_make_id_prefix(u);
	pthread_mutex_init(&u->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&u->wake, &ca);
	pthread_cond_init(&u->done, &ca);
	pthread_condattr_destroy(&ca);
	if (u->spool_dir) {
		ret = upload_spool_load(u);
		if (ret)
			goto fail;
	}
	ret = -pthread_create(&u->thread, NULL, upload_sender, u);
	if (ret) {
		log_error("cannot start the sender thread: %s", strerror(-ret));
		goto fail;
	}
	u->thread_started = 1;
	pthread_setname_np(u->thread, "ember-upload");
	*out = u;
	return 0;
fail:
	upload_close(u);
	return ret;
}

/* Encodes, compresses and queues one batch of 1..batch_rows rows. */
static int upload_submit_batch(struct uploader *u, const struct profile_row *rows, size_t n)
{
	struct strbuf json = STRBUF_INIT, z = STRBUF_INIT;
	struct wire_batch_hdr hdr = {NULL, u->host, u->agent, u->host_ip};
	struct upload_batch *b;
	int ret;

	b = calloc(1, sizeof(*b));
	if (!b)
		return -ENOMEM;
	pthread_mutex_lock(&u->mu);
	b->seq = u->next_seq++;
	pthread_mutex_unlock(&u->mu);
	snprintf(b->id, sizeof(b->id), "%s%06" PRIu64, u->id_prefix, b->seq);
	b->rows = n;
	hdr.batch_id = b->id;
	ret = wire_encode(&hdr, rows, n, &json);
	if (!ret)
		ret = wire_compress(json.buf, json.len, &z);
	sb_free(&json);
	if (ret) {
		sb_free(&z);
		free(b);
		return ret;
	}
	b->data = sb_detach(&z, &b->len);
	pthread_mutex_lock(&u->mu);
	upload_insert_locked(u, b);
	u->st.queued_batches++;
	u->st.queued_bytes += b->len;
	upload_spill_locked(u);
	pthread_cond_signal(&u->wake);
	pthread_mutex_unlock(&u->mu);
	return 0;
}

int upload_submit(struct uploader *u, const struct profile_row *rows, size_t n)
{
	for (size_t off = 0; off < n; off += u->batch_rows) {
		size_t k = n - off < u->batch_rows ? n - off : u->batch_rows;
		int ret = upload_submit_batch(u, rows + off, k);

		if (ret)
			return ret;
	}
	return 0;
}

int upload_flush(struct uploader *u, double timeout_s)
{
	double deadline = upload_now() + timeout_s;
	int ret;

	pthread_mutex_lock(&u->mu);
	while (u->head && upload_now() < deadline)
		upload_wait_until(&u->done, &u->mu, deadline);
	ret = u->head ? -ETIMEDOUT : 0;
	pthread_mutex_unlock(&u->mu);
	return ret;
}

void upload_get_stats(struct uploader *u, struct upload_stats *st)
{
	pthread_mutex_lock(&u->mu);
	*st = u->st;
	pthread_mutex_unlock(&u->mu);
}

void upload_close(struct uploader *u)
{
	uint64_t dropped = 0, rows = 0;

	if (!u)
		return;
	if (u->thread_started) {
		upload_flush(u, u->close_grace_s);
		pthread_mutex_lock(&u->mu);
		u->stop = 1;
		atomic_store(&u->abort_request, 1);
		pthread_cond_signal(&u->wake);
		pthread_mutex_unlock(&u->mu);
		pthread_join(u->thread, NULL);
	}
	/* What is still in memory goes to the spool if there is one; spooled batches stay. */
	pthread_mutex_lock(&u->mu);
	if (u->spool_fd >= 0 && u->st.queued_batches) {
		size_t keep = u->mem_bytes;

		u->mem_bytes = 0;
		upload_spill_locked(u);
		u->mem_bytes = keep;
		if (u->st.spooled_batches)
			log_info("%" PRIu64 " undelivered batches left in spool %s",
				 u->st.spooled_batches, u->spool_dir);
	}
	while (u->head) {
		struct upload_batch *b = u->head;

		if (!b->spooled) {
			dropped++;
			rows += b->rows;
		}
		b->spooled = 0; /* leaves the file for the next run */
		if (b->data) {
			u->st.queued_bytes -= b->len;
			u->st.queued_batches--;
		}
		upload_unlink_locked(u, b);
		free(b->data);
		free(b);
	}
	pthread_mutex_unlock(&u->mu);
	if (dropped)
		log_warn("closing: dropped %" PRIu64 " undelivered batches (%" PRIu64 " rows)",
			 dropped, rows);
	if (u->spool_fd >= 0)
		close(u->spool_fd);
	pthread_cond_destroy(&u->wake);
	pthread_cond_destroy(&u->done);
	pthread_mutex_destroy(&u->mu);
	free(u->url);
	free(u->host);
	free(u->agent);
	free(u->host_ip);
	free(u->spool_dir);
	free(u);
}
