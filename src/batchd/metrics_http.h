/* metrics_http: the GET /metrics endpoint of [metrics] listen, on the daemon's loop. */
#ifndef BATCHD_METRICS_HTTP_H
#define BATCHD_METRICS_HTTP_H

#include <uv.h>

typedef struct metrics_http metrics_http;

/* The exposition text, malloc'd; called on the loop thread for each scrape. */
typedef char *(*metrics_http_render_fn)(void *ud);

/* Listens on listen (ADDR:PORT, as config_parse_listen reads it). Returns 0, or -1 with *err
 * (malloc'd) saying why (address in use, not an address of this host, ...). */
int metrics_http_start(uv_loop_t *loop, const char *listen, metrics_http_render_fn render, void *ud,
                       metrics_http **out, char **err);
/* Stops listening and closes every connection; the memory goes once libuv has closed the
 * handles. NULL: no-op. */
void metrics_http_stop(metrics_http *h);

#endif
