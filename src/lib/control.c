/* control: io.batchd on top of the generic varlink server. Every call is checked against the
 * peer's credentials before the daemon's callbacks see it; Watch subscribers are kept in a list
 * in subscription order and get every change in the order the daemon reports it. */
#include "batchd/control.h"

#include <errno.h>
#include <grp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "batchd/log.h"
#include "batchd/util.h"

#define IFACE "io.batchd"

const char control_interface_description[] =
    "# batchd turns datasets dropped into a spool directory into READY Prolific AI Task\n"
    "# Builder batches. This interface reports its jobs and lets operators steer them.\n"
    "interface io.batchd\n"
    "\n"
    "# One line of a job's history.\n"
    "type HistoryEntry (at: string, state: string, note: ?string)\n"
    "\n"
    "# A record-level error of a failed job: the line of the data file (null when only the\n"
    "# API's record_index is known), the field (null for the whole record) and what is wrong.\n"
    "type RecordError (line: ?int, record_index: ?int, field: ?string, message: ?string)\n"
    "\n"
    "# What an append job adds to: the job appended to (job, id), or the batch and dataset ids\n"
    "# it was given; its sync (sync_status queued, processing, complete or failed).\n"
    "type AppendTo (\n"
    "  job: ?string,\n"
    "  id: ?string,\n"
    "  batch_id: ?string,\n"
    "  dataset_id: ?string,\n"
    "  sync_id: ?string,\n"
    "  sync_status: ?string\n"
    ")\n"

    "# A ready job's newest export (batchd(8), EXPORTS): state is one of requested,\n"
    "# generating, downloading, complete, failed; path: the ZIP, relative to the job's\n"
    "# directory (exports/YYYYMMDDTHHMMSSZ.zip), once complete; at: the last change; error: why\n"
    "# it failed, or what the last failed attempt saw while it is retried.\n"
    "type Export (state: string, export_id: ?string, path: ?string, at: ?string,\n"
    "  error: ?string)\n"
    "\n"
    "# A job. State is one of queued, validating, creating_dataset, uploading, importing,\n"
    "# creating_batch, setting_up, processing, syncing (append jobs), ready, failed,\n"
    "# cancelled. Times are RFC 3339. append_to is null for a job that makes its own batch.\n"
    "# source: the entry name in incoming/ the job was claimed from (null if not known).\n"
    "# dir: its directory in the spool, active/NAME, then done/NAME or failed/NAME: a job is\n"
    "# finished, its result.json or error.json in place, once it is in a finished state and\n"
    "# dir is no longer in active/.\n"
    "# history and record_errors (the first 20 record-level errors of a failed job) come with\n"
    "# the job of GetJob, Retry and Cancel, never in ListJobs or Watch.\n"
    "type Job (\n"
    "  id: string,\n"
    "  name: string,\n"
    "  state: string,\n"
    "  dataset_id: ?string,\n"
    "  import_id: ?string,\n"
    "  batch_id: ?string,\n"
    "  records: ?int,\n"
    "  # records left out by invalid_records = skip (see rejected.jsonl); 0 otherwise\n"
    "  skipped_records: int,\n"
    "  bytes_total: ?int,\n"
    "  bytes_sent: ?int,\n"
    "  import_status: ?string,\n"
    "  accepted_count: ?int,\n"
    "  rejected_count: ?int,\n"
    "  batch_status: ?string,\n"
    "  total_task_count: ?int,\n"
    "  append_to: ?AppendTo,\n"
    "  attempts: ?int,\n"
    "  retry_at: ?string,\n"
    "  last_error: ?string,\n"
    "  created_at: ?string,\n"
    "  updated_at: ?string,\n"
    "  error_code: ?string,\n"
    "  error_message: ?string,\n"
    "  source: ?string,\n"
    "  dir: ?string,\n"
    "  export: ?Export,\n"
    "  history: ?[]HistoryEntry,\n"
    "  record_errors: ?[]RecordError\n"
    ")\n"
    "\n"
    "# The daemon: its version, start time, whether claiming is paused and why (\"operator\":\n"
    "# Pause; \"api_token_rejected\": the API answered 401, held until a reload loads a\n"
    "# different token or Resume), and jobs per state;\n"
    "# stuck: entries in incoming/ that cannot be claimed (skipped, retried every minute);\n"
    "# incoming: entries in incoming/ not yet claimed (dotfiles and stuck entries not\n"
    "# counted; kept by the claim turns, so it may lag a change by a moment);\n"
    "# waiting_for_slot: how many of those would be claimed now but for max_active or a pause.\n"
    "# An operator's pause lasts across restarts until Resume.\n"
    "method GetInfo() -> (\n"
    "  version: string,\n"
    "  started_at: string,\n"
    "  paused: bool,\n"
    "  pause_reason: ?string,\n"
    "  api_url: string,\n"
    "  spool_dir: string,\n"
    "  jobs: [string]int,\n"
    "  incoming: int,\n"
    "  waiting_for_slot: int,\n"
    "  stuck: int\n"
    ")\n"
    "\n"
    "# The daemon's metrics in the Prometheus text exposition format 0.0.4 (batchd(8),\n"
    "# METRICS): the same text that [metrics] listen serves as GET /metrics.\n"
    "method GetMetrics() -> (text: string)\n"
    "\n"
    "# Known jobs, or those in the given states, newest first: at most limit of them (default\n"
    "# 1000; a non-negative integer). A state may also be finished (ready, failed, cancelled)\n"
    "# or unfinished (every other state); an unknown one gets InvalidParameter.\n"
    "method ListJobs(states: ?[]string, limit: ?int) -> (jobs: []Job)\n"
    "\n"
    "# One job by reference, with its history: an exact id, else a unique name, else a unique\n"
    "# id prefix of at least 4 characters (Retry and Cancel take the same).\n"
    "method GetJob(job: string) -> (job: Job)\n"
    "\n"
    "# Needs \"more\". The first reply has the current jobs in jobs (the newest 1000); each later\n"
    "# reply has one changed job in job, in the order the changes happened. A watcher that does\n"
    "# not read its replies is disconnected once 1 MiB of them is waiting.\n"
    "method Watch() -> (jobs: ?[]Job, job: ?Job)\n"
    "\n"
    "# Resumes a failed or cancelled job from its last durable step; a job waiting for its\n"
    "# retry time after an error makes the attempt now; any other job gets InvalidState.\n"
    "# Needs write access.\n"
    "method Retry(job: string) -> (job: Job)\n"
    "\n"
    "# Exports the responses of a ready job's batch into done/NAME/exports/ (batchd(8),\n"
    "# EXPORTS): a new export, or a finished one started over; an export in progress is\n"
    "# returned as it is. A job that is not ready (in done/) gets InvalidState. Follow the\n"
    "# job's export with Watch or GetJob. Needs write access.\n"
    "method Export(job: string) -> (job: Job)\n"
    "\n"
    "# Cancels an unfinished job. Needs write access.\n"
    "method Cancel(job: string) -> (job: Job)\n"
    "\n"
    "# Stops claiming jobs and sending new requests; requests in flight finish. The pause is\n"
    "# kept in the state directory and lasts across restarts until Resume.\n"
    "method Pause() -> ()\n"
    "\n"
    "# Undoes Pause, and lifts a hold after an API token was rejected.\n"
    "method Resume() -> ()\n"
    "\n"
    "# Re-reads the configuration, applies what can change at run time and names what needs a\n"
    "# restart.\n"
    "method Reload() -> (applied: ?[]string, restart_required: ?[]string)\n"
    "\n"
    "# No job has this id or name.\n"
    "error NoSuchJob (job: string, message: ?string)\n"
    "\n"
    "# More than one job has this name or id prefix; candidates: the ids of (at most 50 of)\n"
    "# them. Use one of those.\n"
    "error AmbiguousJob (job: string, candidates: ?[]string, message: ?string)\n"
    "\n"
    "# A parameter has a value batchd does not accept: which one, the value, and the values\n"
    "# it does accept where there is a list of them.\n"
    "error InvalidParameter (parameter: string, value: ?string, valid: ?[]string,\n"
    "  message: ?string)\n"
    "\n"
    "# The job is not in a state that allows this (e.g. Retry of a running job).\n"
    "error InvalidState (job: string, message: ?string)\n"
    "\n"
    "# The configuration could not be reloaded; the old one stays in force.\n"
    "error ReloadFailed (message: ?string)\n"
    "\n"
    "# The caller may not call this method: reading needs the control group, changing needs\n"
    "# root or the daemon's user.\n"
    "error PermissionDenied (method: string)\n"
    "\n"
    "# The message could not be understood (bad JSON, no method, too large); the connection is\n"
    "# closed after this reply.\n"
    "error ProtocolError (reason: string)\n"
    "\n"
    "# The server has as many connections as it allows (in total or for this user).\n"
    "error TooManyConnections (limit: int)\n"
    "\n"
    "# The control server holds as much memory for its clients as it allows; try again later.\n"
    "error Busy (reason: string)\n"
    "\n"
    "# The reply would be larger than a connection may hold (size and limit in bytes); ask for\n"
    "# less (ListJobs limit or states).\n"
    "error ReplyTooLarge (size: int, limit: int)\n";

