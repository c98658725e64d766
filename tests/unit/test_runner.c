/* test-deps: job export spool log apitext */
/* Unit tests of the runner, below the daemon: a RAM store whose writes complete (or fail) when
 * the test says, a scripted HTTP client, a scripted spool, a validation pool the test answers,
 * and a fake clock whose timers fire only when the test moves time on. Covers write-before-
 * send, every resume case, drain, cancel and retry in every state, claim failures, the token
 * hold and pause. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>

#include <cmocka.h>

#include "batchd/log.h"
#include "batchd/runner.h"
#include "batchd/spool.h"
#include "batchd/util.h"
#include "runner_internal.h" /* RUNNER_VALIDATIONS_MAX */

#define T0      1764405165000LL
#define DATASET "0192a3b5-e8f9-7a0b-1c2d-3e4f5a6b7c8d"
#define IMPORT  "01935c2d-1a2b-3c4d-5e6f-7a8b9c0d1e2f"
#define BATCH   "01935c2d-aaaa-4c4d-8e6f-7a8b9c0d1e2f"
#define WS      "6278acb09062db3b35bcbeb0"
#define SHA     "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
#define MAXN    64

static const char *spec_json =
    "{\"workspace_id\":\"" WS "\",\"dataset\":{\"name\":\"ds\",\"file\":\"d.jsonl\","
    "\"schema\":{\"strict\":true,\"fields\":{\"prompt\":{\"type\":\"text\"}}}},"
    "\"batch\":{\"name\":\"b\",\"tasks_per_group\":3,\"task_details\":{\"task_name\":\"n\","
    "\"task_introduction\":\"i\",\"task_steps\":\"s\"},\"batch_items\":[{\"rows\":[{"
    "\"columns\":[{\"items\":[{\"type\":\"dataset_field\",\"field\":\"prompt\"}]}]}]}]}}";

typedef struct fwrite_ {
    char *text;
    runner_done_fn done;
    void *cookie;
} fwrite_;

typedef struct freq {
    job_op op;
    char *path;
    runner_http_done_fn done;
    runner_progress_fn progress;
    void *cookie;
    bool live;
} freq;

typedef struct fval {
    runner_validated_fn done;
    void *cookie;
    bool live;
    bool cancelled;
} fval;

typedef struct ftimer {
    runner_timer_fn fn;
    void *arg;
    int64_t due;
    bool armed;
} ftimer;

typedef struct world {
    int64_t now, mono;
    runner *rn;
    /* store */
    cJSON *records; /* id -> record */
    fwrite_ writes[MAXN];
    size_t n_writes;
    int writes_started, writes_now;
    int urgent_writes; /* writes the job waits for */
    int load_rc, remove_rc;
    /* http */
    freq reqs[MAXN];
    size_t n_reqs;
    bool refuse_send;
    unsigned token_gen;
    int sent[JOB_OP_COUNT];
    /* spool */
    char *incoming[MAXN];
    size_t n_incoming;
    int scan_rc, claim_rc, finish_rc, reactivate_rc;
    runner_claim_kind claim_kind;
    bool defer_claims; /* claims end only when claims_end is called, as on the pool */
    runner_claim_done_fn claim_dones[MAXN];
    void *claim_cookies[MAXN];
    char *claim_entries[MAXN];
    size_t n_claims;
    bool defer_count; /* a count ends only when count_end is called */
    size_t counts;
    spool_stuck *count_skip;
    runner_count_done_fn count_done;
    void *count_cookie;
    char *active[MAXN];
    size_t n_active;
    int finished_ok, finished_failed;
    /* validation */
    fval vals[MAXN];
    size_t n_vals;
    int validate_rc;
    bool validation_bad;
    const char *spec;       /* what validations resolve to; NULL: spec_json */
    bool got_target_schema; /* the last validation started was given one */
    /* timers */
    ftimer *timers[4 * MAXN];
    size_t n_timers;
    /* hooks */
    int changed, passed, status_calls, ended, rejected;
    unsigned rejected_gen;
    size_t st_active, st_done, st_failed;
    size_t finished_hooks;               /* job_finished calls */
    runner_request_info done_reqs[MAXN]; /* request_done, for the metrics */
    size_t n_done_reqs;
    /* exports */
    struct fexp {
        export_op op;
        char *path;
        char *job_dir;
        runner_export_done_fn done;
        void *cookie;
        bool live;
    } exps[MAXN];
    size_t n_exps;
    int exp_sent[EXPORT_OP_COUNT];
    int prunes, cleans, export_dones, export_faileds, export_reqs_done;
    const char *placed_zip; /* what x_clean finds in place */
    int64_t clean_since;
    unsigned prune_keep;
    char prune_protect[EXPORT_NAME_MAX];
} world;

static world *W;

/* ---- RAM store ---- */

static void st_write(void *ud, const job *j, bool urgent, runner_done_fn done, void *cookie)
{
    world *w = ud;
    if (urgent)
        w->urgent_writes++;
    assert_true(w->n_writes < MAXN);
    cJSON *rec = job_to_record(j);
    w->writes[w->n_writes++] = (fwrite_){json_print(rec), done, cookie};
    cJSON_Delete(rec);
    w->writes_started++;
}

static void put_record(world *w, const char *text)
{
    cJSON *rec = cJSON_Parse(text);
    const char *id = json_str(rec, "id");
    cJSON_DeleteItemFromObjectCaseSensitive(w->records, id);
    cJSON_AddItemToObject(w->records, id, rec);
}

static int st_write_now(void *ud, const job *j)
{
    world *w = ud;
    cJSON *rec = job_to_record(j);
    char *text = json_print(rec);
    cJSON_Delete(rec);
    put_record(w, text);
    free(text);
    w->writes_now++;
    return 0;
}

static int st_load(void *ud, void (*each)(void *cud, job *j),
                   void (*bad)(void *cud, const char *file, const char *reason), void *cud)
{
    world *w = ud;
    if (w->load_rc < 0)
        return w->load_rc;
    int n = 0;
    const cJSON *rec;
    cJSON *all = cJSON_Duplicate(w->records, 1); /* each() may remove records */
    cJSON_ArrayForEach(rec, all)
    {
        const char *err = NULL;
        job *j = job_from_record(rec, &err);
        if (!j) {
            bad(cud, rec->string, err);
            continue;
        }
        each(cud, j);
        n++;
    }
    cJSON_Delete(all);
    return n;
}

static int st_remove(void *ud, const char *id)
{
    world *w = ud;
    cJSON_DeleteItemFromObjectCaseSensitive(w->records, id);
    return w->remove_rc;
}

static const runner_store_ops store_ops = {st_write, st_write_now, st_load, st_remove};

/* Ends the writes out now (not those they start) with rc. */
static size_t writes_end(world *w, int rc)
{
    size_t n = w->n_writes;
    fwrite_ batch[MAXN];
    memcpy(batch, w->writes, n * sizeof *batch);
    w->n_writes = 0;
    for (size_t i = 0; i < n; i++) {
        if (rc == 0)
            put_record(w, batch[i].text);
        free(batch[i].text);
        batch[i].done(batch[i].cookie, rc);
    }
    return n;
}

static void flush(world *w)
{
    while (writes_end(w, 0) > 0) {
    }
}

static const cJSON *record_of(world *w, const job *j)
{
    return cJSON_GetObjectItemCaseSensitive(w->records, j->id);
}

/* ---- scripted HTTP ---- */

static void *h_send(void *ud, const runner_request *req, runner_http_done_fn done,
                    runner_progress_fn progress, void *cookie)
{
    world *w = ud;
    if (w->refuse_send)
        return NULL;
    assert_true(w->n_reqs < MAXN);
    freq *q = &w->reqs[w->n_reqs++];
    *q = (freq){req->op, xstrdup(req->rq->path), done, progress, cookie, true};
    w->sent[req->op]++;
    return q;
}

static void h_cancel(void *ud, void *handle)
{
    (void)ud;
    freq *q = handle;
    assert_true(q->live);
    q->live = false;
}

static const runner_http_ops http_ops = {h_send, h_cancel};

static freq *live_req(world *w)
{
    for (size_t i = 0; i < w->n_reqs; i++)
        if (w->reqs[i].live)
            return &w->reqs[i];
    return NULL;
}

static size_t n_live_reqs(world *w)
{
    size_t n = 0;
    for (size_t i = 0; i < w->n_reqs; i++)
        n += w->reqs[i].live;
    return n;
}

static void answer_net(world *w, freq *q, job_net_error net, long status, const char *body)
{
    assert_non_null(q);
    assert_true(q->live);
    q->live = false;
    job_reply r = {.net = net,
                   .status = status,
                   .body = body,
                   .body_len = body ? strlen(body) : 0,
                   .error_text = net == JOB_NET_OK ? "" : "boom",
                   .secret = "tok"};
    q->done(q->cookie, &r, w->token_gen);
}

static void answer(world *w, long status, const char *body)
{
    answer_net(w, live_req(w), JOB_NET_OK, status, body);
}

static const char *upload_url_body(int64_t expires_ms)
{
    static char buf[512];
    char exp[40];
    snprintf(
        buf, sizeof buf,
        "{\"dataset_id\":\"" DATASET "\",\"upload_url\":\"http://127.0.0.1:1/_upload/k?sig=1\","
        "\"http_method\":\"PUT\",\"content_type\":\"application/x-ndjson\",\"expires_at\":\"%s\","
        "\"import_id\":\"" IMPORT "\"}",
        time_format_rfc3339(expires_ms, false, exp, sizeof exp));
    return buf;
}

/* The API's happy answer to each call. */
static void answer_happy(world *w, freq *q)
{
    switch (q->op) {
    case JOB_OP_CREATE_DATASET:
        answer_net(w, q, JOB_NET_OK, 201, "{\"id\":\"" DATASET "\"}");
        break;
    case JOB_OP_UPLOAD_URL:
        answer_net(w, q, JOB_NET_OK, 201, upload_url_body(w->now + 900000));
        break;
    case JOB_OP_UPLOAD:
        q->progress(q->cookie, 60);
        answer_net(w, q, JOB_NET_OK, 200, "");
        break;
    case JOB_OP_CHECK_UPLOAD:
        answer_net(w, q, JOB_NET_OK, 200, "{\"status\":\"queued\"}");
        break;
    case JOB_OP_GET_IMPORT:
        answer_net(w, q, JOB_NET_OK, 200, "{\"status\":\"complete\",\"accepted_count\":3}");
        break;
    case JOB_OP_FIND_BATCH:
        answer_net(w, q, JOB_NET_OK, 200, "{\"results\":[],\"meta\":{\"count\":0}}");
        break;
    case JOB_OP_CREATE_BATCH:
        answer_net(w, q, JOB_NET_OK, 201, "{\"id\":\"" BATCH "\",\"status\":\"UNINITIALISED\"}");
        break;
    case JOB_OP_SETUP:
        answer_net(w, q, JOB_NET_OK, 202, "{}");
        break;
    case JOB_OP_CHECK_SETUP:
    case JOB_OP_BATCH_STATUS:
        answer_net(w, q, JOB_NET_OK, 200, "{\"status\":\"READY\"}");
        break;
    case JOB_OP_GET_BATCH:
        answer_net(w, q, JOB_NET_OK, 200,
                   "{\"id\":\"" BATCH "\",\"status\":\"READY\",\"total_task_count\":3,"
                   "\"total_task_groups\":1}");
        break;
    case JOB_OP_SYNC:
        answer_net(w, q, JOB_NET_OK, 202, "{\"sync_id\":\"s1\",\"status\":\"queued\"}");
        break;
    case JOB_OP_GET_SYNC:
        answer_net(w, q, JOB_NET_OK, 200,
                   "{\"sync_id\":\"s1\",\"status\":\"complete\",\"tasks_created\":3,"
                   "\"datapoints_processed\":3,\"groups_created\":1,\"groups_expanded\":0}");
        break;
    default:
        fail_msg("unexpected request %s", job_op_name(q->op));
    }
}

