/* export: the machine of one export. See include/batchd/export.h.
 *
 * The answers of POST .../export come in two forms (task-builder-api-2 section 4.2): 202
 * {status: generating, export_id} (poll it), or 200 {status: complete, url, expires_at}
 * (download at once). A GET of the status may say generating, complete with a fresh URL,
 * failed (generation failed, or the archive was deleted later), or 404 (the job is gone).
 * The URL lives one hour and is refreshed by polling again; it is a bearer capability, so it
 * is kept in memory only and never leaves this struct but for the download itself. */
#include "batchd/export.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batchd/apitext.h"
#include "batchd/backoff.h"
#include "batchd/util.h"

static const char *const state_names[EXPORT_STATE_COUNT] = {
    [EXPORT_REQUESTED] = "requested",     [EXPORT_GENERATING] = "generating",
    [EXPORT_DOWNLOADING] = "downloading", [EXPORT_COMPLETE] = "complete",
    [EXPORT_FAILED] = "failed",
};

static const char *const op_names[EXPORT_OP_COUNT] = {
    [EXPORT_OP_NONE] = "none",
    [EXPORT_OP_REQUEST] = "export request",
    [EXPORT_OP_STATUS] = "export status",
    [EXPORT_OP_DOWNLOAD] = "export download",
    [EXPORT_OP_DELETE] = "export delete",
};

const char *export_state_name(export_state s)
{
    return (unsigned)s < EXPORT_STATE_COUNT ? state_names[s] : "unknown";
}

int export_state_from_name(const char *name)
{
    for (int i = 0; name && i < EXPORT_STATE_COUNT; i++)
        if (strcmp(name, state_names[i]) == 0)
            return i;
    return -1;
}

const char *export_op_name(export_op op)
{
    return (unsigned)op < EXPORT_OP_COUNT ? op_names[op] : "unknown";
}

void export_params_default(export_params *p)
{
    *p = (export_params){.poll_initial_ms = 2000,
                         .poll_max_ms = 60000,
                         .poll_multiplier = 2.0,
                         .generate_timeout_ms = 3600 * 1000,
                         .retry_base_ms = 1000,
                         .retry_cap_ms = 5 * 60 * 1000,
                         .url_margin_ms = 60 * 1000,
                         .retry_attempts_max = 20};
}

export_job *export_new(int64_t now)
{
    export_job *e = xcalloc(1, sizeof *e);
    e->state = EXPORT_REQUESTED;
    e->requested_at = now;
    e->at = now;
    return e;
}

static void set_str(char **dst, const char *s)
{
    char *n = s ? xstrdup(s) : NULL;
    free(*dst);
    *dst = n;
}

/* The URL is a capability: wiped, not just freed. */
static void drop_url(export_job *e)
{
    secret_free(&e->url);
    e->url_expires_at = 0;
}

void export_free(export_job *e)
{
    if (!e)
        return;
    free(e->export_id);
    drop_url(e);
    free(e->path);
    free(e->error);
    free(e->last_error);
    free(e);
}

bool export_unsettled(const export_job *e)
{
    return e && ((e->state != EXPORT_COMPLETE && e->state != EXPORT_FAILED) || e->delete_pending);
}

static void set_state(export_job *e, export_state s, int64_t now)
{
    if (e->state != s)
        e->polls = 0;
    e->state = s;
    e->at = now;
}

/* Real progress: the step's bound starts over. */
static void progressed(export_job *e)
{
    e->attempts = 0;
    free(e->last_error);
    e->last_error = NULL;
}

