/*
 * gen_batches — the load generator of bench/query.sh: builds a realistic profile data set in
 * memory and sends it through the real ingest endpoint of a running `ember server`, timing only
 * the sending.
 *
 * The data set: --services programs (real process names), spread over --hosts hosts, each with
 * 1–4 processes and --stacks/--services distinct folded stacks of about 30 frames: a [p]/[t]
 * root, start-up frames, a call-tree walk through the program's own functions (shared prefixes,
 * as real flame graphs have), sometimes a libc leaf or a kernel tail behind a system call.
 * --rows rows over --seconds one-second windows: every window, every service sends its share of
 * rows, stacks drawn from a Zipf distribution (s = 1.1) without repeats inside one process and
 * window, values in multiples of 10101 µs (99 Hz), as the agent would.
 *
 * Sending: each host's rows in time order become batches of --batch-rows rows (wire_encode,
 * wire_compress: the agent's own encoder); all batches are encoded before the clock starts, then
 * --clients threads POST them (round robin) and the wall time from the first request to the last
 * answer gives rows/s end to end: HTTP, zstd, JSON decoding, validation and the SQLite insert.
 *
 * Output: key=value lines on stdout (rows, batches, bytes, encode_seconds, send_seconds,
 * rows_per_second, first_service, time_start, time_end), for the script to parse.
 * Exit status 0 only if every batch was answered 200 and stored (not as a duplicate).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/httpc.h"
#include "common/row.h"
#include "common/wire.h"

#define GB_MAX_FRAMES 64        /* frames of one generated stack */
#define GB_MAX_CLIENTS 16
#define GB_MAX_PIDS 4           /* processes per service */
#define GB_ZIPF_S 1.1
#define GB_SEND_TIMEOUT_MS 300000

struct gb_opts {
	const char *url;
	const char *out_dir; /* write the batches there (batch-NNNN.json.zst) instead of sending */
	long rows, stacks, services, hosts, seconds, batch_rows, clients;
	int64_t start;
	uint64_t seed;
};

struct gb_service {
	char name[32];
	int host;
	int n_pids;
	int64_t pids[GB_MAX_PIDS];
	int64_t start_ms[GB_MAX_PIDS];
	char **stacks; /* n_stacks folded stacks, owned */
	long n_stacks;
	double *cdf;   /* Zipf cumulative weights over the stacks */
	uint32_t *seen; /* stamp per stack: drawn already in this (window, process) */
};

struct gb_batch {
	struct strbuf body; /* compressed */
	long rows;
};

struct gb_client {
	const struct gb_opts *o;
	struct gb_batch *batches;
	long n_batches, first, step;
	int failed;
};

static const char *const gb_names[] = {
	"nginx", "postgres", "redis-server", "java", "python3", "node", "envoy", "etcd",
	"kubelet", "containerd", "mysqld", "haproxy", "memcached", "php-fpm", "ruby", "dotnet",
	"grafana", "prometheus", "clickhouse-serv", "kafka",
};
static const char *const gb_modules[] = {
	"http", "db", "cache", "json", "grpc", "sched", "io", "tls", "log", "auth", "pool",
	"queue", "index", "txn", "wal", "net",
};
static const char *const gb_verbs[] = {
	"handle", "process", "read", "write", "parse", "encode", "decode", "dispatch", "lookup",
	"flush", "append", "compact", "resolve", "serialize", "poll", "commit",
};
static const char *const gb_nouns[] = {
	"request", "buffer", "conn", "header", "row", "batch", "event", "frame", "page", "key",
	"segment", "message", "session", "record", "chunk", "response",
};
static const char *const gb_classes[] = {
	"Server", "Worker", "Executor", "Codec", "Table", "Channel", "Parser", "Allocator",
};
static const char *const gb_libc[] = {
	"[l] memcpy", "[l] malloc", "[l] free", "[l] __memmove_avx_unaligned_erms",
	"[l] pthread_mutex_lock", "[l] __strlen_avx2", "[l] SSL_read", "[l] deflate",
};
/* Kernel tails, outermost first, as the agent writes them after the user frames. */
static const char *const gb_kernel[] = {
	"[k] entry_SYSCALL_64_after_hwframe;[k] do_syscall_64;[k] __x64_sys_epoll_wait;"
	"[k] do_epoll_wait;[k] schedule_hrtimeout_range_clock;[k] schedule;[k] __schedule",
	"[k] entry_SYSCALL_64_after_hwframe;[k] do_syscall_64;[k] __x64_sys_read;[k] ksys_read;"
	"[k] vfs_read;[k] filemap_read;[k] copy_page_to_iter",
	"[k] entry_SYSCALL_64_after_hwframe;[k] do_syscall_64;[k] __x64_sys_sendto;"
	"[k] __sys_sendto;[k] tcp_sendmsg;[k] tcp_sendmsg_locked;[k] tcp_push",
	"[k] entry_SYSCALL_64_after_hwframe;[k] do_syscall_64;[k] __x64_sys_futex;[k] do_futex;"
	"[k] futex_wait",
	"[k] asm_exc_page_fault;[k] exc_page_fault;[k] do_user_addr_fault;[k] handle_mm_fault;"
	"[k] __handle_mm_fault;[k] do_anonymous_page;[k] clear_page_erms",
	"[k] entry_SYSCALL_64_after_hwframe;[k] do_syscall_64;[k] __x64_sys_write;"
	"[k] ksys_write;[k] vfs_write;[k] ext4_buffered_write_iter;[k] generic_perform_write",
};
#define GB_N(a) (sizeof(a) / sizeof((a)[0]))

