/* apicall: one API call on the daemon's HTTP client, shared by the jobs' backend (backend.c)
 * and the exports' (backend_export.c): the only place the Authorization header is made. */
#include "batchd.h"

#include "batchd/util.h"

#include <stdlib.h>
#include <string.h>

http_transfer *batchd_api_start(batchd *d, const char *method, const char *path, const char *body,
                                bool fresh_connect, http_done_fn done, void *ud)
{
    char *url = xasprintf("%s%s", d->api_url, path);
    char *auth = xasprintf("Authorization: Token %s", d->token);
    const char *headers[4] = {auth, "Accept: application/json", NULL, NULL};
    if (body)
        headers[2] = "Content-Type: application/json";
    http_request req = {.method = method,
                        .url = url,
                        .headers = headers,
                        .body = body,
                        .body_len = body ? strlen(body) : 0,
                        .rate_limited = true,
                        .fresh_connect = fresh_connect};
    http_transfer *t = http_start(d->http, &req, done, NULL, ud);
    secret_free(&auth);
    free(url);
    return t;
}
