/*
 * httpc — see httpc.h. A fresh easy handle per request keeps calls independent across threads.
 * A keep_alive request instead uses its thread's own handle (a thread-specific key, nothing
 * shared), so the agent's uploader keeps one connection to the server rather than connecting
 * for every batch: a new handle and TCP connection per second were a third of its thread's CPU.
 * Failures are named from libcurl's error buffer plus the connect's errno (CURLINFO_OS_ERRNO):
 * "Couldn't connect to server" alone does not tell a stopped server from a firewall.
 */
#include "common/httpc.h"

#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static pthread_once_t httpc_once = PTHREAD_ONCE_INIT;
static pthread_key_t httpc_key; /* the thread's keep_alive handle */

static void httpc_key_free(void *h)
{
	curl_easy_cleanup(h);
}

static void httpc_global_init(void)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
	pthread_key_create(&httpc_key, httpc_key_free);
}

/* The handle for a request: the thread's kept one (reset, its connection kept) or a new one. */
static CURL *httpc_handle(const struct httpc_req *req)
{
	CURL *h;

	if (!req->keep_alive || req->on_send)
		return curl_easy_init();
	h = pthread_getspecific(httpc_key);
	if (h) {
		curl_easy_reset(h);
		return h;
	}
	h = curl_easy_init();
	if (h && pthread_setspecific(httpc_key, h) != 0) {
		curl_easy_cleanup(h);
		return NULL;
	}
	return h;
}

struct httpc_ctx {
	const struct httpc_req *req;
	struct httpc_resp *resp;
	size_t max;
	int overflow;
};

static size_t httpc_write(char *data, size_t size, size_t nmemb, void *arg)
{
	struct httpc_ctx *c = arg;
	size_t n = size * nmemb;

	if (c->req->on_data)
		return c->req->on_data(c->req->arg, data, n) ? 0 : n;
	if (c->resp->body.len + n > c->max) {
		c->overflow = 1;
		return 0;
	}
	sb_append(&c->resp->body, data, n);
	return n;
}

static size_t httpc_header(char *data, size_t size, size_t nmemb, void *arg)
{
	struct httpc_ctx *c = arg;
	size_t n = size * nmemb;

	if (n > 12 && strncasecmp(data, "Retry-After:", 12) == 0)
		c->resp->retry_after = strtol(data + 12, NULL, 10);
	return n;
}

static size_t httpc_read(char *buf, size_t size, size_t nmemb, void *arg)
{
	struct httpc_ctx *c = arg;
	long n = c->req->on_send(c->req->arg, buf, size * nmemb);

	return n < 0 ? CURL_READFUNC_ABORT : (size_t)n;
}

static int httpc_progress(void *arg, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
	struct httpc_ctx *c = arg;

	return c->req->should_abort && c->req->should_abort(c->req->arg);
}

int httpc_do(const struct httpc_req *req, struct httpc_resp *resp, char *err, size_t errlen)
{
	struct httpc_ctx ctx = {req, resp, req->max_response ? req->max_response : 64u << 20, 0};
	struct curl_slist *hdrs = NULL;
	char cerr[CURL_ERROR_SIZE] = "";
	long oserr = 0;
	CURL *h;
	CURLcode rc;
	int ret = 0;

	pthread_once(&httpc_once, httpc_global_init);
	resp->status = 0;
	resp->retry_after = -1;
	resp->os_errno = 0;
	sb_reset(&resp->body);
	h = httpc_handle(req);
	if (!h) {
		snprintf(err, errlen, "curl_easy_init failed");
		return -ENOMEM;
	}
	for (const char *const *p = req->headers; p && *p; p++)
		hdrs = curl_slist_append(hdrs, *p);
	hdrs = curl_slist_append(hdrs, "Expect:");
	curl_easy_setopt(h, CURLOPT_URL, req->url);
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, cerr);
	curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, req->timeout_ms > 0 ? req->timeout_ms : 30000L);
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, httpc_write);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, &ctx);
	curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, httpc_header);
	curl_easy_setopt(h, CURLOPT_HEADERDATA, &ctx);
	if (req->should_abort) {
		curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, httpc_progress);
		curl_easy_setopt(h, CURLOPT_XFERINFODATA, &ctx);
		curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
	}
	if (req->on_send) {
		curl_easy_setopt(h, CURLOPT_POST, 1L);
		curl_easy_setopt(h, CURLOPT_READFUNCTION, httpc_read);
		curl_easy_setopt(h, CURLOPT_READDATA, &ctx);
		curl_easy_setopt(h, CURLOPT_UPLOAD_BUFFERSIZE, (long)HTTPC_SEND_BUFFER);
	} else if (req->body) {
		curl_easy_setopt(h, CURLOPT_POSTFIELDS, req->body);
		curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
	}
	if (req->method)
		curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, req->method);
	rc = curl_easy_perform(h);
	if (rc != CURLE_OK) {
		if (ctx.overflow) {
			snprintf(err, errlen, "%s: response larger than %zu bytes", req->url, ctx.max);
			ret = -EFBIG;
		} else {
			/* libcurl's own text says "Couldn't connect to server" for every cause */
			if (rc == CURLE_COULDNT_CONNECT &&
			    curl_easy_getinfo(h, CURLINFO_OS_ERRNO, &oserr) == CURLE_OK && oserr > 0)
				resp->os_errno = (int)oserr;
			snprintf(err, errlen, "%s: %s%s%s%s", req->url,
				 cerr[0] ? cerr : curl_easy_strerror(rc), oserr > 0 ? " (" : "",
				 oserr > 0 ? strerror((int)oserr) : "", oserr > 0 ? ")" : "");
			/* on_send's -1 and should_abort are both CURLE_ABORTED_BY_CALLBACK */
			ret = rc == CURLE_OPERATION_TIMEDOUT ? -ETIMEDOUT
			      : rc == CURLE_ABORTED_BY_CALLBACK || rc == CURLE_WRITE_ERROR ? -ECANCELED
											 : -ECONNREFUSED;
		}
	} else {
		curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &resp->status);
	}
	curl_slist_free_all(hdrs);
	if (h != pthread_getspecific(httpc_key))
		curl_easy_cleanup(h);
	return ret;
}