/* ---- scripted exports ---- */

static void *x_send(void *ud, const runner_export_request *req, runner_export_done_fn done,
                    void *cookie)
{
    world *w = ud;
    assert_true(w->n_exps < MAXN);
    struct fexp *q = &w->exps[w->n_exps++];
    *q = (struct fexp){req->op, xstrdup(req->path), xstrdup(req->job_dir), done, cookie, true};
    w->exp_sent[req->op]++;
    return q;
}

static void x_cancel(void *ud, void *handle)
{
    (void)ud;
    struct fexp *q = handle;
    assert_true(q->live);
    q->live = false;
}

static void x_prune(void *ud, const char *job_dir, unsigned keep, const char *protect)
{
    world *w = ud;
    assert_non_null(job_dir);
    w->prunes++;
    w->prune_keep = keep;
    snprintf(w->prune_protect, sizeof w->prune_protect, "%s", protect ? protect : "");
}

static char *x_clean(void *ud, const char *job_dir, int64_t since_ms)
{
    world *w = ud;
    assert_non_null(job_dir);
    w->cleans++;
    w->clean_since = since_ms;
    return w->placed_zip ? xstrdup(w->placed_zip) : NULL;
}

static const runner_export_ops export_ops = {x_send, x_cancel, x_prune, x_clean};

static struct fexp *live_exp(world *w)
{
    for (size_t i = 0; i < w->n_exps; i++)
        if (w->exps[i].live)
            return &w->exps[i];
    return NULL;
}

static void exp_answer(world *w, long status, const char *body, const char *path)
{
    struct fexp *q = live_exp(w);
    assert_non_null(q);
    q->live = false;
    export_reply r = {.net = EXPORT_NET_OK,
                      .status = status,
                      .body = body,
                      .body_len = body ? strlen(body) : 0,
                      .secret = "tok",
                      .path = path};
    q->done(q->cookie, &r, w->token_gen);
}

static void hk_export_done(void *ud, const job *j)
{
    world *w = ud;
    assert_non_null(j->export);
    assert_non_null(j->export->path);
    w->export_dones++;
}

static void hk_export_failed(void *ud, const job *j)
{
    world *w = ud;
    assert_non_null(j->export);
    assert_non_null(j->export->error);
    w->export_faileds++;
}

static void hk_export_request_done(void *ud, export_op op, long status, int64_t latency_ms)
{
    (void)op;
    (void)status;
    assert_true(latency_ms >= 0);
    ((world *)ud)->export_reqs_done++;
}

/* ---- scripted spool ---- */

static int sp_scan(void *ud, size_t max, bool (*skipfn)(void *sud, const char *name), void *sud,
                   char ***names, size_t *n)
{
    world *w = ud;
    if (w->scan_rc < 0)
        return w->scan_rc;
    *names = xcalloc(w->n_incoming + 1, sizeof(char *));
    *n = 0;
    for (size_t i = 0; i < w->n_incoming && *n < max; i++)
        if (!skipfn(sud, w->incoming[i]))
            (*names)[(*n)++] = xstrdup(w->incoming[i]);
    return 0;
}

static void drop_incoming(world *w, const char *entry)
{
    for (size_t i = 0; i < w->n_incoming; i++)
        if (strcmp(w->incoming[i], entry) == 0) {
            free(w->incoming[i]);
            w->incoming[i] = w->incoming[--w->n_incoming];
            return;
        }
}

static void add_active(world *w, const char *name)
{
    w->active[w->n_active++] = xstrdup(name);
}

static void drop_active(world *w, const char *name)
{
    for (size_t i = 0; i < w->n_active; i++)
        if (strcmp(w->active[i], name) == 0) {
            free(w->active[i]);
            w->active[i] = w->active[--w->n_active];
            return;
        }
}

static void sp_claim(void *ud, const char *entry, const char *id, runner_claim_done_fn done,
                     void *cookie)
{
    world *w = ud;
    if (w->defer_claims) {
        assert_true(w->n_claims < MAXN);
        w->claim_dones[w->n_claims] = done;
        w->claim_cookies[w->n_claims] = cookie;
        w->claim_entries[w->n_claims++] = xstrdup(entry);
        return;
    }
    char dir[256];
    snprintf(dir, sizeof dir, "/spool/%s/%s",
             w->claim_kind == RUNNER_REJECTED ? "failed" : "active", entry);
    runner_claim c = {.kind = w->claim_kind, .job_dir = dir, .job_name = entry};
    if (w->claim_kind == RUNNER_REJECTED) {
        c.code = "unsupported_entry";
        c.reason = "a fifo";
        c.job_id = id;
    }
    if (w->claim_rc == 0) {
        drop_incoming(w, entry);
        if (w->claim_kind == RUNNER_CLAIMED)
            add_active(w, entry);
    }
    done(cookie, w->claim_rc, &c);
}

/* Ends the deferred claims, as the pool's batch would: each entry claimed into active/. */
static void claims_end(world *w)
{
    size_t n = w->n_claims;
    w->n_claims = 0;
    for (size_t i = 0; i < n; i++) {
        char dir[256];
        snprintf(dir, sizeof dir, "/spool/active/%s", w->claim_entries[i]);
        runner_claim c = {.kind = RUNNER_CLAIMED, .job_dir = dir, .job_name = w->claim_entries[i]};
        drop_incoming(w, w->claim_entries[i]);
        add_active(w, w->claim_entries[i]);
        w->claim_dones[i](w->claim_cookies[i], 0, &c);
        free(w->claim_entries[i]);
    }
}

static void sp_finish(void *ud, const char *dir, bool ok, const char *file, const char *body,
                      runner_finish_done_fn done, void *cookie)
{
    world *w = ud;
    assert_string_equal(file, ok ? "result.json" : "error.json");
    assert_non_null(strstr(body, "\"state\""));
    if (w->finish_rc == 0) {
        drop_active(w, dir);
        ok ? w->finished_ok++ : w->finished_failed++;
    }
    char final_dir[256];
    snprintf(final_dir, sizeof final_dir, "/spool/%s/%s.1", ok ? "done" : "failed", dir);
    done(cookie, w->finish_rc, w->finish_rc == 0 ? final_dir : NULL);
}

static int sp_list_active(void *ud, char ***names, size_t *n)
{
    world *w = ud;
    *names = xcalloc(w->n_active + 1, sizeof(char *));
    for (size_t i = 0; i < w->n_active; i++)
        (*names)[i] = xstrdup(w->active[i]);
    *n = w->n_active;
    return 0;
}

static bool sp_active_exists(void *ud, const char *dir)
{
    world *w = ud;
    for (size_t i = 0; i < w->n_active; i++)
        if (strcmp(w->active[i], dir) == 0)
            return true;
    return false;
}

static int sp_reactivate(void *ud, const char *failed_name, char **active_name)
{
    world *w = ud;
    if (w->reactivate_rc < 0)
        return w->reactivate_rc;
    *active_name = xasprintf("%s.r", failed_name);
    add_active(w, *active_name);
    return 0;
}

/* Counts at once, or (defer_count) when count_end says, as the pool would. */
static void sp_count(void *ud, spool_stuck *skip, runner_count_done_fn done, void *cookie)
{
    world *w = ud;
    w->counts++;
    if (w->defer_count) {
        assert_null(w->count_done); /* one count at a time */
        w->count_skip = skip;
        w->count_done = done;
        w->count_cookie = cookie;
        return;
    }
    size_t n = 0;
    for (size_t i = 0; i < w->n_incoming; i++)
        n += !spool_stuck_skip(skip, w->incoming[i]);
    spool_stuck_free(skip);
    done(cookie, 0, n);
}

/* Ends a deferred count with what incoming/ holds now. */
static void count_end(world *w)
{
    runner_count_done_fn done = w->count_done;
    assert_non_null(done);
    w->count_done = NULL;
    size_t n = 0;
    for (size_t i = 0; i < w->n_incoming; i++)
        n += !spool_stuck_skip(w->count_skip, w->incoming[i]);
    spool_stuck_free(w->count_skip);
    w->count_skip = NULL;
    done(w->count_cookie, 0, n);
}

static const runner_spool_ops spool_ops = {
    sp_scan, sp_claim, sp_finish, sp_list_active, sp_active_exists, sp_reactivate, sp_count};

/* ---- validation the test answers ---- */

static int v_start(void *ud, const job *j, const cJSON *target_schema, runner_validated_fn done,
                   void *cookie, void **handle)
{
    world *w = ud;
    (void)j;
    w->got_target_schema = target_schema != NULL;
    if (w->validate_rc < 0)
        return w->validate_rc;
    fval *v = &w->vals[w->n_vals++];
    *v = (fval){done, cookie, true, false};
    *handle = v;
    return 0;
}

static void v_cancel(void *ud, void *handle)
{
    (void)ud;
    fval *v = handle;
    v->cancelled = true;
}

static const runner_validate_ops validate_ops = {v_start, v_cancel};

static fval *live_val(world *w)
{
    for (size_t i = 0; i < w->n_vals; i++)
        if (w->vals[i].live)
            return &w->vals[i];
    return NULL;
}

static void validation_end(world *w, fval *v)
{
    assert_non_null(v);
    v->live = false;
    if (v->cancelled) {
        v->done(v->cookie, NULL);
        return;
    }
    cJSON *spec = cJSON_Parse(w->spec ? w->spec : spec_json);
    job_validation jv = {.ok = !w->validation_bad,
                         .code = w->validation_bad ? "invalid_job" : NULL,
                         .message = w->validation_bad ? "no job.json" : NULL,
                         .spec = spec,
                         .upload_path = "/spool/active/a/d.jsonl",
                         .upload_name = "d.jsonl",
                         .sha256 = SHA,
                         .records = 3,
                         .bytes = 120};
    v->done(v->cookie, &jv);
    cJSON_Delete(spec);
}

/* ---- fake clock ---- */

static int64_t c_now(void *ud)
{
    return ((world *)ud)->now;
}

static int64_t c_mono(void *ud)
{
    return ((world *)ud)->mono;
}

