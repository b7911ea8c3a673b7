/*
 * web — see web.h. The Makefile turns web/index.html into build/web_index.h (a byte array).
 */
#include "server/web.h"

#include "web_index.h"

void web_serve_index(void *ctx, struct http_exchange *x)
{
	x->status = 200;
	x->content_type = "text/html; charset=utf-8";
	sb_append(&x->out, web_index_html, sizeof(web_index_html));
}