typedef struct watcher watcher;

struct control {
    varlink_server *srv;
    control_ops ops;
    uid_t self_uid;
    bool have_group;
    gid_t group;
    watcher *watchers, *watchers_tail;
    size_t n_watchers;
};

struct watcher {
    control *ctl;
    varlink_call *call;
    watcher *prev, *next;
};

typedef void (*method_fn)(control *c, varlink_call *call, const cJSON *params);

typedef struct method_def {
    const char *name;
    unsigned access;
    unsigned flags;
    method_fn fn;
} method_def;

static const char *const known_states[] = {
    "queued",     "validating", "creating_dataset", "uploading", "importing", "creating_batch",
    "setting_up", "processing", "syncing",          "ready",     "failed",    "cancelled",
};

/* ---------------------------------------------------------------- access */

unsigned control_peer_access(const varlink_peer *peer, uid_t self_uid, bool have_group, gid_t group)
{
    if (peer->uid == 0 || peer->uid == self_uid)
        return CONTROL_READ | CONTROL_WRITE;
    if (!have_group)
        return 0;
    if (peer->gid == group)
        return CONTROL_READ;
    for (size_t i = 0; i < peer->n_groups; i++)
        if (peer->groups[i] == group)
            return CONTROL_READ;
    return 0;
}