static void *c_timer_new(void *ud, runner_timer_fn fn, void *arg)
{
    world *w = ud;
    ftimer *t = xcalloc(1, sizeof *t);
    *t = (ftimer){fn, arg, 0, false};
    assert_true(w->n_timers < 4 * MAXN);
    w->timers[w->n_timers++] = t;
    return t;
}

static void c_timer_arm(void *ud, void *timer, int64_t delay)
{
    world *w = ud;
    ftimer *t = timer;
    assert_true(delay >= 1);
    t->due = w->mono + delay;
    t->armed = true;
}

static void c_timer_stop(void *ud, void *timer)
{
    (void)ud;
    ((ftimer *)timer)->armed = false;
}

static void c_timer_free(void *ud, void *timer)
{
    world *w = ud;
    for (size_t i = 0; i < w->n_timers; i++)
        if (w->timers[i] == timer) {
            w->timers[i] = w->timers[--w->n_timers];
            free(timer);
            return;
        }
    fail_msg("freeing an unknown timer");
}

static const runner_clock_ops clock_ops = {c_now,       c_mono,       c_timer_new,
                                           c_timer_arm, c_timer_stop, c_timer_free};

static ftimer *next_timer(world *w)
{
    ftimer *best = NULL;
    for (size_t i = 0; i < w->n_timers; i++)
        if (w->timers[i]->armed && (!best || w->timers[i]->due < best->due))
            best = w->timers[i];
    return best;
}

/* Moves time on by ms, firing the timers that come due, in order. */
static void advance(world *w, int64_t ms)
{
    int64_t end = w->mono + ms;
    for (ftimer *t; (t = next_timer(w)) && t->due <= end;) {
        w->now += t->due - w->mono;
        w->mono = t->due;
        t->armed = false;
        t->fn(t->arg);
    }
    w->now += end - w->mono;
    w->mono = end;
}

/* ---- hooks ---- */

static void hk_changed(void *ud, const job *j, const char *as_state)
{
    world *w = ud;
    assert_non_null(j);
    as_state ? w->passed++ : w->changed++;
}

static void hk_status(void *ud, size_t active, size_t done, size_t failed)
{
    world *w = ud;
    w->status_calls++;
    w->st_active = active;
    w->st_done = done;
    w->st_failed = failed;
}

static void hk_ended(void *ud)
{
    ((world *)ud)->ended++;
}

static void hk_rejected(void *ud, unsigned gen)
{
    world *w = ud;
    w->rejected++;
    w->rejected_gen = gen;
}

static void hk_request_done(void *ud, const job *j, const runner_request_info *info)
{
    world *w = ud;
    assert_non_null(j);
    if (w->n_done_reqs < MAXN)
        w->done_reqs[w->n_done_reqs++] = *info;
}

static void hk_finished(void *ud, const job *j)
{
    world *w = ud;
    assert_non_null(j);
    w->finished_hooks++;
}

static void start_runner(world *w)
{
    runner_backend be = {.store = &store_ops,
                         .http = &http_ops,
                         .spool = &spool_ops,
                         .validate = &validate_ops,
                         .clock = &clock_ops,
                         .exports = &export_ops,
                         .ud = w,
                         .export_ud = w};
    runner_hooks hooks = {.ud = w,
                          .job_changed = hk_changed,
                          .status = hk_status,
                          .request_ended = hk_ended,
                          .token_rejected = hk_rejected,
                          .request_done = hk_request_done,
                          .job_finished = hk_finished,
                          .export_done = hk_export_done,
                          .export_failed = hk_export_failed,
                          .export_request_done = hk_export_request_done};
    runner_options o = {.state_dir = "/state", .incoming_dir = "/spool/incoming", .seed = 42};
    w->rn = runner_new(&be, &hooks, &o);
    job_params p;
    job_params_default(&p);
    runner_configure(w->rn, &p, 8);
}

static int setup(void **state)
{
    world *w = xcalloc(1, sizeof *w);
    w->now = T0;
    w->mono = 1000;
    w->records = cJSON_CreateObject();
    w->claim_kind = RUNNER_CLAIMED;
    start_runner(w);
    W = w;
    *state = w;
    return 0;
}

static void free_strs(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
}

static void stop_runner(world *w)
{
    runner_shutdown(w->rn);
    runner_free(w->rn);
    w->rn = NULL;
    /* Backends still holding jobs end now; the runner frees them. */
    if (w->count_done)
        count_end(w);
    writes_end(w, 0);
    for (size_t i = 0; i < w->n_vals; i++)
        if (w->vals[i].live) {
            w->vals[i].cancelled = true;
            validation_end(w, &w->vals[i]);
        }
    for (size_t i = 0; i < w->n_reqs; i++) {
        assert_false(w->reqs[i].live); /* runner_shutdown cancelled them all */
        free(w->reqs[i].path);
    }
    w->n_reqs = 0;
    w->n_vals = 0;
    for (size_t i = 0; i < w->n_exps; i++) {
        assert_false(w->exps[i].live); /* runner_shutdown cancelled them all */
        free(w->exps[i].path);
        free(w->exps[i].job_dir);
    }
    w->n_exps = 0;
    assert_int_equal(w->n_timers, 0);
}

static int teardown(void **state)
{
    world *w = *state;
    stop_runner(w);
    free_strs(w->incoming, w->n_incoming);
    free_strs(w->active, w->n_active);
    cJSON_Delete(w->records);
    free(w);
    return 0;
}

/* A restart: everything in flight is abandoned; the records stay. */
static void restart(world *w)
{
    stop_runner(w);
    start_runner(w);
    assert_int_equal(runner_recover(w->rn), 0);
}

static void drop(world *w, const char *entry)
{
    w->incoming[w->n_incoming++] = xstrdup(entry);
    runner_claim_soon(w->rn);
    advance(w, 1);
}

static const char *last_note(const job *j)
{
    const cJSON *h = cJSON_GetArrayItem(j->history, cJSON_GetArraySize(j->history) - 1);
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(h, "note");
    return cJSON_IsString(n) ? n->valuestring : "";
}

static const job *job0(world *w)
{
    return runner_job_at(w->rn, 0);
}

/* One step of the happy path: writes end, then a validation or a request is answered, else
 * time moves to the next timer. */
static void act(world *w)
{
    fval *v = live_val(w);
    freq *q = live_req(w);
    if (v)
        validation_end(w, v);
    else if (q)
        answer_happy(w, q);
    else {
        ftimer *t = next_timer(w);
        if (!t)
            fail_msg("stuck: %zu jobs, first %s, %zu writes out", runner_count(w->rn),
                     runner_count(w->rn) ? job_state_name(job0(w)->state) : "-", w->n_writes);
        advance(w, t->due - w->mono);
    }
}

static void step(world *w)
{
    flush(w);
    act(w);
    flush(w);
}

static void run_until(world *w, const job *j, job_state s)
{
    for (int i = 0; i < 400 && j->state != s; i++) {
        if (w->n_writes)
            writes_end(w, 0);
        else
            act(w);
    }
    assert_string_equal(job_state_name(j->state), job_state_name(s));
}

/* Until request op is out. */
static freq *run_until_sent(world *w, job_op op)
{
    for (int i = 0; i < 200; i++) {
        flush(w);
        freq *q = live_req(w);
        if (q && q->op == op)
            return q;
        act(w);
    }
    fail_msg("%s never sent", job_op_name(op));
    return NULL;
}

/* ---- tests ---- */

static void test_happy_path(void **state)
{
    world *w = *state;
    assert_int_equal(runner_recover(w->rn), 0);
    drop(w, "a");
    const job *j = job0(w);
    assert_non_null(j);
    assert_int_equal(runner_count(w->rn), 1);
    run_until(w, j, JOB_READY);
    flush(w);
    assert_int_equal(w->finished_ok, 1);
    assert_true(j->moved);
    assert_string_equal(j->dir, "a.1");
    assert_string_equal(j->source, "a"); /* the entry in incoming/ it was claimed from */
    assert_string_equal(json_str(record_of(w, j), "source"), "a");
    assert_int_equal(w->st_done, 1);
    assert_int_equal(w->st_active, 0);
    assert_true(w->changed > 5);
    assert_int_equal(w->sent[JOB_OP_CREATE_DATASET], 1);
    assert_int_equal(w->sent[JOB_OP_GET_BATCH], 1);
    /* the record on disk is the finished job */
    const cJSON *rec = record_of(w, j);
    assert_string_equal(json_str(rec, "state"), "ready");
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(rec, "moved")));
    bool amb;
    assert_ptr_equal(runner_find(w->rn, j->id, &amb), j);
    assert_ptr_equal(runner_find(w->rn, "a", &amb), j);
    assert_false(amb);
    assert_null(runner_find(w->rn, "zzz", &amb));
    assert_null(runner_job_at(w->rn, 5));
}

/* A create is sent only once its intent is on disk; a failed write sends nothing, and the
 * write after it succeeds sends once. */
static void test_write_before_send(void **state)
{
    world *w = *state;
    drop(w, "a");
    const job *j = job0(w);
    run_until(w, j, JOB_VALIDATING);
    flush(w);
    validation_end(w, live_val(w));
    /* The new state and the intent of the create that follows it go out in one write. */
    assert_int_equal(j->state, JOB_CREATING_DATASET);
    assert_int_equal(j->pending_op, JOB_OP_CREATE_DATASET);
    assert_int_equal(w->n_writes, 1);
    assert_int_equal(w->sent[JOB_OP_CREATE_DATASET], 0);
    /* the write fails: not sent, the intent is withdrawn, retried in 5 s */
    writes_end(w, -ENOSPC);
    assert_int_equal(w->sent[JOB_OP_CREATE_DATASET], 0);
    assert_int_equal(j->pending_op, JOB_OP_NONE);
    assert_int_equal(n_live_reqs(w), 0);
    advance(w, 4999);
    assert_int_equal(w->n_writes, 0);
    advance(w, 1);
    assert_int_equal(w->n_writes, 1); /* the record again, before any step */
    writes_end(w, 0);
    assert_int_equal(w->sent[JOB_OP_CREATE_DATASET], 0);
    assert_int_equal(w->n_writes, 1); /* the intent again */
    writes_end(w, 0);
    const cJSON *rec = record_of(w, j);
    assert_string_equal(json_str(rec, "pending_op"), "create_dataset");
    assert_int_equal(w->sent[JOB_OP_CREATE_DATASET], 1);
    run_until(w, j, JOB_READY);
    assert_int_equal(w->sent[JOB_OP_CREATE_DATASET], 1);
}

/* kill -9: the next start finds what the disk holds now; the writes still out and the
 * requests in flight are lost (whatever the stop below writes is thrown away). */
static void crash(world *w)
{
    cJSON *disk = cJSON_Duplicate(w->records, true);
    stop_runner(w);
    cJSON_Delete(w->records);
    w->records = disk;
    start_runner(w);
    assert_int_equal(runner_recover(w->rn), 0);
}

/* The disk may lag behind the job: it steps on while its record write is out, except that a
 * side-effecting send waits for the write that carries its intent (a reply and that intent
 * share one write). */