static void fail(export_job *e, int64_t now, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void fail(export_job *e, int64_t now, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = xvasprintf(fmt, ap);
    va_end(ap);
    free(e->error);
    /* Parts from the API are cleaned already; this caps the whole and keeps it UTF-8. */
    e->error = apitext_clean_str(msg, NULL);
    free(msg);
    drop_url(e);
    e->pending = EXPORT_OP_NONE;
    e->retry_at = 0;
    e->attempts = 0;
    /* The API's export job, failed or not, still takes one of the batch's 10 slots: it is
     * deleted (once; an error then only leaves it there). */
    e->delete_pending = e->export_id != NULL;
    set_state(e, EXPORT_FAILED, now);
}

/* last_error takes msg (malloc'd): capped like every kept text, so that a long API detail
 * can never make the record too long to be read back. */
static void set_last_error(export_job *e, char *msg)
{
    free(e->last_error);
    e->last_error = apitext_clean_str(msg, NULL);
    free(msg);
}

int export_request_again(export_job *e, int64_t now)
{
    if (e->state != EXPORT_COMPLETE && e->state != EXPORT_FAILED)
        return -EBUSY;
    /* The API's job of the previous export is deleted first when that is still owed: a new
     * one would otherwise take one more of the batch's 10 slots. */
    bool owe_delete = e->delete_pending;
    char *old_id = owe_delete ? e->export_id : NULL;
    if (!owe_delete)
        free(e->export_id);
    e->export_id = NULL;
    drop_url(e);
    free(e->path);
    e->path = NULL;
    free(e->error);
    e->error = NULL;
    progressed(e);
    e->pending = EXPORT_OP_NONE;
    e->was_complete = false;
    e->renewals = e->refusals = e->polls = 0;
    e->retry_at = e->poll_at = e->wait_started_at = 0;
    e->requested_at = now;
    set_state(e, EXPORT_REQUESTED, now);
    /* An undone delete is dropped with a note rather than blocking the new export. */
    if (old_id) {
        set_last_error(e, xasprintf("the earlier export %s was not deleted at the API", old_id));
        free(old_id);
    }
    e->delete_pending = false;
    return 0;
}

static bool url_usable(const export_job *e, const export_params *p, int64_t now)
{
    return e->url && (e->url_expires_at == 0 || e->url_expires_at - p->url_margin_ms > now);
}

static export_action act(export_action_kind k, export_op op, int64_t until)
{
    return (export_action){.kind = k, .op = op, .until = until};
}

/* downloading: use the URL while it lives; otherwise a fresh one comes from polling the
 * status again, or, for a 200 answer without an export_id, from asking again (that form of
 * the API returns the ready export again). */
static export_action next_downloading(export_job *e, const export_params *p, int64_t now,
                                      bool *changed)
{
    if (url_usable(e, p, now))
        return act(EXPORT_ACT_SEND, EXPORT_OP_DOWNLOAD, 0);
    if (e->url) {
        drop_url(e);
        *changed = true;
    }
    if (e->export_id)
        return act(EXPORT_ACT_SEND, EXPORT_OP_STATUS, 0);
    set_state(e, EXPORT_REQUESTED, now);
    *changed = true;
    return act(EXPORT_ACT_SEND, EXPORT_OP_REQUEST, 0);
}

static export_action next_generating(export_job *e, const export_params *p, int64_t now,
                                     bool *changed)
{
    if (e->wait_started_at == 0) {
        e->wait_started_at = now;
        *changed = true;
    }
    if (p->generate_timeout_ms > 0 && now - e->wait_started_at >= p->generate_timeout_ms) {
        char d[32];
        fail(e, now, "the export %s was not complete after %s", e->export_id,
             duration_format(p->generate_timeout_ms, d, sizeof d));
        *changed = true;
        return act(EXPORT_ACT_NONE, EXPORT_OP_NONE, 0);
    }
    if (e->poll_at > now)
        return act(EXPORT_ACT_WAIT, EXPORT_OP_NONE, e->poll_at);
    return act(EXPORT_ACT_SEND, EXPORT_OP_STATUS, 0);
}

export_action export_next(export_job *e, const export_params *p, int64_t now, bool *changed)
{
    *changed = false;
    if ((e->state == EXPORT_FAILED || e->state == EXPORT_COMPLETE) && !e->delete_pending)
        return act(EXPORT_ACT_NONE, EXPORT_OP_NONE, 0);
    if (e->retry_at > now)
        return act(EXPORT_ACT_WAIT, EXPORT_OP_NONE, e->retry_at);
    switch (e->state) {
    case EXPORT_REQUESTED:
        return act(EXPORT_ACT_SEND, EXPORT_OP_REQUEST, 0);
    case EXPORT_GENERATING:
        return next_generating(e, p, now, changed);
    case EXPORT_DOWNLOADING:
        return next_downloading(e, p, now, changed);
    default: /* complete or failed, its API job still to delete */
        return act(EXPORT_ACT_SEND, EXPORT_OP_DELETE, 0);
    }
}

void export_mark_sent(export_job *e, export_op op, int64_t now)
{
    if (op == EXPORT_OP_REQUEST)
        e->pending = EXPORT_OP_REQUEST;
    e->retry_at = 0;
    (void)now;
}

void export_recovered(export_job *e, int64_t now)
{
    /* A retry time from before the restart still holds, but not an absurd one. */
    if (e->retry_at > now + EXPORT_RETRY_AFTER_MAX_MS)
        e->retry_at = 0;
    e->poll_at = 0;
    drop_url(e);
    /* A POST whose answer was lost is sent again: under the API's newer behaviour that may
     * leave one more export job at the API (it is not knowable which), never a second ZIP. */
    e->pending = EXPORT_OP_NONE;
    if (e->state == EXPORT_DOWNLOADING && !e->export_id)
        set_state(e, EXPORT_REQUESTED, now);
}

/* ---- replies ---- */

static int64_t poll_delay(const export_job *e, const export_params *p, uint64_t rnd)
{
    return backoff_poll_interval((unsigned)e->polls, p->poll_initial_ms, p->poll_max_ms,
                                 p->poll_multiplier, 0.1, rnd);
}

/* What a failed exchange saw: "export status: HTTP 503". malloc'd, cleaned. */
static char *reply_text(export_op op, const export_reply *r)
{
    char *raw;
    if (r->net == EXPORT_NET_OK)
        raw = xasprintf("%s: HTTP %ld", export_op_name(op), r->status);
    else
        raw = xasprintf("%s: %s", export_op_name(op),
                        r->error_text && *r->error_text
                            ? r->error_text
                            : (r->net == EXPORT_NET_TIMEOUT ? "timed out" : "connection failed"));
    /* The transport's text is the network's: cleaned like any API text. */
    char *clean = apitext_clean_str(raw, r->secret);
    free(raw);
    return clean;
}

/* One more failed attempt of the current step: wait (full jitter, or the server's
 * Retry-After, bounded, never earlier), or fail once the step has failed retry_attempts_max
 * times. why, when set, is added to the text. */
static void retry_later(export_job *e, export_op op, const export_reply *r, const export_params *p,
                        int64_t now, uint64_t rnd, const char *why)
{
    char *what = reply_text(op, r);
    e->attempts++;
    if (op == EXPORT_OP_DELETE &&
        (e->state == EXPORT_FAILED ||
         (p->retry_attempts_max > 0 && e->attempts >= p->retry_attempts_max))) {
        /* A clean-up at the API never changes how the export ended; after a failure it is
         * tried once. */
        set_last_error(e, xasprintf("%s; export %s is left at the API (it keeps at most 10 per "
                                    "batch)",
                                    what, e->export_id ? e->export_id : "?"));
        e->delete_pending = false;
        free(what);
        return;
    }
    if (p->retry_attempts_max > 0 && e->attempts >= p->retry_attempts_max) {
        fail(e, now, "gave up after %d attempts of %s; the last one ended with %s%s%s", e->attempts,
             export_op_name(op), what, why ? ": " : "", why ? why : "");
        free(what);
        return;
    }
    bool honoured;
    e->retry_at =
        now + backoff_retry_delay((unsigned)e->attempts, p->retry_base_ms, p->retry_cap_ms,
                                  r->retry_after, EXPORT_RETRY_AFTER_MAX_MS, now, rnd, &honoured);
    char *ra_text = honoured ? apitext_clean_str(r->retry_after, r->secret) : NULL;
    set_last_error(e, xasprintf("%s%s%s%s%s%s%s", what, why ? " (" : "", why ? why : "",
                                why ? ")" : "", honoured ? " (Retry-After " : "",
                                honoured ? ra_text : "", honoured ? ")" : ""));
    free(ra_text);
    free(what);
}

/* The export at the API is gone (404, or failed after it had been complete): ask anew, a
 * bounded number of times in a row, backing off like a retry. */
static void renew(export_job *e, const export_params *p, int64_t now, uint64_t rnd, const char *why)
{
    e->renewals++;
    if (e->renewals > EXPORT_RENEWALS_MAX) {
        fail(e, now, "%s, and it was requested anew %d times in a row; giving up", why,
             EXPORT_RENEWALS_MAX);
        return;
    }
    free(e->export_id);
    e->export_id = NULL;
    drop_url(e);
    e->was_complete = false;
    e->wait_started_at = 0;
    e->poll_at = 0;
    e->retry_at = now + backoff_full_jitter((unsigned)(e->renewals - 1), p->retry_base_ms,
                                            p->retry_cap_ms, 2.0, rnd);
    set_last_error(e, xasprintf("%s; requesting a new export", why));
    set_state(e, EXPORT_REQUESTED, now);
}

/* The cleaned detail of an API error body ({"error": {"detail"}}, {"detail"}, {"message"}),
 * or NULL. malloc'd. */
static char *api_detail(const export_reply *r)
{
    cJSON *body = apitext_body(r->body, r->body_len, r->secret);
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(body, "error");
    const char *d = json_str(err ? err : body, "detail");
    if (!d)
        d = json_str(body, "message");
    if (!d && cJSON_IsString(body))
        d = body->valuestring;
    char *out = d ? xstrdup(d) : NULL;
    cJSON_Delete(body);
    return out;
}

/* A definitive refusal of an API call: the export fails with the API's words. */
static void rejected(export_job *e, export_op op, const export_reply *r, int64_t now)
{
    char *detail = api_detail(r);
    const char *hint = r->status == 403 ? " (no access to the batch's workspace)"
                       : r->status == 404 && op == EXPORT_OP_REQUEST
                           ? " (the batch does not exist at the API)"
                           : "";
    fail(e, now, "the API rejected the %s with HTTP %ld%s%s%s", export_op_name(op), r->status,
         detail ? ": " : "", detail ? detail : "", hint);
    free(detail);
}

/* Takes a presigned URL from a reply (status complete). false after failing the export. */
static bool take_url(export_job *e, export_op op, const cJSON *body, const export_reply *r,
                     int64_t now, const export_params *p)
{
    const char *url = json_str(body, "url");
    if (!url || !*url) {
        fail(e, now, "unexpected reply to the %s (HTTP %ld): complete without a url",
             export_op_name(op), r->status);
        return false;
    }
    /* The URL is used as it is: it must not hold the token, which goes nowhere but API calls. */
    if (apitext_has_secret(url, strlen(url), r->secret)) {
        fail(e, now, "the export URL contains the API token; not using it");
        return false;
    }
    drop_url(e);
    e->url = xstrdup(url);
    int64_t exp = 0;
    const char *es = json_str(body, "expires_at");
    if (!es || time_parse_rfc3339(es, &exp) < 0)
        exp = 0;
    /* A URL said to be expired already (a skewed clock) is tried rather than refreshed in a
     * loop: a real expiry shows as a refusal (403) of the download. */
    e->url_expires_at = exp - p->url_margin_ms > now ? exp : 0;
    return true;
}

/* The API's status of the export (a POST's answer or a poll): generating, complete, failed. */
static void apply_status(export_job *e, export_op op, const cJSON *body, const export_reply *r,
                         const export_params *p, int64_t now, uint64_t rnd)
{
    const char *st = json_str(body, "status");
    const char *id = json_str(body, "export_id");
    if (id && !apitext_id_ok(id)) {
        char *shown = apitext_display(id, 256, r->secret);
        fail(e, now,
             "the export id \"%s\" cannot be used in a URL (1 to %d letters, digits, "
             "'-' or '_')",
             shown, APITEXT_ID_MAX);
        free(shown);
        return;
    }
    if (st && strcmp(st, "generating") == 0 && (id || e->export_id)) {
        if (id)
            set_str(&e->export_id, id);
        if (e->state != EXPORT_GENERATING) {
            set_state(e, EXPORT_GENERATING, now);
            e->wait_started_at = now;
        } else {
            e->polls++;
        }
        e->poll_at = now + poll_delay(e, p, rnd);
        return;
    }
    if (st && strcmp(st, "complete") == 0) {
        if (!take_url(e, op, body, r, now, p))
            return;
        if (id)
            set_str(&e->export_id, id);
        e->was_complete = true;
        e->renewals = 0;
        set_state(e, EXPORT_DOWNLOADING, now);
        return;
    }
    if (st && strcmp(st, "failed") == 0 && e->was_complete && op == EXPORT_OP_STATUS) {
        renew(e, p, now, rnd, "the export's archive was deleted at the API (status failed)");
        return;
    }
    if (st && strcmp(st, "failed") == 0) {
        fail(e, now, "the API reports that the export%s%s failed", e->export_id ? " " : "",
             e->export_id ? e->export_id : "");
        return;
    }
    char *shown = apitext_display(st ? st : "(none)", 64, r->secret);
    fail(e, now, "unexpected reply to the %s (HTTP %ld): status %s%s", export_op_name(op),
         r->status, shown, st && strcmp(st, "generating") == 0 ? " without an export_id" : "");
    free(shown);
}

static void placed(export_job *e, const char *path, int64_t now)
{
    set_str(&e->path, path);
    drop_url(e);
    e->refusals = 0;
    e->renewals = 0;
    e->delete_pending = e->export_id != NULL;
    set_state(e, EXPORT_COMPLETE, now);
}

bool export_adopt(export_job *e, const char *path, int64_t now)
{
    if (!e || !path || e->state == EXPORT_COMPLETE || e->state == EXPORT_FAILED)
        return false;
    e->pending = EXPORT_OP_NONE;
    e->retry_at = 0;
    e->attempts = 0;
    placed(e, path, now);
    return true;
}

static void download_ok(export_job *e, const export_reply *r, const export_params *p, int64_t now,
                        uint64_t rnd)
{
    if (r->zip_error) {
        char *why = xasprintf("the download is not a whole ZIP file: %s", r->zip_error);
        retry_later(e, EXPORT_OP_DOWNLOAD, r, p, now, rnd, why);
        free(why);
        return;
    }
    if (!r->path) {
        retry_later(e, EXPORT_OP_DOWNLOAD, r, p, now, rnd, "the file was not kept");
        return;
    }
    placed(e, r->path, now);
}

static void on_success(export_job *e, export_op op, const export_reply *r, const export_params *p,
                       int64_t now, uint64_t rnd)
{
    if (op == EXPORT_OP_DOWNLOAD) {
        download_ok(e, r, p, now, rnd);
    } else if (op == EXPORT_OP_DELETE) {
        e->delete_pending = false;
    } else {
        cJSON *body = r->body ? cJSON_ParseWithLength(r->body, r->body_len) : NULL;
        if (cJSON_IsObject(body))
            apply_status(e, op, body, r, p, now, rnd);
        else
            fail(e, now, "unexpected reply to the %s (HTTP %ld): not a JSON object",
                 export_op_name(op), r->status);
        cJSON_Delete(body);
    }
    if (e->state != EXPORT_FAILED && e->retry_at == 0)
        progressed(e);
}

/* A 4xx to the download: the presigned URL expired or was refused (401, 403) or its object
 * is gone (404): a fresh URL is asked for, a bounded number of times; anything else is final. */
static void download_refused(export_job *e, const export_reply *r, const export_params *p,
                             int64_t now, uint64_t rnd)
{
    long s = r->status;
    if ((s == 401 || s == 403 || s == 404) && e->refusals < EXPORT_REFUSALS_MAX) {
        e->refusals++;
        drop_url(e);
        retry_later(e, EXPORT_OP_DOWNLOAD, r, p, now, rnd,
                    "the download URL was refused, expired?; asking for a fresh one");
        return;
    }
    fail(e, now, "the download of the export was refused with HTTP %ld%s", s,
         s == 401 || s == 403 || s == 404 ? " every time a fresh URL was tried" : "");
}

/* A 4xx (not 401, 408 or 429) to an API call. */
static void api_refused(export_job *e, export_op op, const export_reply *r, const export_params *p,
                        int64_t now, uint64_t rnd)
{
    long s = r->status;
    if (op == EXPORT_OP_STATUS && s == 404) {
        char *why = xasprintf("the export %s vanished at the API (HTTP 404)",
                              e->export_id ? e->export_id : "?");
        renew(e, p, now, rnd, why);
        free(why);
    } else if (op == EXPORT_OP_DELETE && s == 404) {
        e->delete_pending = false; /* already gone: what the DELETE was for */
    } else if (op == EXPORT_OP_DELETE && s == 409) {
        retry_later(e, op, r, p, now, rnd, "the API says the export is still generating");
    } else if (op == EXPORT_OP_DELETE) {
        /* The ZIP is here: a refused clean-up at the API does not undo the export. */
        char *detail = api_detail(r);
        set_last_error(e, xasprintf("the API refused to delete export %s with HTTP %ld%s%s; it "
                                    "is left there (the API keeps at most 10 per batch)",
                                    e->export_id ? e->export_id : "?", s, detail ? ": " : "",
                                    detail ? detail : ""));
        free(detail);
        e->delete_pending = false;
    } else {
        rejected(e, op, r, now);
    }
}

/* A transport outcome other than a response read whole. true when it was handled. */
static bool net_outcome(export_job *e, export_op op, const export_reply *r, const export_params *p,
                        int64_t now, uint64_t rnd)
{
    switch (r->net) {
    case EXPORT_NET_OK:
        return false;
    case EXPORT_NET_URL: {
        char *what = reply_text(op, r);
        fail(e, now, "%s (a download URL must be https://, or http:// to a loopback host)", what);
        free(what);
        return true;
    }
    case EXPORT_NET_TOO_LARGE:
        if (op == EXPORT_OP_DOWNLOAD && r->status >= 200 && r->status < 300) {
            fail(e, now, "the export's ZIP is larger than the download size cap");
            return true;
        }
        if (r->status >= 400 && r->status < 500)
            return false; /* a 4xx is an answer whatever its body: handled by status */
        retry_later(e, op, r, p, now, rnd, NULL);
        return true;
    default: /* timeout, dropped, not sent, a local file error: all worth another attempt */
        retry_later(e, op, r, p, now, rnd, NULL);
        return true;
    }
}

bool export_on_reply(export_job *e, export_op op, const export_reply *r, const export_params *p,
                     int64_t now, uint64_t rnd)
{
    if ((e->state == EXPORT_FAILED && op != EXPORT_OP_DELETE) || op == EXPORT_OP_NONE ||
        op >= EXPORT_OP_COUNT)
        return false;
    if (op == EXPORT_OP_REQUEST)
        e->pending = EXPORT_OP_NONE; /* answered or not, the next step sends it again */
    e->retry_at = 0;
    if (net_outcome(e, op, r, p, now, rnd))
        return false;
    long s = r->status;
    if (s >= 200 && s < 300) {
        on_success(e, op, r, p, now, rnd);
        return false;
    }
    if (s == 401 && op != EXPORT_OP_DOWNLOAD) {
        /* The token is wrong for every call: the daemon holds, the call is made again. */
        set_last_error(e, xasprintf("%s: HTTP 401 (the API token was rejected; waiting for a new "
                                    "token)",
                                    export_op_name(op)));
        return true;
    }
    if (s == 408 || s == 429 || s >= 500 || s < 200) {
        retry_later(e, op, r, p, now, rnd, NULL);
        return false;
    }
    if (op == EXPORT_OP_DOWNLOAD && s >= 400)
        download_refused(e, r, p, now, rnd);
    else if (s >= 400)
        api_refused(e, op, r, p, now, rnd);
    else
        retry_later(e, op, r, p, now, rnd, "an unexpected status"); /* 3xx: never followed */
    return false;
}
