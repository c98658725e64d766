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

bool batchd_token_replace(batchd *d, char *token)
{
    bool changed = !d->token || strcmp(d->token, token) != 0;
    if (!changed) {
        secret_free(&token);
        return false;
    }
    /* The oldest kept goes; the one in use joins the kept ones. */
    secret_free(&d->token_before[BATCHD_TOKENS_KEPT - 1]);
    memmove(&d->token_before[1], &d->token_before[0],
            (BATCHD_TOKENS_KEPT - 1) * sizeof d->token_before[0]);
    d->token_before[0] = d->token;
    d->token = token;
    d->token_gen++;
    return true;
}

const char *batchd_token_of(const batchd *d, unsigned gen)
{
    unsigned back = d->token_gen - gen; /* wraps like the counter */
    if (back == 0 || back > BATCHD_TOKENS_KEPT || !d->token_before[back - 1])
        return d->token;
    return d->token_before[back - 1];
}

void batchd_tokens_free(batchd *d)
{
    secret_free(&d->token);
    for (size_t i = 0; i < BATCHD_TOKENS_KEPT; i++)
        secret_free(&d->token_before[i]);
}