static void test_steps_while_write_out(void **state)
{
    world *w = *state;
    drop(w, "a");
    const job *j = job0(w);
    /* Claimed: its first record is still out, yet it validates. */
    assert_int_equal(w->n_writes, 1);
    assert_null(record_of(w, j));
    assert_int_equal(j->state, JOB_VALIDATING);
    validation_end(w, live_val(w));
    /* The create's intent is queued behind the first write: nothing sent, nothing more out. */
    assert_int_equal(j->pending_op, JOB_OP_CREATE_DATASET);
    assert_int_equal(w->n_writes, 1);
    assert_int_equal(n_live_reqs(w), 0);
    assert_int_equal(w->urgent_writes, 0); /* nothing waited for the claim's record */
    writes_end(w, 0);
    assert_string_equal(json_str(record_of(w, j), "state"), "queued");
    assert_int_equal(w->n_writes, 1);      /* the newest record, with the intent */
    assert_int_equal(w->urgent_writes, 1); /* which the create waits for */
    assert_int_equal(n_live_reqs(w), 0);
    writes_end(w, 0);
    assert_string_equal(json_str(record_of(w, j), "pending_op"), "create_dataset");
    freq *q = live_req(w);
    assert_non_null(q);
    assert_int_equal(q->op, JOB_OP_CREATE_DATASET);
    /* The reply and the upload-URL intent: one write, and the request waits for it. */
    answer_happy(w, q);
    assert_int_equal(w->n_writes, 1);
    assert_int_equal(n_live_reqs(w), 0);
    writes_end(w, 0);
    assert_string_equal(json_str(record_of(w, j), "dataset_id"), DATASET);
    assert_string_equal(json_str(record_of(w, j), "pending_op"), "upload_url");
    assert_int_equal(w->n_writes, 0);
    assert_int_equal(live_req(w)->op, JOB_OP_UPLOAD_URL);
    assert_int_equal(w->sent[JOB_OP_CREATE_DATASET], 1);
}

/* A crash while the disk lags behind the job: the older record resumes without sending any
 * side-effecting request twice (the upload's outcome is checked, not redone). */
static void test_crash_while_disk_lags(void **state)
{
    world *w = *state;
    drop(w, "a");
    const job *j = job0(w);
    freq *q = run_until_sent(w, JOB_OP_UPLOAD);
    flush(w);
    answer_happy(w, q); /* uploaded: the job waits for the import */
    assert_int_equal(j->state, JOB_IMPORTING);
    /* Nothing waits for this state: its write is left to the lazy timer, and the job polls
     * whether or not that write has ended (here it never does). */
    assert_int_equal(w->n_writes, 0);
    for (int i = 0; i < 10 && !live_req(w); i++) {
        ftimer *t = next_timer(w);
        assert_non_null(t);
        advance(w, t->due - w->mono);
    }
    q = live_req(w);
    assert_non_null(q);
    assert_int_equal(q->op, JOB_OP_GET_IMPORT);
    /* On disk: still uploading, the PUT's outcome unknown. */
    assert_string_equal(json_str(record_of(w, j), "state"), "uploading");
    assert_string_equal(json_str(record_of(w, j), "pending_op"), "upload");
    crash(w);
    j = job0(w);
    assert_int_equal(j->state, JOB_UPLOADING);
    runner_drive_all(w->rn);
    q = run_until_sent(w, JOB_OP_CHECK_UPLOAD);
    run_until(w, j, JOB_READY);
    flush(w);
    assert_int_equal(w->sent[JOB_OP_CREATE_DATASET], 1);
    assert_int_equal(w->sent[JOB_OP_UPLOAD_URL], 1);
    assert_int_equal(w->sent[JOB_OP_UPLOAD], 1);
    assert_int_equal(w->sent[JOB_OP_CREATE_BATCH], 1);
    assert_int_equal(w->finished_ok, 1);
}

/* A change while a write is out is written after it (out-and-changed), never alongside. */
static void test_write_out_and_changed(void **state)
{
    world *w = *state;
    drop(w, "a");
    const job *j = job0(w);
    run_until(w, j, JOB_VALIDATING);
    flush(w);
    assert_non_null(live_val(w));
    runner_set_paused(w->rn, true);
    validation_end(w, live_val(w));
    /* Paused, nothing waits for the new state: it is written later (the lazy timer). */
    assert_int_equal(w->n_writes, 0);
    ftimer *t = next_timer(w);
    assert_non_null(t);
    advance(w, t->due - w->mono);
    assert_int_equal(w->n_writes, 1);
    assert_int_equal(runner_cancel(w->rn, j), 0); /* changes it while the write is out */
    assert_int_equal(w->n_writes, 1);
    writes_end(w, -EIO); /* fails, but the newer record goes out anyway */
    assert_int_equal(w->n_writes, 1);
    writes_end(w, 0);
    flush(w);
    assert_string_equal(json_str(record_of(w, j), "state"), "cancelled");
    assert_int_equal(w->finished_failed, 1);
}

static void test_send_refused_and_unbuildable(void **state)
{
    world *w = *state;
    drop(w, "a");
    const job *j = job0(w);
    run_until(w, j, JOB_CREATING_DATASET);
    w->refuse_send = true;
    for (int i = 0; i < 10 && j->state == JOB_CREATING_DATASET; i++)
        step(w);
    assert_int_equal(j->state, JOB_FAILED);
    assert_string_equal(j->error_code, "api_rejected");
    flush(w);
    assert_int_equal(w->finished_failed, 1);
    assert_int_equal(runner_cancel(w->rn, j), -EINVAL);
}

/* The job's record as it stands after driving it until `until` (a state, or a request
 * out), then a restart. */
static const job *recovered(world *w, job_state s, job_op op_out)
{
    drop(w, "a");
    const job *j = job0(w);
    if (op_out != JOB_OP_NONE)
        run_until_sent(w, op_out);
    else
        run_until(w, j, s);
    flush(w);
    restart(w);
    assert_int_equal(runner_count(w->rn), 1);
    return job0(w);
}

static void resume_and_finish(world *w, job_state s, job_op op_out)
{
    const job *j = recovered(w, s, op_out);
    assert_int_equal(j->state, op_out == JOB_OP_NONE ? s : j->state);
    runner_drive_all(w->rn);
    run_until(w, j, JOB_READY);
    flush(w);
    assert_int_equal(w->finished_ok, 1);
}

static void test_resume_every_state(void **state)
{
    (void)state;
    static const job_state states[] = {JOB_VALIDATING, JOB_CREATING_DATASET, JOB_UPLOADING,
                                       JOB_IMPORTING,  JOB_CREATING_BATCH,   JOB_SETTING_UP,
                                       JOB_PROCESSING};
    for (size_t i = 0; i < BD_ARRAY_LEN(states); i++) {
        world *w;
        setup((void **)&w);
        resume_and_finish(w, states[i], JOB_OP_NONE);
        teardown((void **)&w);
    }
}

/* Recovered with a call in flight: a side-effecting one left pending_op behind. */
static void test_resume_every_request(void **state)
{
    (void)state;
    /* A job that makes its own batch; an append job's calls: test_job.c, test_append_*. */
    for (int op = JOB_OP_CREATE_DATASET; op <= JOB_OP_GET_BATCH; op++) {
        if (op == JOB_OP_CHECK_UPLOAD || op == JOB_OP_FIND_BATCH || op == JOB_OP_CHECK_SETUP)
            continue; /* only after an unknown outcome */
        world *w;
        setup((void **)&w);
        const job *j = recovered(w, JOB_QUEUED, (job_op)op);
        assert_int_equal(j->pending_op,
                         job_op_has_side_effect((job_op)op) ? (job_op)op : JOB_OP_NONE);
        runner_drive_all(w->rn);
        run_until(w, j, JOB_READY);
        teardown((void **)&w);
    }
}

static void test_resume_edge_cases(void **state)
{
    world *w = *state;
    drop(w, "a");
    run_until(w, job0(w), JOB_READY); /* a: finished long ago, pruned */
    flush(w);
    /* c: finished, not yet moved when it stopped */
    w->finish_rc = -EIO;
    drop(w, "c");
    run_until(w, runner_job_at(w->rn, 1), JOB_READY);
    flush(w);
    assert_false(runner_job_at(w->rn, 1)->moved);
    drop(w, "b");
    run_until(w, runner_job_at(w->rn, 2), JOB_IMPORTING); /* b: its directory vanishes */
    flush(w);
    drop_active(w, "b");
    add_active(w, "orphan"); /* claimed just before a crash, no record */
    w->now += 31LL * 86400 * 1000;
    restart(w);
    w->finish_rc = 0;
    bool amb;
    assert_null(runner_find(w->rn, "a", &amb));
    const job *b = runner_find(w->rn, "b", &amb);
    assert_int_equal(b->state, JOB_FAILED);
    assert_true(b->moved);
    const job *o = runner_find(w->rn, "orphan", &amb);
    assert_non_null(o);
    assert_int_equal(o->state, JOB_QUEUED);
    const job *c = runner_find(w->rn, "c", &amb);
    assert_false(c->moved);
    runner_drive_all(w->rn);
    run_until(w, o, JOB_READY);
    flush(w);
    assert_true(c->moved);

    /* An unreadable record: a directory without one is not resumed. */
    cJSON_AddItemToObject(w->records, "bad", cJSON_CreateString("x"));
    add_active(w, "maybe");
    restart(w);
    assert_int_equal(runner_bad_records(w->rn), 1);
    assert_null(runner_find(w->rn, "maybe", &amb));
    /* Unreadable records dir: refuse to run. */
    w->load_rc = -EACCES;
    stop_runner(w);
    start_runner(w);
    assert_int_equal(runner_recover(w->rn), -EACCES);
}

/* A stop waits for creates and setups; reads are cancelled at once. */
static void test_drain(void **state)
{
    world *w = *state;
    drop(w, "a");
    drop(w, "b");
    const job *a = job0(w);
    const job *b = runner_job_at(w->rn, 1);
    run_until_sent(w, JOB_OP_CREATE_DATASET); /* a's or b's */
    freq *create = live_req(w);
    const job *other = create->cookie && a->pending_op == JOB_OP_CREATE_DATASET ? b : a;
    (void)other;
    /* get the second one to a read in flight */
    for (int i = 0; i < 50 && n_live_reqs(w) < 2; i++) {
        flush(w);
        fval *v = live_val(w);
        if (v)
            validation_end(w, v);
        flush(w);
    }
    size_t creates = 0;
    for (size_t i = 0; i < w->n_reqs; i++)
        creates += w->reqs[i].live && job_op_has_side_effect(w->reqs[i].op);
    assert_true(creates >= 1);
    size_t n = runner_begin_drain(w->rn);
    assert_int_equal(n, creates);
    assert_int_equal(runner_in_flight(w->rn), creates);
    for (freq *q; (q = live_req(w));)
        answer_happy(w, q);
    assert_int_equal(w->ended, (int)creates);
    assert_int_equal(runner_in_flight(w->rn), 0);
    flush(w);
    assert_int_equal(n_live_reqs(w), 0); /* nothing new once stopping */
    runner_claim_soon(w->rn);
    assert_null(next_timer(w));
}