/* ---------------------------------------------------------------- replies */

static cJSON *obj_str(const char *key, const char *value)
{
    cJSON *p = cJSON_CreateObject();
    cJSON_AddStringToObject(p, key, value);
    return p;
}

static void invalid_parameter(varlink_call *call, const char *name)
{
    varlink_call_error(call, "org.varlink.service.InvalidParameter", obj_str("parameter", name));
}

static void job_error(const control *c, varlink_call *call, const char *err, const char *job,
                      const char *msg)
{
    cJSON *p = obj_str("job", job);
    if (msg)
        cJSON_AddStringToObject(p, "message", msg);
    err = err ? err : IFACE ".InvalidState";
    /* An ambiguous reference is never resolved to one of its matches: the caller picks. */
    if (strcmp(err, IFACE ".AmbiguousJob") == 0 && c->ops.candidates) {
        cJSON *ids = c->ops.candidates(c->ops.ud, job);
        if (ids)
            cJSON_AddItemToObject(p, "candidates", ids);
    }
    varlink_call_error(call, err, p);
}

/* The "job" parameter: a non-empty string, or InvalidParameter has been sent. */
static const char *job_param(varlink_call *call, const cJSON *params)
{
    const char *job = json_str(params, "job");
    if (!job || !job[0] || !utf8_valid(job, strlen(job))) {
        invalid_parameter(call, "job");
        return NULL;
    }
    return job;
}

static cJSON *wrap(const char *key, cJSON *value)
{
    cJSON *p = cJSON_CreateObject();
    cJSON_AddItemToObject(p, key, value ? value : cJSON_CreateNull());
    return p;
}

/* ---------------------------------------------------------------- methods */

static void m_get_info(control *c, varlink_call *call, const cJSON *params)
{
    (void)params;
    cJSON *info = c->ops.get_info(c->ops.ud);
    varlink_call_reply(call, info);
}

static void m_get_metrics(control *c, varlink_call *call, const cJSON *params)
{
    (void)params;
    char *text = c->ops.get_metrics(c->ops.ud);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "text", text);
    free(text);
    varlink_call_reply(call, o);
}

static bool state_terminal(const char *s)
{
    return strcmp(s, "ready") == 0 || strcmp(s, "failed") == 0 || strcmp(s, "cancelled") == 0;
}

/* Adds the states s stands for to names (room for every known state plus one per entry):
 * a state, "finished" or "unfinished". False for a name that is none of these. */
