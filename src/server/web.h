/*
 * web — the flame-graph page (web/index.html), compiled into the binary so the server needs no
 * files at run time. GET / serves it.
 */
#ifndef EMBER_SERVER_WEB_H
#define EMBER_SERVER_WEB_H

#include "server/http.h"

void web_serve_index(void *ctx, struct http_exchange *x);

#endif