/* Cancel: from every state, with whatever is in flight; then retry runs it to the end. */
static void cancel_in(job_state s)
{
    world *w;
    setup((void **)&w);
    drop(w, "a");
    const job *j = job0(w);
    if (s == JOB_QUEUED) {
        /* A claimed job leaves queued in the step that claims it (its first record write
         * does not hold it up): cancel it while that write is still out. */
        assert_int_equal(j->state, JOB_VALIDATING);
        assert_int_equal(w->n_writes, 1);
    } else {
        run_until(w, j, s);
    }
    assert_int_equal(runner_cancel(w->rn, j), 0);
    assert_int_equal(j->state, JOB_CANCELLED);
    for (fval *v; (v = live_val(w));)
        validation_end(w, v); /* a cancelled validation ends; its result is dropped */
    flush(w);
    assert_int_equal(n_live_reqs(w), 0);
    assert_int_equal(w->finished_failed, 1);
    assert_int_equal(runner_cancel(w->rn, j), -EINVAL);
    assert_int_equal(runner_retry(w->rn, j), 0);
    assert_int_equal(w->st_active, 1);
    run_until(w, j, JOB_READY);
    flush(w);
    assert_int_equal(w->finished_ok, 1);
    teardown((void **)&w);
}

static void test_cancel_and_retry_every_state(void **state)
{
    (void)state;
    for (int s = JOB_QUEUED; s <= JOB_PROCESSING; s++)
        cancel_in((job_state)s);
}

static void test_retry_refused(void **state)
{
    world *w = *state;
    drop(w, "a");
    const job *j = job0(w);
    /* running, not waiting for a retry time */
    assert_int_equal(runner_retry(w->rn, j), -EBUSY);
    w->validation_bad = true;
    run_until(w, j, JOB_FAILED);
    flush(w);
    assert_int_equal(w->finished_failed, 1);
    w->reactivate_rc = -EEXIST;
    assert_int_equal(runner_retry(w->rn, j), -EEXIST);
    assert_int_equal(j->state, JOB_FAILED);
}

/* Failed, but its move to failed/ has not happened yet: refused as such, then accepted. */
static void test_retry_while_moving(void **state)
{
    world *w = *state;
    w->finish_rc = -EIO; /* the move fails and waits to be tried again */
    w->validation_bad = true;
    drop(w, "a");
    const job *j = job0(w);
    run_until(w, j, JOB_FAILED);
    flush(w);
    assert_false(j->moved);
    assert_int_equal(runner_retry(w->rn, j), -EAGAIN);
    assert_int_equal(j->state, JOB_FAILED);
    w->finish_rc = 0;
    advance(w, 5000);
    flush(w);
    assert_true(j->moved);
    assert_int_equal(w->finished_failed, 1);
    w->validation_bad = false;
    assert_int_equal(runner_retry(w->rn, j), 0);
    assert_int_not_equal(j->state, JOB_FAILED);
}

/* Retry on a job waiting for its retry time (a 429 with Retry-After: 30) sends at once, and
 * the attempts made still count. */
static void test_retry_now(void **state)
{
    world *w = *state;
    drop(w, "a");
    const job *j = job0(w);
    freq *q = run_until_sent(w, JOB_OP_CREATE_DATASET);
    assert_int_equal(runner_retry(w->rn, j), -EBUSY); /* a request in flight */
    job_reply r = {.net = JOB_NET_OK,
                   .status = 429,
                   .body = "{}",
                   .body_len = 2,
                   .retry_after = "30",
                   .error_text = "",
                   .secret = "tok"};
    q->live = false;
    q->done(q->cookie, &r, w->token_gen);
    flush(w);
    assert_true(j->retry_at >= w->now + 30000);
    assert_int_equal(j->attempts, 1);
    advance(w, 1000);
    flush(w);
    assert_int_equal(n_live_reqs(w), 0); /* still waiting */
    int sent = w->sent[JOB_OP_CREATE_DATASET];
    assert_int_equal(runner_retry(w->rn, j), 0);
    assert_int_equal(j->retry_at, 0);
    assert_int_equal(j->state, JOB_CREATING_DATASET);
    flush(w); /* the cleared retry time is durable first */
    assert_int_equal(w->sent[JOB_OP_CREATE_DATASET], sent + 1);
    assert_non_null(live_req(w));
    assert_int_equal(j->attempts, 1);
    assert_string_equal(last_note(j),
                        "retry requested by an operator: the next attempt is made now");
    /* once sent it is running again: no second retry-now */
    assert_int_equal(runner_retry(w->rn, j), -EBUSY);
    run_until(w, j, JOB_READY);
    assert_int_equal(runner_retry(w->rn, j), -EINVAL); /* ready */
}

/* The backlog: entries in incoming/ not claimed, and those that wait for a slot or a pause. */
static void test_backlog_counts(void **state)
{
    world *w = *state;
    job_params p;
    job_params_default(&p);
    runner_configure(w->rn, &p, 1);
    runner_set_paused(w->rn, true);
    w->incoming[w->n_incoming++] = xstrdup("a");
    runner_incoming_changed(w->rn);
    advance(w, 1);
    assert_int_equal(runner_count(w->rn), 0);
    assert_int_equal(runner_incoming(w->rn), 1);
    assert_int_equal(runner_waiting_for_slot(w->rn), 1);
    /* a burst within RUNNER_COUNT_MIN_MS: counted once at the end of it */
    w->incoming[w->n_incoming++] = xstrdup("b");
    runner_incoming_changed(w->rn);
    advance(w, 1);
    w->incoming[w->n_incoming++] = xstrdup("c");
    runner_incoming_changed(w->rn);
    advance(w, 1);
    advance(w, 100);
    assert_int_equal(runner_incoming(w->rn), 3);
    assert_int_equal(runner_waiting_for_slot(w->rn), 3);
    /* resumed, one slot: one claimed, two wait for it */
    runner_set_paused(w->rn, false);
    advance(w, 1);
    assert_int_equal(runner_count(w->rn), 1);
    assert_int_equal(runner_incoming(w->rn), 2);
    assert_int_equal(runner_waiting_for_slot(w->rn), 2);
    run_until(w, job0(w), JOB_READY);
    flush(w);
    advance(w, 1);
    assert_int_equal(runner_count(w->rn), 2);
    assert_int_equal(runner_incoming(w->rn), 1);
    assert_int_equal(runner_waiting_for_slot(w->rn), 1);
    /* room for all: nothing waits for a slot */
    runner_configure(w->rn, &p, 8);
    assert_int_equal(runner_waiting_for_slot(w->rn), 0);
}

/* The count of incoming/ runs on the pool: the loop waits for nothing, one count is out at a
 * time, and what changed while it ran is counted again; a count that ends after runner_free
 * is dropped. */
static void test_backlog_count_deferred(void **state)
{
    world *w = *state;
    w->defer_count = true;
    runner_set_paused(w->rn, true);
    w->incoming[w->n_incoming++] = xstrdup("a");
    runner_incoming_changed(w->rn);
    advance(w, 1);
    assert_int_equal(w->counts, 1);
    assert_int_equal(runner_incoming(w->rn), 0); /* not counted yet */
    w->incoming[w->n_incoming++] = xstrdup("b");
    runner_incoming_changed(w->rn);
    advance(w, 200);
    assert_int_equal(w->counts, 1); /* one at a time */
    count_end(w);
    assert_int_equal(runner_incoming(w->rn), 2);
    advance(w, 100); /* b's change came during the count: counted again */
    assert_int_equal(w->counts, 2);
    w->incoming[w->n_incoming++] = xstrdup("c");
    count_end(w);
    assert_int_equal(runner_incoming(w->rn), 3);
    advance(w, 1000);
    assert_int_equal(w->counts, 2); /* nothing changed since */
    /* resumed: the claim takes one off at once, and the count out may have seen it or not */
    runner_incoming_changed(w->rn);
    advance(w, 1);
    assert_int_equal(w->counts, 3);
    runner_set_paused(w->rn, false);
    advance(w, 1);
    assert_int_equal(runner_count(w->rn), 3);
    assert_int_equal(runner_incoming(w->rn), 0);
    count_end(w); /* the claims started during the count: it is counted again */
    advance(w, 100);
    assert_int_equal(w->counts, 4);
    count_end(w);
    assert_int_equal(runner_incoming(w->rn), 0);
    /* a count still out when the runner goes: teardown ends it after runner_free */
    runner_incoming_changed(w->rn);
    advance(w, 100);
    assert_int_equal(w->counts, 5);
    assert_non_null(w->count_done);
}

static void test_claim_failures(void **state)
{
    world *w = *state;
    /* stuck: cannot be renamed; left out of scans, tried again after a minute */
    w->claim_rc = -EACCES;
    drop(w, "stuck");
    assert_int_equal(runner_count(w->rn), 0);
    assert_int_equal(runner_stuck_count(w->rn), 1);
    w->claim_rc = 0;
    drop(w, "good");
    assert_int_equal(runner_count(w->rn), 1);
    assert_int_equal(runner_stuck_count(w->rn), 1);
    advance(w, 60000);
    runner_claim_soon(w->rn);
    advance(w, 1);
    assert_int_equal(runner_stuck_count(w->rn), 0);
    assert_int_equal(runner_count(w->rn), 2);
    /* rejected: a failed job with its error, already in failed/ */
    w->claim_kind = RUNNER_REJECTED;
    drop(w, "fifo");
    flush(w);
    bool amb;
    const job *r = runner_find(w->rn, "fifo", &amb);
    assert_non_null(r);
    assert_int_equal(r->state, JOB_FAILED);
    assert_true(r->moved);
    assert_string_equal(r->error_code, "unsupported_entry");
    /* gone: someone else took it */
    w->claim_kind = RUNNER_GONE;
    drop(w, "gone");
    assert_int_equal(runner_count(w->rn), 3);
    /* a scan that fails claims nothing */
    w->claim_kind = RUNNER_CLAIMED;
    w->scan_rc = -EIO;
    drop(w, "later");
    assert_int_equal(runner_count(w->rn), 3);
    /* max_active bounds the claims */
    w->scan_rc = 0;
    job_params p;
    job_params_default(&p);
    runner_configure(w->rn, &p, 2);
    drop(w, "x");
    assert_int_equal(runner_count(w->rn), 3);
}

/* A 401 holds: the job stays where it is and the owner is told the token's generation. */
static void test_token_hold(void **state)
{
    world *w = *state;
    drop(w, "a");
    const job *j = job0(w);
    run_until_sent(w, JOB_OP_CREATE_DATASET);
    w->token_gen = 7;
    answer(w, 401, "{\"detail\":\"bad token\"}");
    assert_int_equal(w->rejected, 1);
    assert_int_equal(w->rejected_gen, 7);
    assert_int_equal(j->state, JOB_CREATING_DATASET);
    runner_set_paused(w->rn, true); /* what the owner does */
    flush(w);
    advance(w, 600000);
    flush(w);
    assert_int_equal(n_live_reqs(w), 0);
    runner_set_paused(w->rn, false);
    flush(w);
    run_until(w, j, JOB_READY);
}