static bool state_expand(const char *s, const char **names, size_t *n)
{
    bool finished = strcmp(s, "finished") == 0, unfinished = strcmp(s, "unfinished") == 0;
    bool found = false;
    for (size_t i = 0; i < BD_ARRAY_LEN(known_states); i++) {
        const char *k = known_states[i];
        if (strcmp(k, s) == 0 || (finished && state_terminal(k)) ||
            (unfinished && !state_terminal(k))) {
            names[(*n)++] = k;
            found = true;
        }
    }
    return found;
}

static void invalid_state(varlink_call *call, const cJSON *value)
{
    cJSON *p = obj_str("parameter", "states");
    if (cJSON_IsString(value))
        cJSON_AddStringToObject(p, "value", value->valuestring);
    cJSON *valid = cJSON_AddArrayToObject(p, "valid");
    for (size_t i = 0; i < BD_ARRAY_LEN(known_states); i++)
        cJSON_AddItemToArray(valid, cJSON_CreateString(known_states[i]));
    cJSON_AddItemToArray(valid, cJSON_CreateString("finished"));
    cJSON_AddItemToArray(valid, cJSON_CreateString("unfinished"));
    cJSON_AddStringToObject(p, "message", "not a job state");
    varlink_call_error(call, IFACE ".InvalidParameter", p);
}

/* ListJobs' "limit": absent or null = the default; else a non-negative integer. */
static int limit_param(const cJSON *params, size_t *limit)
{
    const cJSON *l = cJSON_GetObjectItemCaseSensitive(params, "limit");
    *limit = CONTROL_LIST_DEFAULT;
    if (!l || cJSON_IsNull(l))
        return 0;
    if (!cJSON_IsNumber(l))
        return -EINVAL;
    double v = l->valuedouble;
    if (!(v >= 0))
        return -EINVAL;            /* negative or NaN */
    if (v >= 9007199254740992.0) { /* 2^53: every double from here on is an integer */
        *limit = SIZE_MAX;
        return 0;
    }
    if (v != (double)(int64_t)v)
        return -EINVAL;
    *limit = (size_t)v;
    return 0;
}

static void m_list_jobs(control *c, varlink_call *call, const cJSON *params)
{
    const cJSON *states = cJSON_GetObjectItemCaseSensitive(params, "states");
    const char **names = NULL;
    size_t n = 0;
    size_t limit = 0;
    if (limit_param(params, &limit) < 0) {
        invalid_parameter(call, "limit");
        return;
    }
    if (states && !cJSON_IsNull(states)) {
        if (!cJSON_IsArray(states)) {
            invalid_parameter(call, "states");
            return;
        }
        size_t room = ((size_t)cJSON_GetArraySize(states) + 1) * BD_ARRAY_LEN(known_states);
        names = xcalloc(room, sizeof(*names));
        const cJSON *s;
        cJSON_ArrayForEach(s, states)
        {
            if (!cJSON_IsString(s) || !state_expand(s->valuestring, names, &n)) {
                free(names);
                invalid_state(call, s);
                return;
            }
        }
    }
    cJSON *jobs = c->ops.list_jobs(c->ops.ud, names, n, limit);
    free(names);
    varlink_call_reply(call, wrap("jobs", jobs ? jobs : cJSON_CreateArray()));
}

static void m_get_job(control *c, varlink_call *call, const cJSON *params)
{
    const char *job = job_param(call, params);
    if (!job)
        return;
    const char *err = NULL;
    cJSON *j = c->ops.get_job(c->ops.ud, job, &err);
    if (!j)
        job_error(c, call, err ? err : IFACE ".NoSuchJob", job, NULL);
    else
        varlink_call_reply(call, wrap("job", j));
}

typedef int (*job_op)(void *ud, const char *job, cJSON **job_out, const char **err,
                      const char **err_msg);

static void run_job_op(control *c, varlink_call *call, const cJSON *params, job_op op)
{
    const char *job = job_param(call, params);
    if (!job)
        return;
    cJSON *out = NULL;
    const char *err = NULL, *msg = NULL;
    int r = op(c->ops.ud, job, &out, &err, &msg);
    if (r < 0) {
        cJSON_Delete(out);
        job_error(c, call, err, job, msg);
    } else {
        varlink_call_reply(call, wrap("job", out));
    }
}

static void m_retry(control *c, varlink_call *call, const cJSON *params)
{
    run_job_op(c, call, params, c->ops.retry);
}

static void m_cancel(control *c, varlink_call *call, const cJSON *params)
{
    run_job_op(c, call, params, c->ops.cancel);
}

static void m_export(control *c, varlink_call *call, const cJSON *params)
{
    run_job_op(c, call, params, c->ops.export_job);
}

