/* hold: the pause and the token hold. No claims and no new requests while either is on: an
 * operator's Pause, or a hold after the API rejected the token (HTTP 401). ctl.c (Pause,
 * Resume), reload.c (a different token lifts the hold) and the runner
 * (its token_rejected hook, on a 401) drive them. */
#include "batchd.h"

#include "batchd/log.h"
#include "batchd/util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

const char *batchd_pause_reason(const batchd *d)
{
    if (d->token_hold)
        return "api_token_rejected";
    return d->operator_paused ? "operator" : NULL;
}

void batchd_set_paused(batchd *d, bool operator_paused, bool token_hold)
{
    d->operator_paused = operator_paused;
    d->token_hold = token_hold;
    d->paused = operator_paused || token_hold;
    /* The runner keeps the waits of a pause out of the timeouts and resumes after it. */
    runner_set_paused(d->runner, d->paused);
}

void batchd_token_rejected(batchd *d, unsigned gen)
{
    /* Sent with a token replaced since: the job just sends again with the new one. */
    if (gen != d->token_gen)
        return;
    if (d->token_hold)
        return; /* requests in flight answered 401 too: nothing more to say */
    log_error("the API rejected the token (HTTP 401): batchd is on hold, no job has failed and "
              "none takes a step until it has a working token; put the right token in %s, then "
              "run systemctl reload batchd (or batchctl reload), or batchctl resume",
              d->cfg->c.api.token_file ? d->cfg->c.api.token_file : "the token source");
    batchd_set_paused(d, d->operator_paused, true);
}

void batchd_reread_token(batchd *d)
{
    char *token = NULL;
    const char *source = NULL;
    diag dg = {0};
    int rc = config_load_token(&d->cfg->c, &token, &source, &dg);
    if (rc < 0) {
        /* Not fatal for a resume: the token in use stays. */
        if (!(rc == -ENOENT && d->token_from_env))
            for (size_t i = 0; i < dg.count; i++)
                log_warn("resume: cannot read the API token, keeping the one in use: %s",
                         dg.lines[i]);
        diag_free(&dg);
        return;
    }
    diag_free(&dg);
    if (!batchd_token_replace(d, token))
        return;
    log_notice("resume: a different API token was read from %s", source);
}