/* Paused: no claims, no sends, and the wait of a pause does not count toward a timeout. */
static void test_pause(void **state)
{
    world *w = *state;
    drop(w, "a");
    const job *j = job0(w);
    run_until(w, j, JOB_IMPORTING);
    flush(w);
    int64_t started = j->wait_started_at, paused_at = w->now;
    runner_set_paused(w->rn, true);
    drop(w, "b");
    assert_int_equal(runner_count(w->rn), 1); /* no claim */
    advance(w, 3600000);
    flush(w);
    assert_int_equal(n_live_reqs(w), 0); /* no poll */
    runner_set_paused(w->rn, false);
    assert_int_equal(j->wait_started_at, started + (w->now - paused_at));
    advance(w, 1);
    assert_int_equal(runner_count(w->rn), 2);
    run_until(w, j, JOB_READY);
}

/* Upload errors the machine classifies: the data changed (aborted) or the file is gone. */
static void test_upload_file_errors(void **state)
{
    world *w = *state;
    drop(w, "a");
    const job *j = job0(w);
    freq *q = run_until_sent(w, JOB_OP_UPLOAD);
    answer_net(w, q, JOB_NET_CHANGED, 0, NULL);
    assert_int_equal(j->state, JOB_FAILED);
    assert_non_null(strstr(j->error_message, "aborted before its end"));
    flush(w);
    drop(w, "b");
    j = runner_job_at(w->rn, 1);
    q = run_until_sent(w, JOB_OP_UPLOAD);
    answer_net(w, q, JOB_NET_FILE, 0, NULL);
    assert_int_equal(j->state, JOB_FAILED);
    assert_non_null(strstr(j->error_message, "must stay as validated"));
}

/* Every ended request reaches request_done with its endpoint, status, latency, whether it is
 * retried and why, and an upload's bytes. */
static void test_request_done(void **state)
{
    world *w = *state;
    drop(w, "a");
    freq *q = run_until_sent(w, JOB_OP_CREATE_DATASET);
    advance(w, 0);
    w->mono += 40;
    answer_net(w, q, JOB_NET_OK, 503, "{}");
    assert_int_equal(w->n_done_reqs, 1);
    runner_request_info *i = &w->done_reqs[0];
    assert_int_equal(i->op, JOB_OP_CREATE_DATASET);
    assert_int_equal(i->status, 503);
    assert_int_equal(i->latency_ms, 40);
    assert_string_equal(i->retry_reason, "server_error");
    q = run_until_sent(w, JOB_OP_CREATE_DATASET);
    answer_net(w, q, JOB_NET_TIMEOUT, 0, NULL);
    assert_int_equal(w->done_reqs[1].status, 0);
    assert_string_equal(w->done_reqs[1].retry_reason, "timeout");
    q = run_until_sent(w, JOB_OP_CREATE_DATASET);
    answer_happy(w, q);
    assert_null(w->done_reqs[w->n_done_reqs - 1].retry_reason);
    q = run_until_sent(w, JOB_OP_UPLOAD);
    answer_happy(w, q);
    i = &w->done_reqs[w->n_done_reqs - 1];
    assert_int_equal(i->op, JOB_OP_UPLOAD);
    assert_int_equal(i->status, 200);
    assert_int_equal(i->upload_bytes, 60);
    assert_null(i->retry_reason);
}

/* Transport errors retry; a validation that cannot start and a move that fails are retried. */
static void test_retries_of_io(void **state)
{
    world *w = *state;
    w->validate_rc = -EAGAIN;
    drop(w, "a");
    const job *j = job0(w);
    flush(w);
    assert_null(live_val(w));
    w->validate_rc = 0;
    advance(w, 5000);
    assert_non_null(live_val(w));
    freq *q = run_until_sent(w, JOB_OP_CREATE_DATASET);
    answer_net(w, q, JOB_NET_TIMEOUT, 0, NULL);
    flush(w);
    assert_int_equal(j->state, JOB_CREATING_DATASET);
    w->finish_rc = -EIO;
    run_until(w, j, JOB_READY);
    flush(w);
    assert_false(j->moved);
    w->finish_rc = 0;
    advance(w, 5000);
    flush(w);
    assert_true(j->moved);
    assert_int_equal(w->finished_hooks, 1);
}

static void test_finish_dir_gone(void **state)
{
    world *w = *state;
    drop(w, "a");
    const job *j = job0(w);
    w->finish_rc = -ENOENT;
    run_until(w, j, JOB_READY);
    flush(w);
    assert_true(j->moved); /* nothing to move, and no retry can help */
    assert_int_equal(w->st_done, 1);
    /* Its files are not in done/: a hook would get a result.json that does not exist. */
    assert_int_equal(w->finished_hooks, 0);
}

/* Validation slots: RUNNER_VALIDATIONS_MAX at once, the next waits for a free one. */
static void test_validation_slots(void **state)
{
    world *w = *state;
    for (int i = 0; i <= RUNNER_VALIDATIONS_MAX; i++) {
        char name[8];
        snprintf(name, sizeof name, "v%d", i);
        drop(w, name);
    }
    flush(w);
    for (int i = 0; i < 5; i++)
        flush(w);
    size_t live = 0;
    for (size_t i = 0; i < w->n_vals; i++)
        live += w->vals[i].live;
    assert_int_equal(live, RUNNER_VALIDATIONS_MAX);
    validation_end(w, live_val(w));
    flush(w);
    live = 0;
    for (size_t i = 0; i < w->n_vals; i++)
        live += w->vals[i].live;
    assert_int_equal(live, RUNNER_VALIDATIONS_MAX);
}

/* Stopping with a write and a validation out: the newest record is written, and the jobs
 * are freed only once the backends let go of them. */
static void test_stop_with_work_out(void **state)
{
    world *w = *state;
    drop(w, "a");
    drop(w, "b");
    run_until(w, job0(w), JOB_VALIDATING);
    flush(w);
    const job *b = runner_job_at(w->rn, 1);
    assert_int_equal(b->state, JOB_VALIDATING);
    fval *v = live_val(w);
    validation_end(w, v); /* a write is out now */
    assert_true(w->n_writes > 0);
    int now_before = w->writes_now;
    runner_shutdown(w->rn);
    assert_true(w->writes_now > now_before); /* the jobs without a write out */
    runner_free(w->rn);
    w->rn = NULL;
    writes_end(w, -EIO); /* failed: written again at once */
    for (size_t i = 0; i < w->n_vals; i++)
        if (w->vals[i].live)
            validation_end(w, &w->vals[i]);
    w->n_vals = 0;
    start_runner(w);
}

/* The claims of one batch (more_follow on all but the last): each job is announced as its
 * claim is handed over, and their records and validations start only after the last, so the
 * last claim of a burst is not announced after all the others' first steps. */
static void test_claims_batch_announced_first(void **state)
{
    world *w = *state;
    w->defer_claims = true;
    const char *entries[] = {"a", "b", "c"};
    for (size_t i = 0; i < 3; i++)
        w->incoming[w->n_incoming++] = xstrdup(entries[i]);
    runner_claim_soon(w->rn);
    advance(w, 1); /* one turn: one batch of three */
    assert_int_equal(w->n_claims, 3);
    size_t n = w->n_claims;
    w->n_claims = 0;
    int published = w->changed;
    for (size_t i = 0; i < n; i++) {
        char dir[256];
        snprintf(dir, sizeof dir, "/spool/active/%s", w->claim_entries[i]);
        runner_claim c = {.kind = RUNNER_CLAIMED,
                          .job_dir = dir,
                          .job_name = w->claim_entries[i],
                          .more_follow = i + 1 < n};
        drop_incoming(w, w->claim_entries[i]);
        add_active(w, w->claim_entries[i]);
        w->claim_dones[i](w->claim_cookies[i], 0, &c);
        free(w->claim_entries[i]);
        assert_int_equal(runner_count(w->rn), i + 1);
        if (i + 1 < n) {
            assert_int_equal(w->changed, published + (int)i + 1); /* announced at once */
            assert_int_equal(w->n_writes, 0);
            assert_int_equal(w->n_vals, 0);
        }
    }
    assert_int_equal(w->n_writes, 3); /* the three first records, then their validations */
    assert_true(w->n_vals > 0);
}

/* Claims that end later, as on the pool: counted against max_active while out, and one that
 * ends after runner_free is dropped (its entry is adopted from active/ on the next start). */
static void test_claims_out(void **state)
{
    world *w = *state;
    job_params p;
    job_params_default(&p);
    runner_configure(w->rn, &p, 2);
    w->defer_claims = true;
    drop(w, "a");
    drop(w, "b");
    drop(w, "c");
    assert_int_equal(w->n_claims, 2); /* max_active counts the claims out */
    assert_int_equal(runner_count(w->rn), 0);
    w->st_active = 0;
    claims_end(w);
    assert_int_equal(runner_count(w->rn), 2);
    assert_int_equal(w->st_active, 2); /* the status counts claims that ended after their turn */
    run_until(w, job0(w), JOB_READY);
    flush(w); /* the READY record is durable, then the job moves and frees its slot */
    runner_claim_soon(w->rn);
    advance(w, 1);
    assert_int_equal(w->n_claims, 1);
    runner_shutdown(w->rn);
    runner_free(w->rn); /* the claim of c is still out: it holds the runner */
    w->rn = NULL;
    claims_end(w);
    writes_end(w, 0);
    for (size_t i = 0; i < w->n_vals; i++)
        if (w->vals[i].live) {
            w->vals[i].cancelled = true;
            validation_end(w, &w->vals[i]);
        }
    for (size_t i = 0; i < w->n_reqs; i++)
        free(w->reqs[i].path);
    w->n_reqs = 0;
    w->n_vals = 0;
    w->defer_claims = false;
    start_runner(w);
    assert_int_equal(runner_recover(w->rn), 0);
    bool amb;
    assert_non_null(runner_find(w->rn, "c", &amb)); /* adopted from active/ */
}

/* A stuck entry whose retry is out (a backend claims on the pool) is not retried again by
 * the next claim turn: one claim per entry at a time. */
static void test_stuck_retry_once(void **state)
{
    world *w = *state;
    w->claim_rc = -EACCES;
    drop(w, "stuck");
    assert_int_equal(runner_stuck_count(w->rn), 1);
    w->claim_rc = 0;
    w->defer_claims = true;
    advance(w, 60000);
    runner_claim_soon(w->rn);
    advance(w, 1);
    assert_int_equal(w->n_claims, 1); /* the retry of "stuck", out */
    drop(w, "good"); /* a claim turn while the retry of "stuck" is out, and still due */
    assert_int_equal(w->n_claims, 2); /* "good" only: "stuck" is not claimed twice */
    assert_string_equal(w->claim_entries[0], "stuck");
    assert_string_equal(w->claim_entries[1], "good");
    claims_end(w);
    w->defer_claims = false;
    assert_int_equal(runner_stuck_count(w->rn), 0);
    assert_int_equal(runner_count(w->rn), 2);
}