/* splitmix64: small, fast, and the same sequence on every machine. */
static uint64_t gb_rand(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static double gb_unit(uint64_t *s)
{
	return (double)(gb_rand(s) >> 11) / (double)(1ull << 53);
}

static uint64_t gb_mix(uint64_t a, uint64_t b)
{
	uint64_t s = a * 0x100000001b3ull ^ b;

	return gb_rand(&s);
}

/* The label of the function reached by path hash h at call depth level in service svc. */
static void gb_label(struct strbuf *sb, const struct gb_service *svc, int cpp, uint64_t h)
{
	const char *mod = gb_modules[h % GB_N(gb_modules)];
	const char *verb = gb_verbs[(h >> 8) % GB_N(gb_verbs)];
	const char *noun = gb_nouns[(h >> 16) % GB_N(gb_nouns)];

	if (cpp)
		sb_printf(sb, "%s::%s%s::%s_%s(%s const&)", svc->name[0] == 'j' ? "org" : "app",
			  gb_classes[(h >> 24) % GB_N(gb_classes)], mod, verb, noun, noun);
	else
		sb_printf(sb, "%s_%s_%s", mod, verb, noun);
}

/* A stack of about 30 frames; path is the sequence of branch choices of the call-tree walk. */
static char *gb_stack(const struct gb_service *svc, int svc_idx, uint64_t *rng)
{
	struct strbuf sb = STRBUF_INIT;
	int cpp = svc_idx % 3 == 1; /* a third of the programs are C++ */
	int thread = (int)(gb_rand(rng) % 3);
	int depth = 19 + (int)(gb_rand(rng) % 9);
	uint64_t h = gb_mix((uint64_t)svc_idx, (uint64_t)thread);
	uint64_t tail = gb_rand(rng) % 10;

	if (thread == 0)
		sb_printf(&sb, "[p] %s;_start;[l] __libc_start_main;main", svc->name);
	else
		sb_printf(&sb, "[t] %.11s-w%d;[l] clone3;[l] start_thread;worker_main", svc->name,
			  thread);
	for (int k = 0; k < depth; k++) {
		/* Few branches near the root, more deeper down: shared prefixes, bushy leaves. */
		uint64_t fan = k < 4 ? 2 : k < 10 ? 3 : 4;

		h = gb_mix(h, gb_rand(rng) % fan);
		sb_putc(&sb, ';');
		gb_label(&sb, svc, cpp, h);
	}
	if (tail < 4) {
		sb_putc(&sb, ';');
		sb_puts(&sb, gb_kernel[gb_rand(rng) % GB_N(gb_kernel)]);
	} else if (tail < 6) {
		sb_putc(&sb, ';');
		sb_puts(&sb, gb_libc[gb_rand(rng) % GB_N(gb_libc)]);
	}
	return sb_detach(&sb, NULL);
}

static int gb_cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* n distinct stacks for one service; 0 or -ENOMEM/-E2BIG. */
static int gb_service_stacks(struct gb_service *svc, int svc_idx, long n, uint64_t *rng)
{
	long have = 0, tries = 0;
	double sum = 0;

	svc->stacks = calloc((size_t)n, sizeof(char *));
	svc->cdf = calloc((size_t)n, sizeof(double));
	svc->seen = calloc((size_t)n, sizeof(uint32_t));
	if (!svc->stacks || !svc->cdf || !svc->seen)
		return -ENOMEM;
	while (have < n) {
		long w = 0;

		if (++tries > 100 * n)
			return -E2BIG;
		/* Generate the missing ones, then drop duplicates (sort + unique). */
		while (have < n)
			svc->stacks[have++] = gb_stack(svc, svc_idx, rng);
		qsort(svc->stacks, (size_t)have, sizeof(char *), gb_cmp_str);
		for (long r = 0; r < have; r++) {
			if (w && strcmp(svc->stacks[w - 1], svc->stacks[r]) == 0)
				free(svc->stacks[r]);
			else
				svc->stacks[w++] = svc->stacks[r];
		}
		have = w;
	}
	/* Zipf rank order = a shuffled order, so the hot stacks are not the alphabetical first. */
	for (long r = n - 1; r > 0; r--) {
		long j = (long)(gb_rand(rng) % (uint64_t)(r + 1));
		char *t = svc->stacks[r];

		svc->stacks[r] = svc->stacks[j];
		svc->stacks[j] = t;
	}
	for (long r = 0; r < n; r++) {
		sum += 1.0 / pow((double)(r + 1), GB_ZIPF_S);
		svc->cdf[r] = sum;
	}
	for (long r = 0; r < n; r++)
		svc->cdf[r] /= sum;
	svc->n_stacks = n;
	return 0;
}

static long gb_zipf(const struct gb_service *svc, uint64_t *rng)
{
	double u = gb_unit(rng);
	long lo = 0, hi = svc->n_stacks - 1;

	while (lo < hi) {
		long mid = (lo + hi) / 2;

		if (svc->cdf[mid] < u)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static int gb_services_init(const struct gb_opts *o, struct gb_service *svcs, uint64_t *rng)
{
	for (long s = 0; s < o->services; s++) {
		struct gb_service *svc = &svcs[s];
		long n = o->stacks / o->services + (s < o->stacks % o->services);
		int rc;

		if (s < (long)GB_N(gb_names))
			snprintf(svc->name, sizeof(svc->name), "%s", gb_names[s]);
		else
			snprintf(svc->name, sizeof(svc->name), "%.10s-%ld", /* services > 20 */
				 gb_names[s % GB_N(gb_names)], s);
		svc->host = (int)(s % o->hosts);
		svc->n_pids = 1 + (int)(gb_rand(rng) % GB_MAX_PIDS);
		for (int p = 0; p < svc->n_pids; p++) {
			svc->pids[p] = 1000 + s * 97 + p * 13;
			svc->start_ms[p] = (o->start - 86400 + s * 60 + p) * 1000 + 123;
		}
		rc = gb_service_stacks(svc, (int)s, n, rng);
		if (rc < 0) {
			fprintf(stderr, "gen_batches: cannot make %ld distinct stacks for %s: %s\n", n,
				svc->name, strerror(-rc));
			return rc;
		}
	}
	return 0;
}

static void gb_services_free(struct gb_service *svcs, long n)
{
	for (long s = 0; s < n; s++) {
		for (long i = 0; i < svcs[s].n_stacks; i++)
			free(svcs[s].stacks[i]);
		free(svcs[s].stacks);
		free(svcs[s].cdf);
		free(svcs[s].seen);
	}
}

static double gb_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Encodes and compresses rows[0..n) as the next batch of host h. */
static int gb_flush(struct gb_batch **batches, long *n_batches, long *cap, int h, long seq,
		    const struct profile_row *rows, long n, size_t *plain_bytes)
{
	struct strbuf json = STRBUF_INIT;
	char id[64], host[32], agent[64], ip[32];
	struct wire_batch_hdr hdr = {.batch_id = id, .host = host, .agent = agent, .host_ip = ip};
	struct gb_batch *b;
	int rc;

	snprintf(id, sizeof(id), "bench-node%d-%06ld", h, seq);
	snprintf(host, sizeof(host), "node%d", h);
	snprintf(agent, sizeof(agent), "ember-agent@node%d", h);
	snprintf(ip, sizeof(ip), "10.0.0.%d", 10 + h);
	if (*n_batches == *cap) {
		long c = *cap ? *cap * 2 : 16;
		void *p = realloc(*batches, (size_t)c * sizeof(**batches));

		if (!p)
			return -ENOMEM;
		*batches = p;
		*cap = c;
	}
	b = &(*batches)[*n_batches];
	memset(b, 0, sizeof(*b));
	rc = wire_encode(&hdr, rows, (size_t)n, &json);
	if (rc == 0)
		rc = wire_compress(json.buf, json.len, &b->body);
	*plain_bytes += json.len;
	sb_free(&json);
	if (rc < 0) {
		sb_free(&b->body);
		return rc;
	}
	b->rows = n;
	(*n_batches)++;
	return 0;
}

/* Every host's rows, in time order, cut into batches. */
static int gb_build(const struct gb_opts *o, struct gb_service *svcs, uint64_t *rng,
		    struct gb_batch **batches, long *n_batches, size_t *plain_bytes)
{
	long per_window = o->rows / o->seconds, extra_windows = o->rows % o->seconds;
	struct profile_row *rows = calloc((size_t)o->batch_rows, sizeof(*rows));
	long cap = 0, seq = 0;
	uint32_t base = 0;
	int rc = 0;

	if (!rows)
		return -ENOMEM;
	*n_batches = 0;
	for (int h = 0; h < o->hosts && rc == 0; h++) {
		long n = 0;

		for (long t = 0; t < o->seconds && rc == 0; t++) {
			long in_window = per_window + (t < extra_windows);

			for (long s = 0; s < o->services && rc == 0; s++) {
				struct gb_service *svc = &svcs[s];
				long k = in_window / o->services + (s < in_window % o->services);

				if (svc->host != h)
					continue;
				/* One stamp per (window, process): no stack twice in it. */
				base += GB_MAX_PIDS;
				for (long i = 0; i < k; i++) {
					struct profile_row *r = &rows[n];
					int p = (int)(i % svc->n_pids);
					uint32_t stamp = base + (uint32_t)p;
					long st = gb_zipf(svc, rng);

					for (int tries = 0; svc->seen[st] == stamp && tries < 1000; tries++)
						st = gb_zipf(svc, rng);
					svc->seen[st] = stamp;
					memset(r, 0, sizeof(*r));
					r->time = o->start + t;
					r->app_service = svc->name;
					r->profile_location_str = svc->stacks[st];
					r->profile_value = 10101 * (1 + (int64_t)(gb_rand(rng) % 8));
					r->profile_event_type = "on-cpu";
					r->profile_language_type = "eBPF";
					r->process_id = svc->pids[p];
					r->process_start_time = svc->start_ms[p];
					if (++n == o->batch_rows) {
						rc = gb_flush(batches, n_batches, &cap, h, seq++, rows, n,
							      plain_bytes);
						n = 0;
						if (rc)
							break;
					}
				}
			}
		}
		if (n && rc == 0)
			rc = gb_flush(batches, n_batches, &cap, h, seq++, rows, n, plain_bytes);
	}
	free(rows);
	return rc;
}

static void *gb_client_run(void *arg)
{
	struct gb_client *c = arg;
	static const char *const headers[] = {"Content-Type: application/json",
					      "Content-Encoding: zstd", NULL};
	char url[512], err[256];

	snprintf(url, sizeof(url), "%s/v1/profile/ingest", c->o->url);
	for (long i = c->first; i < c->n_batches && !c->failed; i += c->step) {
		struct httpc_req req = {.url = url, .body = c->batches[i].body.buf,
					.body_len = c->batches[i].body.len, .headers = headers,
					.timeout_ms = GB_SEND_TIMEOUT_MS};
		struct httpc_resp resp = {.body = STRBUF_INIT};
		int rc = httpc_do(&req, &resp, err, sizeof(err));

		if (rc < 0 || resp.status != 200 || !resp.body.buf ||
		    !strstr(resp.body.buf, "\"duplicate\":false")) {
			fprintf(stderr, "gen_batches: batch %ld: %s (HTTP %ld) %.300s\n", i,
				rc < 0 ? err : "refused", resp.status,
				resp.body.buf ? resp.body.buf : "");
			c->failed = 1;
		}
		sb_free(&resp.body);
	}
	return NULL;
}

static int gb_write(const char *dir, const struct gb_batch *batches, long n)
{
	char path[4096];

	for (long i = 0; i < n; i++) {
		FILE *f;
		int bad;

		snprintf(path, sizeof(path), "%s/batch-%04ld.json.zst", dir, i);
		f = fopen(path, "wb");
		if (!f) {
			fprintf(stderr, "gen_batches: %s: %s\n", path, strerror(errno));
			return -errno;
		}
		bad = fwrite(batches[i].body.buf, 1, batches[i].body.len, f) != batches[i].body.len;
		if (fclose(f) != 0 || bad) {
			fprintf(stderr, "gen_batches: %s: write failed\n", path);
			return -EIO;
		}
	}
	return 0;
}

static void gb_usage(FILE *f)
{
	fputs("usage: gen_batches {--url http://HOST:PORT | --out DIR} [--rows N] [--stacks N] [--services N]\n"
	      "       [--hosts N] [--seconds N] [--start UNIX] [--batch-rows N] [--clients N]\n"
	      "       [--seed N]\n",
	      f);
}

static int gb_parse(int argc, char **argv, struct gb_opts *o)
{
	static const struct option opts[] = {
		{"url", required_argument, NULL, 'u'},      {"rows", required_argument, NULL, 'r'},
		{"stacks", required_argument, NULL, 'k'},   {"services", required_argument, NULL, 's'},
		{"hosts", required_argument, NULL, 'H'},    {"seconds", required_argument, NULL, 'd'},
		{"start", required_argument, NULL, 't'},    {"batch-rows", required_argument, NULL, 'b'},
		{"clients", required_argument, NULL, 'c'},  {"seed", required_argument, NULL, 'S'},
		{"out", required_argument, NULL, 'o'},
		{NULL, 0, NULL, 0},
	};
	int opt;

	while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		char *end;
		long long v;

		if (opt == 'u' || opt == 'o') {
			*(opt == 'u' ? &o->url : &o->out_dir) = optarg;
			continue;
		}
		if (opt == '?')
			return -EINVAL;
		v = strtoll(optarg, &end, 10);
		if (*end || end == optarg || v < 1) {
			fprintf(stderr, "gen_batches: bad number '%s'\n", optarg);
			return -EINVAL;
		}
		switch (opt) {
		case 'r': o->rows = (long)v; break;
		case 'k': o->stacks = (long)v; break;
		case 's': o->services = (long)v; break;
		case 'H': o->hosts = (long)v; break;
		case 'd': o->seconds = (long)v; break;
		case 't': o->start = v; break;
		case 'b': o->batch_rows = (long)v; break;
		case 'c': o->clients = (long)v; break;
		case 'S': o->seed = (uint64_t)v; break;
		}
	}
	if (!o->url == !o->out_dir || optind != argc || o->clients > GB_MAX_CLIENTS || o->hosts > o->services ||
	    o->stacks < o->services) {
		gb_usage(stderr);
		return -EINVAL;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct gb_opts o = {.rows = 1000000, .stacks = 5000, .services = 20, .hosts = 4,
			    .seconds = 600, .start = 1764064800, .batch_rows = 100000,
			    .clients = 2, .seed = 1};
	struct gb_client clients[GB_MAX_CLIENTS];
	pthread_t threads[GB_MAX_CLIENTS];
	struct gb_service *svcs;
	struct gb_batch *batches = NULL;
	long n_batches = 0;
	size_t plain = 0, packed = 0;
	double t0, t1, t2;
	int rc, failed = 0;

	if (gb_parse(argc, argv, &o) < 0)
		return 2;
	svcs = calloc((size_t)o.services, sizeof(*svcs));
	if (!svcs)
		return 1;
	t0 = gb_now();
	rc = gb_services_init(&o, svcs, &o.seed);
	if (rc == 0)
		rc = gb_build(&o, svcs, &o.seed, &batches, &n_batches, &plain);
	if (rc < 0) {
		fprintf(stderr, "gen_batches: cannot build the batches: %s\n", strerror(-rc));
		return 1;
	}
	for (long i = 0; i < n_batches; i++)
		packed += batches[i].body.len;
	t1 = gb_now();
	if (o.out_dir)
		failed = gb_write(o.out_dir, batches, n_batches) < 0;
	for (long c = 0; o.url && c < o.clients; c++) {
		clients[c] = (struct gb_client){.o = &o, .batches = batches, .n_batches = n_batches,
						.first = c, .step = o.clients};
		if (pthread_create(&threads[c], NULL, gb_client_run, &clients[c]) != 0) {
			fprintf(stderr, "gen_batches: cannot start client %ld\n", c);
			return 1;
		}
	}
	for (long c = 0; o.url && c < o.clients; c++) {
		pthread_join(threads[c], NULL);
		failed |= clients[c].failed;
	}
	t2 = gb_now();
	printf("rows=%ld\nstacks=%ld\nservices=%ld\nhosts=%ld\nbatches=%ld\nclients=%ld\n"
	       "json_bytes=%zu\nzstd_bytes=%zu\nencode_seconds=%.3f\nsend_seconds=%.3f\n"
	       "rows_per_second=%.0f\nfirst_service=%s\ntime_start=%" PRId64 "\ntime_end=%" PRId64
	       "\n",
	       o.rows, o.stacks, o.services, o.hosts, n_batches, o.clients, plain, packed, t1 - t0,
	       t2 - t1, (double)o.rows / (t2 - t1), svcs[0].name, o.start,
	       o.start + o.seconds - 1);
	for (long i = 0; i < n_batches; i++)
		sb_free(&batches[i].body);
	free(batches);
	gb_services_free(svcs, o.services);
	free(svcs);
	return failed ? 1 : 0;
}