static void m_pause(control *c, varlink_call *call, const cJSON *params)
{
    (void)params;
    c->ops.pause(c->ops.ud);
    varlink_call_reply(call, NULL);
}

static void m_resume(control *c, varlink_call *call, const cJSON *params)
{
    (void)params;
    c->ops.resume(c->ops.ud);
    varlink_call_reply(call, NULL);
}

static void m_reload(control *c, varlink_call *call, const cJSON *params)
{
    (void)params;
    const char *err = NULL;
    char *msg = NULL;
    cJSON *r = c->ops.reload(c->ops.ud, &err, &msg);
    if (r) {
        free(msg);
        varlink_call_reply(call, r);
        return;
    }
    cJSON *p = cJSON_CreateObject();
    if (msg)
        cJSON_AddStringToObject(p, "message", msg);
    free(msg);
    varlink_call_error(call, err ? err : IFACE ".ReloadFailed", p);
}

static void watcher_cancel(varlink_call *call, void *ud)
{
    (void)call;
    watcher *w = ud;
    control *c = w->ctl;
    if (w->prev)
        w->prev->next = w->next;
    else
        c->watchers = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        c->watchers_tail = w->prev;
    c->n_watchers--;
    free(w);
}

static void m_watch(control *c, varlink_call *call, const cJSON *params)
{
    (void)params;
    cJSON *jobs = c->ops.list_jobs(c->ops.ud, NULL, 0, CONTROL_LIST_DEFAULT);
    cJSON *snap = wrap("jobs", jobs ? jobs : cJSON_CreateArray());
    char *text = json_print(snap);
    cJSON_Delete(snap);
    int r = varlink_call_notify_json(call, text);
    free(text);
    if (r < 0)
        return; /* the peer is gone; the call with it */
    watcher *w = xcalloc(1, sizeof(*w));
    w->ctl = c;
    w->call = call;
    w->prev = c->watchers_tail;
    if (c->watchers_tail)
        c->watchers_tail->next = w;
    else
        c->watchers = w;
    c->watchers_tail = w;
    c->n_watchers++;
    varlink_call_set_cancel(call, watcher_cancel, w);
}

static const method_def methods[] = {
    {IFACE ".GetInfo", CONTROL_READ, 0, m_get_info},
    {IFACE ".GetMetrics", CONTROL_READ, 0, m_get_metrics},
    {IFACE ".ListJobs", CONTROL_READ, 0, m_list_jobs},
    {IFACE ".GetJob", CONTROL_READ, 0, m_get_job},
    {IFACE ".Watch", CONTROL_READ, VARLINK_METHOD_MORE, m_watch},
    {IFACE ".Retry", CONTROL_WRITE, 0, m_retry},
    {IFACE ".Cancel", CONTROL_WRITE, 0, m_cancel},
    {IFACE ".Export", CONTROL_WRITE, 0, m_export},
    {IFACE ".Pause", CONTROL_WRITE, 0, m_pause},
    {IFACE ".Resume", CONTROL_WRITE, 0, m_resume},
    {IFACE ".Reload", CONTROL_WRITE, 0, m_reload},
};

static const method_def *method_find(const char *name)
{
    for (size_t i = 0; i < BD_ARRAY_LEN(methods); i++)
        if (strcmp(methods[i].name, name) == 0)
            return &methods[i];
    return NULL;
}

unsigned control_method_access(const char *method)
{
    const method_def *m = method ? method_find(method) : NULL;
    return m ? m->access : 0;
}

/* The daemon may leave an op out; such a method is then not implemented. */
static bool op_present(const control *c, const method_def *m)
{
    const control_ops *o = &c->ops;
    if (m->fn == m_get_info)
        return o->get_info;
    if (m->fn == m_get_metrics)
        return o->get_metrics;
    if (m->fn == m_list_jobs || m->fn == m_watch)
        return o->list_jobs;
    if (m->fn == m_get_job)
        return o->get_job;
    if (m->fn == m_retry)
        return o->retry;
    if (m->fn == m_cancel)
        return o->cancel;
    if (m->fn == m_export)
        return o->export_job;
    if (m->fn == m_pause)
        return o->pause;
    if (m->fn == m_resume)
        return o->resume;
    return o->reload;
}