/* A finished job's record, as a restart finds it; without "source", as older records are. */
static void put_finished(world *w, const char *id, const char *name)
{
    char *text = xasprintf("{\"version\":%d,\"id\":\"%s\",\"name\":\"%s\",\"dir\":\"%s\","
                           "\"state\":\"ready\",\"moved\":true,\"created_at\":%lld,"
                           "\"finished_at\":%lld}",
                           1, id, name, name, (long long)w->now, (long long)w->now);
    put_record(w, text);
    free(text);
}

/* JOB references: exact id, then exact name, then a unique id prefix of 4 or more characters;
 * an ambiguous prefix names its candidates and resolves to none of them. */
static void test_find_prefix(void **state)
{
    world *w = *state;
    put_finished(w, "01HZZZAAAA00000000000000A1", "alpha");
    put_finished(w, "01HZZZAAAA00000000000000B2", "beta");
    put_finished(w, "01HZZZBBBB00000000000000C3", "01HZZZAAAA"); /* a name like a prefix */
    restart(w);
    assert_int_equal(runner_count(w->rn), 3);
    bool amb;
    const job *a = runner_find(w->rn, "01HZZZAAAA00000000000000A1", &amb);
    assert_non_null(a);
    assert_false(amb);
    assert_string_equal(a->name, "alpha");
    assert_null(a->source); /* an old record without source reads fine */
    const job *b = runner_find(w->rn, "beta", &amb);
    assert_false(amb);
    assert_string_equal(b->id, "01HZZZAAAA00000000000000B2");
    /* A unique prefix, down to 4 characters. */
    const job *c = runner_find(w->rn, "01HZZZB", &amb);
    assert_false(amb);
    assert_string_equal(c->id, "01HZZZBBBB00000000000000C3");
    assert_ptr_equal(runner_find(w->rn, "01HZZZAAAA00000000000000B", &amb), b);
    assert_false(amb);
    /* Fewer than 4 characters is never a prefix. */
    assert_null(runner_find(w->rn, "01H", &amb));
    assert_false(amb);
    assert_null(runner_find(w->rn, "01HZZZX", &amb));
    assert_false(amb);
    /* A name wins over a prefix it also is. */
    assert_ptr_equal(runner_find(w->rn, "01HZZZAAAA", &amb), c);
    assert_false(amb);
    /* Ambiguous: the candidates, never one of them as the answer. */
    assert_non_null(runner_find(w->rn, "01HZ", &amb));
    assert_true(amb);
    const char *ids[4] = {0};
    assert_int_equal(runner_candidates(w->rn, "01HZ", ids, 4), 3);
    runner_find(w->rn, "01HZZZAAAA0", &amb);
    assert_true(amb);
    assert_int_equal(runner_candidates(w->rn, "01HZZZAAAA0", ids, 4), 2);
    assert_true((strcmp(ids[0], a->id) == 0 && strcmp(ids[1], b->id) == 0) ||
                (strcmp(ids[1], a->id) == 0 && strcmp(ids[0], b->id) == 0));
    /* The candidates of an ambiguous name are its jobs; max bounds what is filled in. */
    put_finished(w, "01HZZZCCCC00000000000000D4", "beta");
    restart(w);
    runner_find(w->rn, "beta", &amb);
    assert_true(amb);
    ids[1] = NULL;
    assert_int_equal(runner_candidates(w->rn, "beta", ids, 1), 2);
    assert_null(ids[1]);
}

static bool history_has(const job *j, const char *needle)
{
    const cJSON *h;
    cJSON_ArrayForEach(h, j->history)
    {
        const char *n = json_str(h, "note");
        if (n && strstr(n, needle))
            return true;
    }
    return false;
}

/* Append jobs: the target is resolved on the loop and its kept schema given to a second
 * validation; two appends to one dataset run one at a time in claim order, the later held in
 * queued with a note naming the one ahead; a missing target fails locally, with no request. */
static void test_append_one_at_a_time(void **state)
{
    world *w = *state;
    assert_int_equal(runner_recover(w->rn), 0);
    drop(w, "t");
    const job *t = job0(w);
    run_until(w, t, JOB_READY);
    flush(w);
    /* A finished ready job keeps its schema (and nothing else of its spec) for appends. */
    assert_non_null(cJSON_GetObjectItem(cJSON_GetObjectItem(t->spec, "dataset"), "schema"));
    assert_null(cJSON_GetObjectItem(t->spec, "batch"));
    w->spec = "{\"append_to\":\"t\",\"dataset\":{\"file\":\"d.jsonl\"}}";
    drop(w, "a1");
    drop(w, "a2");
    const job *a1 = runner_job_at(w->rn, 1), *a2 = runner_job_at(w->rn, 2);
    assert_string_equal(a1->name, "a1");
    assert_string_equal(a2->name, "a2");
    run_until(w, a1, JOB_UPLOADING);
    assert_true(w->got_target_schema);
    run_until(w, a1, JOB_SYNCING);
    flush(w);
    assert_int_equal(a2->state, JOB_QUEUED);
    assert_true(history_has(a2, "waits for a1 ("));
    assert_true(a1->append.on);
    assert_string_equal(a1->append.target_job_id, t->id);
    assert_string_equal(a1->dataset_id, DATASET);
    run_until(w, a1, JOB_READY);
    run_until(w, a2, JOB_READY);
    flush(w);
    assert_int_equal(w->sent[JOB_OP_CREATE_DATASET], 1);
    assert_int_equal(w->sent[JOB_OP_CREATE_BATCH], 1);
    assert_int_equal(w->sent[JOB_OP_UPLOAD_URL], 3);
    assert_int_equal(w->sent[JOB_OP_SYNC], 2);
    /* A target nobody knows: invalid_job naming it, nothing sent. */
    size_t reqs = w->n_reqs;
    w->spec = "{\"append_to\":\"nope\",\"dataset\":{\"file\":\"d.jsonl\"}}";
    drop(w, "a3");
    const job *a3 = runner_job_at(w->rn, 3);
    run_until(w, a3, JOB_FAILED);
    assert_string_equal(a3->error_code, "invalid_job");
    assert_non_null(strstr(a3->error_message, "nope"));
    assert_int_equal(w->n_reqs, reqs);
    /* A target still running: invalid_job, "not ready", nothing sent for the append. */
    w->spec = NULL;
    drop(w, "r");
    const job *r = runner_job_at(w->rn, 4);
    run_until(w, r, JOB_UPLOADING);
    flush(w);
    int sent_before = w->sent[JOB_OP_UPLOAD_URL];
    w->spec = "{\"append_to\":\"r\",\"dataset\":{\"file\":\"d.jsonl\"}}";
    drop(w, "a4");
    const job *a4 = runner_job_at(w->rn, 5);
    run_until(w, a4, JOB_FAILED);
    assert_string_equal(a4->error_code, "invalid_job");
    assert_non_null(strstr(a4->error_message, "not ready"));
    assert_int_equal(w->sent[JOB_OP_UPLOAD_URL], sent_before);
    assert_false(a4->append.on);
    /* An append named as its target (a standing batch's next file): the ready t, not
     * itself, which runner_find would prefer as the one unfinished "t". */
    w->spec = "{\"append_to\":\"t\",\"dataset\":{\"file\":\"d.jsonl\"}}";
    drop(w, "t");
    const job *t2 = runner_job_at(w->rn, 6);
    assert_string_equal(t2->name, "t");
    run_until(w, t2, JOB_UPLOADING);
    assert_string_equal(t2->append.target_job_id, t->id);
    run_until(w, t2, JOB_READY);
    flush(w);
    /* The next day's "t": two ready namesakes now, the one that made the batch is the
     * target (the other only appended to it). */
    drop(w, "t");
    const job *t3 = runner_job_at(w->rn, 7);
    run_until(w, t3, JOB_UPLOADING);
    assert_string_equal(t3->append.target_job_id, t->id);
    /* Never an id prefix: a mistyped target fails, naming it. */
    char prefix[9];
    snprintf(prefix, sizeof prefix, "%.8s", t->id);
    char *spec = xasprintf("{\"append_to\":\"%s\",\"dataset\":{\"file\":\"d.jsonl\"}}", prefix);
    w->spec = spec;
    drop(w, "p");
    const job *p = runner_job_at(w->rn, 8);
    run_until(w, p, JOB_FAILED);
    assert_non_null(strstr(p->error_message, prefix));
    w->spec = NULL;
    free(spec);
}

/* ---- exports ---- */

#define EXPORT_ID "01935c2d-bbbb-4c4d-8e6f-7a8b9c0d1e2f"

static const job *ready_job(world *w)
{
    assert_int_equal(runner_recover(w->rn), 0);
    drop(w, "a");
    const job *j = job0(w);
    run_until(w, j, JOB_READY);
    flush(w);
    assert_true(j->moved);
    return j;
}

static void configure_exports(world *w, int64_t interval_ms)
{
    runner_export_config c = {.interval_ms = interval_ms, .window_ms = 86400000, .keep = 2};
    export_params_default(&c.params);
    c.params.poll_initial_ms = 100;
    c.params.poll_max_ms = 1000;
    runner_configure_export(w->rn, &c);
}

static const char *complete_body(world *w)
{
    static char buf[256];
    char exp[40];
    snprintf(buf, sizeof buf,
             "{\"status\":\"complete\",\"url\":\"http://127.0.0.1:1/_download/x.zip?sig=1\","
             "\"expires_at\":\"%s\"}",
             time_format_rfc3339(w->now + 3600000, false, exp, sizeof exp));
    return buf;
}

/* One export of a ready job: its POST sent only once its intent is on disk, the status
 * polled, the download and the DELETE after it; the ZIP pruned to keep and reported; Job
 * and record carry it. */
static void test_export_flow(void **state)
{
    world *w = *state;
    const job *j = ready_job(w);
    configure_exports(w, 0);
    assert_int_equal(runner_export(w->rn, j), 0);
    assert_non_null(j->export);
    /* the request's own write, then the intent's: nothing sent before both are durable */
    for (int i = 0; i < 4 && w->exp_sent[EXPORT_OP_REQUEST] == 0; i++) {
        assert_int_equal(n_live_reqs(w) + (live_exp(w) != NULL), 0);
        assert_true(w->n_writes > 0);
        writes_end(w, 0);
    }
    assert_int_equal(w->exp_sent[EXPORT_OP_REQUEST], 1);
    assert_string_equal(
        json_str(cJSON_GetObjectItemCaseSensitive(record_of(w, j), "export"), "state"),
        "requested");
    assert_string_equal(live_exp(w)->path, "/api/v1/data-collection/batches/" BATCH "/export");
    /* asked again while in progress: followed, nothing new sent */
    assert_int_equal(runner_export(w->rn, j), 0);
    assert_int_equal(w->exp_sent[EXPORT_OP_REQUEST], 1);
    exp_answer(w, 202, "{\"status\":\"generating\",\"export_id\":\"" EXPORT_ID "\"}", NULL);
    flush(w);
    assert_int_equal(j->export->state, EXPORT_GENERATING);
    advance(w, 1000);
    flush(w);
    assert_int_equal(live_exp(w)->op, EXPORT_OP_STATUS);
    exp_answer(w, 200, complete_body(w), NULL);
    flush(w);
    struct fexp *d = live_exp(w);
    assert_non_null(d);
    assert_int_equal(d->op, EXPORT_OP_DOWNLOAD);
    assert_string_equal(d->job_dir, "a.1");
    assert_non_null(strstr(d->path, "/_download/x.zip"));
    exp_answer(w, 200, NULL, "exports/20251129T083245Z.zip");
    flush(w);
    assert_int_equal(j->export->state, EXPORT_COMPLETE);
    assert_int_equal(w->export_dones, 1);
    assert_int_equal(w->prunes, 1);
    assert_int_equal(w->prune_keep, 2);
    assert_string_equal(w->prune_protect, "20251129T083245Z.zip");
    assert_int_equal(live_exp(w)->op, EXPORT_OP_DELETE);
    exp_answer(w, 204, NULL, NULL);
    flush(w);
    assert_null(live_exp(w));
    assert_int_equal(w->export_reqs_done, 4);
    cJSON *pub = job_to_public(j, false);
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(pub, "export");
    assert_string_equal(json_str(e, "state"), "complete");
    assert_string_equal(json_str(e, "path"), "exports/20251129T083245Z.zip");
    cJSON_Delete(pub);
    const cJSON *rec = cJSON_GetObjectItemCaseSensitive(record_of(w, j), "export");
    assert_string_equal(json_str(rec, "state"), "complete");
    char *text = json_print(rec);
    assert_null(strstr(text, "sig=1")); /* the URL is never in a record */
    free(text);
    /* a finished export starts over when asked again; refused outright, it fails, once */
    assert_int_equal(runner_export(w->rn, j), 0);
    flush(w);
    assert_int_equal(w->exp_sent[EXPORT_OP_REQUEST], 2);
    exp_answer(w, 400, "{\"error\":{\"detail\":\"no responses\"}}", NULL);
    flush(w);
    assert_int_equal(j->export->state, EXPORT_FAILED);
    assert_int_equal(w->export_faileds, 1);
    assert_int_equal(w->export_dones, 1);
}

/* Only a ready job in done/ is exported; a 401 to an export call holds like a job's. */
static void test_export_refused_and_token(void **state)
{
    world *w = *state;
    assert_int_equal(runner_recover(w->rn), 0);
    drop(w, "a");
    const job *j = job0(w);
    configure_exports(w, 0);
    assert_int_equal(runner_export(w->rn, j), -EINVAL);
    run_until(w, j, JOB_READY);
    flush(w);
    assert_int_equal(runner_export(w->rn, j), 0);
    flush(w);
    exp_answer(w, 401, "{\"error\":{\"detail\":\"bad token\"}}", NULL);
    flush(w);
    assert_int_equal(w->rejected, 1);
    assert_int_equal(j->export->state, EXPORT_REQUESTED);
    assert_null(j->export->error);
}

/* Asks for j's export and lets the writes end until its POST is out (write before send). */
static void export_sent(world *w, const job *j)
{
    assert_int_equal(runner_export(w->rn, j), 0);
    for (int i = 0; i < 4 && !live_exp(w); i++)
        writes_end(w, 0);
    assert_non_null(live_exp(w));
}

/* Stopping with an export POST out: it is left to end (it makes an export job at the API;
 * cut, the restart would make another), a status poll is cut. */
static void test_export_drain(void **state)
{
    world *w = *state;
    const job *j = ready_job(w);
    configure_exports(w, 0);
    export_sent(w, j);
    assert_int_equal(live_exp(w)->op, EXPORT_OP_REQUEST);
    assert_int_equal(runner_begin_drain(w->rn), 1);
    assert_int_equal(runner_in_flight(w->rn), 1);
    int ended = w->ended;
    exp_answer(w, 202, "{\"status\":\"generating\",\"export_id\":\"" EXPORT_ID "\"}", NULL);
    assert_int_equal(runner_in_flight(w->rn), 0);
    assert_int_equal(w->ended, ended + 1);
    flush(w);
    assert_null(live_exp(w)); /* nothing new once stopping */
    const cJSON *rec = cJSON_GetObjectItemCaseSensitive(record_of(w, j), "export");
    assert_string_equal(json_str(rec, "export_id"), EXPORT_ID);

    /* The next start comes long after the job finished: a record old enough to be pruned is
     * kept while its export has work left, and the export resumes from it. */
    w->now += 31LL * 86400 * 1000;
    restart(w);
    bool amb;
    const job *k = runner_find(w->rn, "a", &amb);
    assert_non_null(k);
    assert_non_null(k->export);
    assert_int_equal(k->export->state, EXPORT_GENERATING);
    assert_string_equal(k->export->export_id, EXPORT_ID);
}

/* An export that times out while generating (the machine's own decision, no reply) is
 * counted as failed, and its API job is deleted. */
static void test_export_generate_timeout(void **state)
{
    world *w = *state;
    const job *j = ready_job(w);
    runner_export_config c = {.window_ms = 86400000, .keep = 2};
    export_params_default(&c.params);
    c.params.poll_initial_ms = 100;
    c.params.poll_max_ms = 1000;
    c.params.generate_timeout_ms = 5000;
    runner_configure_export(w->rn, &c);
    export_sent(w, j);
    exp_answer(w, 202, "{\"status\":\"generating\",\"export_id\":\"" EXPORT_ID "\"}", NULL);
    for (int i = 0; i < 100 && j->export->state == EXPORT_GENERATING; i++) {
        flush(w);
        if (live_exp(w))
            exp_answer(w, 200, "{\"status\":\"generating\"}", NULL);
        else
            advance(w, 500);
    }
    assert_int_equal(j->export->state, EXPORT_FAILED);
    assert_int_equal(w->export_faileds, 1);
    flush(w);
    assert_int_equal(live_exp(w)->op, EXPORT_OP_DELETE);
}

/* [export] interval requests an export of each ready job; a restart resumes one that was
 * downloading by asking for a fresh URL, and has the temporary file removed. */
static void test_export_interval_and_recovery(void **state)
{
    world *w = *state;
    const job *j = ready_job(w);
    configure_exports(w, 5000);
    advance(w, 4999);
    assert_null(j->export);
    advance(w, 1);
    flush(w);
    assert_non_null(j->export);
    assert_int_equal(w->exp_sent[EXPORT_OP_REQUEST], 1);
    exp_answer(w, 202, "{\"status\":\"generating\",\"export_id\":\"" EXPORT_ID "\"}", NULL);
    flush(w);
    advance(w, 1000);
    flush(w);
    exp_answer(w, 200, complete_body(w), NULL);
    flush(w);
    assert_int_equal(live_exp(w)->op, EXPORT_OP_DOWNLOAD);
    restart(w);
    configure_exports(w, 0);
    assert_int_equal(w->cleans, 1);
    j = job0(w);
    assert_int_equal(j->export->state, EXPORT_DOWNLOADING);
    assert_null(j->export->url);
    runner_drive_all(w->rn);
    flush(w);
    assert_int_equal(live_exp(w)->op, EXPORT_OP_STATUS);
}

/* The process died after the ZIP was renamed into place, before the record said so: the next
 * start takes that ZIP (what the backend finds written since the request) instead of
 * downloading it again, reports it once, and goes on to the DELETE. */
static void test_export_placed_before_crash(void **state)
{
    world *w = *state;
    const job *j = ready_job(w);
    configure_exports(w, 0);
    export_sent(w, j);
    exp_answer(w, 200, complete_body(w), NULL);
    flush(w);
    assert_int_equal(live_exp(w)->op, EXPORT_OP_DOWNLOAD);
    int64_t requested = j->export->requested_at;
    assert_true(requested > 0);
    w->placed_zip = "exports/20261202T104500Z.zip";
    restart(w);
    configure_exports(w, 0);
    assert_int_equal(w->cleans, 1);
    assert_int_equal(w->clean_since, requested);
    j = job0(w);
    assert_int_equal(j->export->state, EXPORT_COMPLETE);
    assert_string_equal(j->export->path, "exports/20261202T104500Z.zip");
    int dones = w->export_dones;
    runner_drive_all(w->rn);
    flush(w);
    assert_int_equal(w->export_dones, dones + 1); /* on_export, after the start */
    const cJSON *rec = cJSON_GetObjectItemCaseSensitive(record_of(w, j), "export");
    assert_string_equal(json_str(rec, "state"), "complete");
    assert_string_equal(json_str(rec, "path"), "exports/20261202T104500Z.zip");
    /* Nothing placed since the request: the download starts over, as before. */
    w->placed_zip = NULL;
    export_sent(w, j);
    exp_answer(w, 200, complete_body(w), NULL);
    flush(w);
    assert_int_equal(live_exp(w)->op, EXPORT_OP_DOWNLOAD);
    restart(w);
    configure_exports(w, 0);
    j = job0(w);
    assert_int_equal(j->export->state, EXPORT_REQUESTED);
}

int main(void)
{
    log_init("test_runner", LOG_LVL_ERR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_happy_path, setup, teardown),
        cmocka_unit_test_setup_teardown(test_append_one_at_a_time, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_before_send, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_out_and_changed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_send_refused_and_unbuildable, setup, teardown),
        cmocka_unit_test(test_resume_every_state),
        cmocka_unit_test(test_resume_every_request),
        cmocka_unit_test_setup_teardown(test_resume_edge_cases, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drain, setup, teardown),
        cmocka_unit_test(test_cancel_and_retry_every_state),
        cmocka_unit_test_setup_teardown(test_retry_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retry_while_moving, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retry_now, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backlog_counts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backlog_count_deferred, setup, teardown),
        cmocka_unit_test_setup_teardown(test_claim_failures, setup, teardown),
        cmocka_unit_test_setup_teardown(test_token_hold, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pause, setup, teardown),
        cmocka_unit_test_setup_teardown(test_upload_file_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_request_done, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retries_of_io, setup, teardown),
        cmocka_unit_test_setup_teardown(test_finish_dir_gone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_validation_slots, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_with_work_out, setup, teardown),
        cmocka_unit_test_setup_teardown(test_claims_batch_announced_first, setup, teardown),
        cmocka_unit_test_setup_teardown(test_claims_out, setup, teardown),
        cmocka_unit_test_setup_teardown(test_steps_while_write_out, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crash_while_disk_lags, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stuck_retry_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_find_prefix, setup, teardown),
        cmocka_unit_test_setup_teardown(test_export_flow, setup, teardown),
        cmocka_unit_test_setup_teardown(test_export_refused_and_token, setup, teardown),
        cmocka_unit_test_setup_teardown(test_export_drain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_export_generate_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_export_interval_and_recovery, setup, teardown),
        cmocka_unit_test_setup_teardown(test_export_placed_before_crash, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