static void on_call(varlink_call *call, const cJSON *params, void *ud)
{
    control *c = ud;
    const method_def *m = method_find(varlink_call_method(call));
    const varlink_peer *peer = varlink_call_peer(call);
    unsigned have = control_peer_access(peer, c->self_uid, c->have_group, c->group);
    if (!m || !op_present(c, m)) {
        varlink_call_error(call, "org.varlink.service.MethodNotImplemented",
                           obj_str("method", varlink_call_method(call)));
        return;
    }
    if ((have & m->access) != m->access) {
        varlink_call_log_refusal(call, "%s refused: %s", m->name,
                                 m->access == CONTROL_WRITE ? "needs root or the daemon's user"
                                                            : "not in the control group");
        varlink_call_error(call, IFACE ".PermissionDenied", obj_str("method", m->name));
        return;
    }
    m->fn(c, call, params);
}

/* ---------------------------------------------------------------- lifecycle */

static void resolve_group(control *c, const char *group)
{
    if (!group || !group[0])
        return;
    struct group gr, *res = NULL;
    char buf[16384];
    if (getgrnam_r(group, &gr, buf, sizeof(buf), &res) == 0 && res) {
        c->group = res->gr_gid;
        c->have_group = true;
        return;
    }
    char *end = NULL;
    unsigned long v = strtoul(group, &end, 10);
    if (end && !*end && end != group) {
        c->group = (gid_t)v;
        c->have_group = true;
        return;
    }
    log_warn("control group \"%s\" does not exist: only root and the daemon's user can use the "
             "control socket (create the group or fix [control] group)",
             group);
}

int control_start(uv_loop_t *loop, const control_options *opts, const control_ops *ops,
                  control **out, char **err)
{
    *out = NULL;
    if (err)
        *err = NULL;
    control *c = xcalloc(1, sizeof(*c));
    c->ops = *ops;
    c->self_uid = geteuid();
    resolve_group(c, opts->group);
    /* Calls that cost next to nothing: a member's status check is answered at once, never
     * behind another member's ListJobs flood. */
    static const char *const quick[] = {IFACE ".GetInfo", "org.varlink.service.GetInfo", NULL};
    varlink_server_options vo = {
        .quick_methods = quick,
        .max_connections = opts->max_connections,
        .max_per_uid = opts->max_per_uid,
        .reserved_connections = opts->reserved_connections,
        .max_message = opts->max_message,
        .max_pending_out = opts->max_pending_out,
        .max_stream_out = opts->max_stream_out,
        .memory_budget = opts->memory_budget,
        .idle_timeout_ms = opts->idle_timeout_ms,
        .privileged_uncapped = true,
        .vendor = "batchd",
        .product = "batchd",
        .version = opts->version ? opts->version : BATCHD_VERSION,
        .url = "man:batchd(8)",
        .protocol_error = IFACE ".ProtocolError",
        .limit_error = IFACE ".TooManyConnections",
        .busy_error = IFACE ".Busy",
        .too_large_error = IFACE ".ReplyTooLarge",
    };
    varlink_server_new(loop, &vo, &c->srv);
    int r = varlink_server_add_interface(c->srv, IFACE, control_interface_description);
    for (size_t i = 0; r == 0 && i < BD_ARRAY_LEN(methods); i++)
        r = varlink_server_add_method(c->srv, methods[i].name, methods[i].flags, on_call, c);
    if (r < 0) {
        if (err)
            *err = xasprintf("control: cannot register io.batchd: %s", strerror(-r));
        goto fail;
    }
    r = varlink_server_listen(c->srv, opts->socket_path, 0660, c->have_group ? c->group : (gid_t)-1,
                              err);
    if (r < 0)
        goto fail;
    log_info("control socket listening on %s", opts->socket_path);
    *out = c;
    return 0;
fail:
    control_stop(c);
    return r;
}

void control_job_changed(control *c, const cJSON *job)
{
    if (!c || !c->watchers || !job)
        return;
    char *job_text = json_print(job);
    if (!job_text)
        abort();
    char *text = xasprintf("{\"job\":%s}", job_text);
    free(job_text);
    for (watcher *w = c->watchers, *next; w; w = next) {
        next = w->next; /* a failed send cancels (and frees) w, never another watcher */
        varlink_call_notify_json(w->call, text);
    }
    free(text);
}

size_t control_watchers(const control *c)
{
    return c ? c->n_watchers : 0;
}

void control_stop(control *c)
{
    if (!c)
        return;
    /* Cancels every Watch call synchronously, which frees the watchers. */
    varlink_server_free(c->srv);
    free(c);
}
