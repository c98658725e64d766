/* remote: batchctl commands answered by the daemon. Each connects, makes its calls and maps
 * every failure to a message that says what happened and what to do, and to an exit code. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "batchctl.h"
#include "batchd/util.h"
#include "batchd/vlclient.h"

static int connect_failed(const ctl_ctx *x, int r)
{
    if (r == -EACCES || r == -EPERM) {
        fprintf(stderr,
                "batchctl: permission denied opening the control socket %s\n"
                "hint: members of the group \"%s\" may read; root and the daemon's user may also "
                "change jobs\n",
                x->socket_path, x->group ? x->group : "batchd");
        return CTL_EXIT_NOPERM;
    }
    fprintf(stderr,
            "batchctl: cannot reach batchd at %s: %s\n"
            "hint: is batchd running (systemctl status batchd) and listening on %s? Name "
            "another socket with -s SOCKET or [control] socket in the config file.\n",
            x->socket_path, r == -ETIMEDOUT ? "timed out" : strerror(-r), x->socket_path);
    return CTL_EXIT_UNAVAILABLE;
}

static int open_client(const ctl_ctx *x, vlclient **c)
{
    int r = vlclient_connect(x->socket_path, x->timeout_ms, c);
    return r < 0 ? connect_failed(x, r) : 0;
}

static int recv_failed(const ctl_ctx *x, int r)
{
    if (r == -ETIMEDOUT) {
        fprintf(stderr, "batchctl: batchd at %s did not answer in time\n", x->socket_path);
        return CTL_EXIT_UNAVAILABLE;
    }
    if (r == -ECONNRESET || r == -EPIPE) {
        fprintf(stderr, "batchctl: batchd at %s closed the connection\n", x->socket_path);
        return CTL_EXIT_UNAVAILABLE;
    }
    fprintf(stderr, "batchctl: bad reply from %s: %s\n", x->socket_path,
            r == -EBADMSG ? "not a varlink message" : strerror(-r));
    return CTL_EXIT_PROTOCOL;
}

static const char *msg_or(const char *s, const char *dflt)
{
    return s ? s : dflt;
}

static void print_valid(const cJSON *valid)
{
    if (cJSON_GetArraySize(valid) == 0)
        return;
    fputs("valid:", stderr);
    const cJSON *v;
    cJSON_ArrayForEach(v, valid)
    {
        if (cJSON_IsString(v))
            fprintf(stderr, " %s", v->valuestring);
    }
    fputc('\n', stderr);
}

/* AmbiguousJob (with its candidates) and InvalidParameter (with the valid values). */
static int refused_reply(const char *method, const vlclient_reply *r)
{
    const char *e = r->error;
    const char *job = json_str(r->parameters, "job");
    const char *msg = json_str(r->parameters, "message");
    if (strcmp(e, "io.batchd.AmbiguousJob") == 0) {
        fprintf(stderr,
                "batchctl: \"%s\" names more than one job (by name or id prefix); use one of "
                "these ids:\n",
                job ? job : "?");
        const cJSON *id;
        cJSON_ArrayForEach(id, cJSON_GetObjectItemCaseSensitive(r->parameters, "candidates"))
        {
            if (cJSON_IsString(id))
                fprintf(stderr, "  %s\n", id->valuestring);
        }
        return CTL_EXIT_REFUSED;
    }
    if (strcmp(e, "io.batchd.InvalidParameter") == 0) {
        const char *value = json_str(r->parameters, "value");
        fprintf(stderr, "batchctl: batchd rejected %s%s%s of %s: %s\n",
                msg_or(json_str(r->parameters, "parameter"), "a parameter"), value ? " " : "",
                value ? value : "", method, msg_or(msg, "not a valid value"));
        print_valid(cJSON_GetObjectItemCaseSensitive(r->parameters, "valid"));
        return CTL_EXIT_REFUSED;
    }
    return CTL_EXIT_REFUSED;
}

/* Prints an error reply for people and returns its exit code. */
static int error_reply(const ctl_ctx *x, const char *method, const vlclient_reply *r)
{
    const char *e = r->error;
    const char *job = json_str(r->parameters, "job");
    const char *msg = json_str(r->parameters, "message");
    if (strcmp(e, "io.batchd.PermissionDenied") == 0) {
        bool reading =
            strcmp(method, "io.batchd.GetInfo") == 0 || strcmp(method, "io.batchd.ListJobs") == 0 ||
            strcmp(method, "io.batchd.GetJob") == 0 || strcmp(method, "io.batchd.Watch") == 0;
        if (reading)
            fprintf(stderr,
                    "batchctl: permission denied: %s\nhint: reading needs membership of the "
                    "control group \"%s\"\n",
                    method, x->group ? x->group : "batchd");
        else
            fprintf(stderr,
                    "batchctl: permission denied: %s\nhint: changing jobs needs root or the "
                    "daemon's user (try sudo)\n",
                    method);
        return CTL_EXIT_NOPERM;
    }
    if (strcmp(e, "io.batchd.NoSuchJob") == 0) {
        fprintf(stderr, "batchctl: no job has the id or name \"%s\"\nhint: batchctl list\n",
                job ? job : "?");
        return CTL_EXIT_REFUSED;
    }
    if (strcmp(e, "io.batchd.AmbiguousJob") == 0 || strcmp(e, "io.batchd.InvalidParameter") == 0)
        return refused_reply(method, r);
    if (strcmp(e, "io.batchd.InvalidState") == 0) {
        fprintf(stderr, "batchctl: %s refused for job \"%s\": %s\n", method, job ? job : "?",
                msg ? msg : "not possible in its current state");
        return CTL_EXIT_REFUSED;
    }
    if (strcmp(e, "io.batchd.ReloadFailed") == 0) {
        fprintf(stderr, "batchctl: reload failed; the old configuration stays in force%s%s\n",
                msg ? ":\n" : "", msg ? msg : "");
        return CTL_EXIT_CONFIG;
    }
    if (strcmp(e, "io.batchd.TooManyConnections") == 0) {
        fprintf(stderr,
                "batchctl: batchd has too many control connections open (limit %" PRId64
                "); try again later\n",
                json_int64(r->parameters, "limit", 0));
        return CTL_EXIT_TEMPFAIL;
    }
    if (strcmp(e, "io.batchd.Busy") == 0) {
        fprintf(stderr,
                "batchctl: batchd is short of memory for its control clients (%s); try again "
                "later\n",
                msg_or(json_str(r->parameters, "reason"), "busy"));
        return CTL_EXIT_TEMPFAIL;
    }
    if (strcmp(e, "io.batchd.ReplyTooLarge") == 0) {
        fprintf(stderr,
                "batchctl: the reply to %s would be %" PRId64 " bytes, more than batchd sends "
                "(%" PRId64 ")\nhint: ask for fewer jobs (list --limit N, --state)\n",
                method, json_int64(r->parameters, "size", 0),
                json_int64(r->parameters, "limit", 0));
        return CTL_EXIT_REFUSED;
    }
    if (strcmp(e, "org.varlink.service.InvalidParameter") == 0) {
        fprintf(stderr, "batchctl: batchd rejected the parameter \"%s\" of %s\n",
                json_str(r->parameters, "parameter") ? json_str(r->parameters, "parameter") : "?",
                method);
        return CTL_EXIT_REFUSED;
    }
    char *p = json_print(r->parameters);
    fprintf(stderr, "batchctl: %s failed: %s %s\n", method, e, p);
    free(p);
    return CTL_EXIT_PROTOCOL;
}

/* Makes one call on c; 0 with *r filled (a normal reply), or an exit code (message printed). */
static int call_on(const ctl_ctx *x, vlclient *c, const char *method, const cJSON *params,
                   vlclient_reply *r)
{
    int rr = vlclient_call(c, method, params, x->timeout_ms, r);
    if (rr < 0)
        return recv_failed(x, rr);
    ctl_defang_reply(x, r);
    if (r->error) {
        int code = error_reply(x, method, r);
        vlclient_reply_clear(r);
        return code;
    }
    return 0;
}

/* Connects and makes one call. */
static int call1(const ctl_ctx *x, const char *method, const cJSON *params, vlclient_reply *r)
{
    vlclient *c = NULL;
    int code = open_client(x, &c);
    if (code == 0)
        code = call_on(x, c, method, params, r);
    vlclient_free(c);
    return code;
}

int ctl_call(const ctl_ctx *x, const char *method, const cJSON *params, vlclient_reply *r)
{
    return call1(x, method, params, r);
}

static void print_json(const cJSON *j)
{
    char *s = json_print_pretty(j);
    fputs(s, stdout);
    free(s);
}

int ctl_usage(const char *cmd, const char *args)
{
    fprintf(stderr, "usage: batchctl [-c FILE] [-s SOCKET] [--json] %s%s%s\n", cmd,
            args[0] ? " " : "", args);
    return CTL_EXIT_USAGE;
}

/* Checks that argv has exactly `want` positional arguments after the command. */
static bool positional(int argc, char **argv, int want)
{
    int n = 0;
    for (int i = 1; i < argc; i++) {
        if (argv[i][0] == '-' && argv[i][1] && strcmp(argv[i], "--") != 0)
            return false;
        if (strcmp(argv[i], "--") != 0)
            n++;
    }
    return n == want;
}

static const char *last_positional(int argc, char **argv)
{
    return argc > 1 ? argv[argc - 1] : NULL;
}

/* ---------------------------------------------------------------- status / list */

static void add_job_row(ctl_table *t, const cJSON *j, int64_t now, bool status_view, size_t idlen)
{
    char buf[512], d[32], idb[64];
    const char *state = json_str(j, "state");
    ctl_table_row(t);
    ctl_table_cell(t, ctl_short_id(json_str(j, "id"), idlen, idb, sizeof(idb)), NULL);
    ctl_table_cell(t, json_str(j, "name") ? json_str(j, "name") : "-", NULL);
    ctl_table_cell(t, state ? state : "-", ctl_state_color(state));
    if (status_view) {
        ctl_progress_text(j, buf, sizeof(buf));
        ctl_table_cell(t, buf[0] ? buf : "-", NULL);
        ctl_problem_text(j, now, buf, sizeof(buf));
        if (strlen(buf) > 60)
            strcpy(buf + 57, "...");
        ctl_table_cell(t, buf[0] ? buf : "-", json_str(j, "retry_at") ? CTL_YELLOW : NULL);
    } else {
        int64_t rec = json_int64(j, "records", -1);
        snprintf(buf, sizeof(buf), rec >= 0 ? "%" PRId64 : "-", rec);
        ctl_table_cell(t, buf, NULL);
        /* An append job's batch is its target's: the cell says whose. */
        const cJSON *at = cJSON_GetObjectItemCaseSensitive(j, "append_to");
        const char *target = json_str(at, "job") ? json_str(at, "job") : json_str(at, "batch_id");
        if (target)
            snprintf(buf, sizeof(buf), "append:%s", target);
        else
            snprintf(buf, sizeof(buf), "%s",
                     json_str(j, "batch_id") ? json_str(j, "batch_id") : "-");
        ctl_table_cell(t, buf, NULL);
    }
    int64_t age = ctl_since(j, "created_at", now);
    ctl_table_cell(t, age >= 0 ? duration_format(age, d, sizeof(d)) : "-", NULL);
}

static void print_summary(const ctl_ctx *x, const cJSON *info, int64_t now)
{
    char d[32];
    int64_t up = ctl_since(info, "started_at", now);
    bool paused = json_bool(info, "paused", false);
    printf("batchd %s, up %s, ", json_str(info, "version") ? json_str(info, "version") : "?",
           up >= 0 ? duration_format(up, d, sizeof(d)) : "?");
    const char *reason = json_str(info, "pause_reason");
    if (paused && reason && strcmp(reason, "api_token_rejected") == 0)
        printf("%son hold: the API rejected the token (fix it, then batchctl reload)%s",
               x->color ? CTL_YELLOW : "", x->color ? CTL_RESET : "");
    else if (paused)
        printf("%spaused by an operator (until batchctl resume)%s", x->color ? CTL_YELLOW : "",
               x->color ? CTL_RESET : "");
    else
        printf("running");
    const cJSON *counts = cJSON_GetObjectItemCaseSensitive(info, "jobs");
    const cJSON *n;
    int64_t total = 0;
    cJSON_ArrayForEach(n, counts)
    {
        total += cJSON_IsNumber(n) ? (int64_t)n->valuedouble : 0;
    }
    printf("; %" PRId64 " job%s", total, total == 1 ? "" : "s");
    const char *sep = ": ";
    cJSON_ArrayForEach(n, counts)
    {
        if (cJSON_IsNumber(n) && n->valuedouble > 0) {
            printf("%s%" PRId64 " %s", sep, (int64_t)n->valuedouble, n->string);
            sep = ", ";
        }
    }
    int64_t incoming = json_int64(info, "incoming", 0);
    int64_t waiting = json_int64(info, "waiting_for_slot", 0);
    if (incoming > 0)
        printf("; %" PRId64 " waiting in incoming/ (%" PRId64 " for %s)", incoming, waiting,
               paused ? "the pause to end" : "a free slot: [job] max_active");
    int64_t stuck = json_int64(info, "stuck", 0);
    if (stuck > 0)
        printf("; %s%" PRId64 " stuck in incoming/%s (cannot be claimed: see the log)",
               x->color ? CTL_YELLOW : "", stuck, x->color ? CTL_RESET : "");
    putchar('\n');
}

int ctl_status(const ctl_ctx *x, int argc, char **argv)
{
    if (!positional(argc, argv, 0))
        return ctl_usage("status", "");
    vlclient *c = NULL;
    vlclient_reply info = {0}, jobs = {0};
    int code = open_client(x, &c);
    if (code == 0)
        code = call_on(x, c, "io.batchd.GetInfo", NULL, &info);
    if (code == 0) {
        /* Asked by state: ListJobs returns the newest 1000 by default, and an unfinished job
         * older than a thousand finished ones must still show. */
        static const char *const unfinished_states[] = {
            "queued",         "validating", "creating_dataset", "uploading", "importing",
            "creating_batch", "setting_up", "processing",       "syncing"};
        cJSON *params = cJSON_CreateObject();
        cJSON *states = cJSON_AddArrayToObject(params, "states");
        for (size_t i = 0; i < sizeof unfinished_states / sizeof *unfinished_states; i++)
            cJSON_AddItemToArray(states, cJSON_CreateString(unfinished_states[i]));
        code = call_on(x, c, "io.batchd.ListJobs", params, &jobs);
        cJSON_Delete(params);
    }
    vlclient_free(c);
    if (code != 0) {
        vlclient_reply_clear(&info);
        return code;
    }
    cJSON *unfinished = cJSON_CreateArray();
    const cJSON *j;
    cJSON_ArrayForEach(j, cJSON_GetObjectItemCaseSensitive(jobs.parameters, "jobs"))
    {
        if (!ctl_state_finished(json_str(j, "state")))
            cJSON_AddItemToArray(unfinished, cJSON_Duplicate(j, 1));
    }
    if (x->json) {
        cJSON *out = cJSON_CreateObject();
        cJSON_AddItemToObject(out, "info", cJSON_Duplicate(info.parameters, 1));
        cJSON_AddItemToObject(out, "jobs", unfinished);
        print_json(out);
        cJSON_Delete(out);
    } else {
        int64_t now = time_now_ms();
        print_summary(x, info.parameters, now);
        if (cJSON_GetArraySize(unfinished) == 0) {
            printf("no unfinished jobs\n");
        } else {
            static const char *const hdr[] = {"ID",       "NAME",        "STATE",
                                              "PROGRESS", "RETRY/ERROR", "AGE"};
            ctl_table *t = ctl_table_new(6, hdr);
            size_t idlen =
                ctl_short_id_len(cJSON_GetObjectItemCaseSensitive(jobs.parameters, "jobs"));
            cJSON_ArrayForEach(j, unfinished)
            {
                add_job_row(t, j, now, true, idlen);
            }
            ctl_table_print(t, stdout, x->color);
            ctl_table_free(t);
        }
        cJSON_Delete(unfinished);
    }
    vlclient_reply_clear(&info);
    vlclient_reply_clear(&jobs);
    return CTL_EXIT_OK;
}

/* "--limit N" into params. Returns 0 or an exit code. */
static int list_limit(cJSON *params, const char *limit)
{
    char *end = NULL;
    errno = 0;
    unsigned long long n = strtoull(limit, &end, 10);
    if (!limit[0] || *end || errno || limit[0] == '-' || n > (1ULL << 53)) {
        fprintf(stderr, "batchctl: list: --limit %s: not a number of jobs (0 or more)\n", limit);
        return CTL_EXIT_USAGE;
    }
    cJSON_DeleteItemFromObject(params, "limit");
    cJSON_AddNumberToObject(params, "limit", (double)n);
    return 0;
}

/* What list --state takes: every job state, and the groups batchd expands. */
static const char *const list_states[] = {
    "queued",         "validating", "creating_dataset", "uploading", "importing",
    "creating_batch", "setting_up", "processing",       "syncing",   "ready",
    "failed",         "cancelled",  "finished",         "unfinished"};

static int list_state_ok(const char *s)
{
    for (size_t i = 0; i < BD_ARRAY_LEN(list_states); i++)
        if (strcmp(list_states[i], s) == 0)
            return 0;
    fprintf(stderr, "batchctl: list: --state %s: not a job state; valid states:", ctl_esc(s));
    for (size_t i = 0; i < BD_ARRAY_LEN(list_states); i++)
        fprintf(stderr, " %s", list_states[i]);
    fputs("\n(finished = ready, failed, cancelled; unfinished = every other state)\n", stderr);
    return CTL_EXIT_REFUSED; /* as when batchd refuses it */
}

/* The ListJobs parameters from list's options. Returns 0 or an exit code. */
static int list_params(int argc, char **argv, cJSON *params, bool *quiet)
{
    cJSON *states = cJSON_AddArrayToObject(params, "states");
    for (int i = 1; i < argc; i++) {
        const char *s = NULL, *limit = NULL;
        if (strcmp(argv[i], "--state") == 0 && i + 1 < argc)
            s = argv[++i];
        else if (strncmp(argv[i], "--state=", 8) == 0)
            s = argv[i] + 8;
        else if (strcmp(argv[i], "--limit") == 0 && i + 1 < argc)
            limit = argv[++i];
        else if (strncmp(argv[i], "--limit=", 8) == 0)
            limit = argv[i] + 8;
        else if (strcmp(argv[i], "-q") == 0 || strcmp(argv[i], "--quiet") == 0)
            *quiet = true;
        else
            return ctl_usage("list", "[--state STATE]... [--limit N] [-q]");
        if (limit) {
            int rc = list_limit(params, limit);
            if (rc)
                return rc;
        }
        if (s && list_state_ok(s) != 0)
            return CTL_EXIT_REFUSED;
        if (s)
            cJSON_AddItemToArray(states, cJSON_CreateString(s));
    }
    if (cJSON_GetArraySize(states) == 0)
        cJSON_DeleteItemFromObject(params, "states");
    return 0;
}

static void print_jobs(const ctl_ctx *x, const cJSON *jobs, bool quiet)
{
    const cJSON *j;
    if (quiet) {
        cJSON_ArrayForEach(j, jobs)
        {
            if (json_str(j, "name"))
                puts(json_str(j, "name"));
        }
        return;
    }
    static const char *const hdr[] = {"ID", "NAME", "STATE", "RECORDS", "BATCH", "AGE"};
    ctl_table *t = ctl_table_new(6, hdr);
    int64_t now = time_now_ms();
    size_t idlen = ctl_short_id_len(jobs);
    cJSON_ArrayForEach(j, jobs)
    {
        add_job_row(t, j, now, false, idlen);
    }
    ctl_table_print(t, stdout, x->color);
    ctl_table_free(t);
}

int ctl_list(const ctl_ctx *x, int argc, char **argv)
{
    cJSON *params = cJSON_CreateObject();
    bool quiet = false;
    int code = list_params(argc, argv, params, &quiet);
    if (code != 0) {
        cJSON_Delete(params);
        return code;
    }
    vlclient_reply r;
    code = call1(x, "io.batchd.ListJobs", params, &r);
    cJSON_Delete(params);
    if (code != 0)
        return code;
    if (x->json)
        print_json(r.parameters);
    else
        print_jobs(x, cJSON_GetObjectItemCaseSensitive(r.parameters, "jobs"), quiet);
    vlclient_reply_clear(&r);
    return CTL_EXIT_OK;
}

/* ---------------------------------------------------------------- show */

static void show_value(const ctl_ctx *x, const char *key, const cJSON *v, int64_t now)
{
    char buf[64], d[32];
    printf("%-17s ", key);
    if (!v || cJSON_IsNull(v)) {
        puts("-");
        return;
    }
    if (cJSON_IsString(v)) {
        const char *col = strcmp(key, "state") == 0 ? ctl_state_color(v->valuestring) : NULL;
        if (x->color && col)
            printf("%s%s%s", col, v->valuestring, CTL_RESET);
        else
            fputs(v->valuestring, stdout);
        int64_t t;
        if (strlen(key) > 3 && strcmp(key + strlen(key) - 3, "_at") == 0 &&
            time_parse_rfc3339(v->valuestring, &t) == 0)
            printf(t > now ? " (in %s)" : " (%s ago)",
                   duration_format(t > now ? t - now : now - t, d, sizeof(d)));
        putchar('\n');
        return;
    }
    if (cJSON_IsNumber(v)) {
        printf("%" PRId64, (int64_t)v->valuedouble);
        if (strncmp(key, "bytes_", 6) == 0 && v->valuedouble >= 1024)
            printf(" (%s)", ctl_format_bytes((int64_t)v->valuedouble, buf, sizeof(buf)));
        putchar('\n');
        return;
    }
    char *s = json_print(v);
    puts(s);
    free(s);
}

/* The first record-level errors of a failed job (GetJob sends at most 20). */
static void show_record_errors(const cJSON *job)
{
    const cJSON *errs = cJSON_GetObjectItemCaseSensitive(job, "record_errors");
    if (cJSON_GetArraySize(errs) == 0)
        return;
    printf("record errors (first %d):\n", cJSON_GetArraySize(errs));
    const cJSON *e;
    cJSON_ArrayForEach(e, errs)
    {
        int64_t line = json_int64(e, "line", -1), idx = json_int64(e, "record_index", -1);
        if (line >= 0)
            printf("  line %" PRId64, line);
        else if (idx >= 0)
            printf("  record %" PRId64, idx);
        else
            printf("  -");
        printf("  %s  %s\n", msg_or(json_str(e, "field"), "-"), msg_or(json_str(e, "message"), ""));
    }
}

static void show_history(const ctl_ctx *x, const cJSON *job)
{
    const cJSON *history = cJSON_GetObjectItemCaseSensitive(job, "history");
    printf("history:\n");
    if (cJSON_GetArraySize(history) == 0)
        printf("  (none)\n");
    size_t w = 0;
    const cJSON *h;
    cJSON_ArrayForEach(h, history)
    {
        const char *s = json_str(h, "state");
        if (s && strlen(s) > w)
            w = strlen(s);
    }
    cJSON_ArrayForEach(h, history)
    {
        const char *s = json_str(h, "state");
        const char *note = json_str(h, "note");
        printf("  %-20s  ", json_str(h, "at") ? json_str(h, "at") : "-");
        const char *col = ctl_state_color(s);
        if (x->color && col)
            printf("%s%-*s%s", col, (int)w, s ? s : "-", CTL_RESET);
        else
            printf("%-*s", (int)w, s ? s : "-");
        printf("%s%s\n", note ? "  " : "", note ? note : "");
    }
}

static void show_job(const ctl_ctx *x, const cJSON *job)
{
    static const char *const fields[] = {"id",
                                         "name",
                                         "state",
                                         "dataset_id",
                                         "import_id",
                                         "batch_id",
                                         "records",
                                         "bytes_total",
                                         "bytes_sent",
                                         "import_status",
                                         "accepted_count",
                                         "rejected_count",
                                         "batch_status",
                                         "total_task_count",
                                         "attempts",
                                         "retry_at",
                                         "last_error",
                                         "created_at",
                                         "updated_at",
                                         "source"};
    int64_t now = time_now_ms();
    for (size_t i = 0; i < BD_ARRAY_LEN(fields); i++)
        show_value(x, fields[i], cJSON_GetObjectItemCaseSensitive(job, fields[i]), now);
    char at[512];
    if (*ctl_append_text(job, true, at, sizeof(at)))
        printf("%-17s %s\n", "append_to", at);
    /* Fields newer than this batchctl still show. */
    const cJSON *v;
    cJSON_ArrayForEach(v, job)
    {
        bool known = strcmp(v->string, "history") == 0 || strcmp(v->string, "record_errors") == 0 ||
                     strcmp(v->string, "append_to") == 0;
        for (size_t i = 0; i < BD_ARRAY_LEN(fields) && !known; i++)
            known = strcmp(fields[i], v->string) == 0;
        if (!known)
            show_value(x, v->string, v, now);
    }
    show_record_errors(job);
    show_history(x, job);
}

static bool job_failed(const cJSON *job)
{
    const char *s = json_str(job, "state");
    return s && (strcmp(s, "failed") == 0 || strcmp(s, "cancelled") == 0);
}

int ctl_show(const ctl_ctx *x, int argc, char **argv)
{
    if (!positional(argc, argv, 1))
        return ctl_usage("show", "JOB");
    cJSON *params = cJSON_CreateObject();
    cJSON_AddStringToObject(params, "job", last_positional(argc, argv));
    vlclient_reply r;
    int code = call1(x, "io.batchd.GetJob", params, &r);
    cJSON_Delete(params);
    if (code != 0)
        return code;
    const cJSON *job = cJSON_GetObjectItemCaseSensitive(r.parameters, "job");
    if (x->json)
        print_json(r.parameters);
    else
        show_job(x, job);
    code = job_failed(job) ? CTL_EXIT_JOB_FAILED : CTL_EXIT_OK;
    vlclient_reply_clear(&r);
    return code;
}

int ctl_get_job(const ctl_ctx *x, const char *ref, cJSON **job)
{
    cJSON *params = cJSON_CreateObject();
    cJSON_AddStringToObject(params, "job", ref);
    vlclient_reply r;
    int code = call1(x, "io.batchd.GetJob", params, &r);
    cJSON_Delete(params);
    if (code != 0)
        return code;
    *job = cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(r.parameters, "job"), 1);
    vlclient_reply_clear(&r);
    if (!cJSON_IsObject(*job)) {
        cJSON_Delete(*job);
        *job = NULL;
        fprintf(stderr, "batchctl: batchd's GetJob reply has no job\n");
        return CTL_EXIT_PROTOCOL;
    }
    /* The same fields as Watch's events: the caller follows it with those. */
    cJSON_DeleteItemFromObjectCaseSensitive(*job, "history");
    cJSON_DeleteItemFromObjectCaseSensitive(*job, "record_errors");
    return 0;
}

/* ---------------------------------------------------------------- changes */

static int job_change(const ctl_ctx *x, int argc, char **argv, const char *method, const char *verb)
{
    if (!positional(argc, argv, 1))
        return ctl_usage(argv[0], "JOB");
    cJSON *params = cJSON_CreateObject();
    cJSON_AddStringToObject(params, "job", last_positional(argc, argv));
    vlclient_reply r;
    int code = call1(x, method, params, &r);
    cJSON_Delete(params);
    if (code != 0)
        return code;
    const cJSON *job = cJSON_GetObjectItemCaseSensitive(r.parameters, "job");
    if (x->json)
        print_json(r.parameters);
    else
        printf("%s %s (%s): now %s\n", verb, json_str(job, "name") ? json_str(job, "name") : "?",
               json_str(job, "id") ? json_str(job, "id") : "?",
               json_str(job, "state") ? json_str(job, "state") : "?");
    vlclient_reply_clear(&r);
    return CTL_EXIT_OK;
}

/* retry --failed pages through the failed jobs this many at a time: each carries texts of up
 * to 4 KiB, and one reply with all of them could pass the reply cap. */
#define RETRY_PAGE 50

/* The ids retry --failed has tried: a refused job stays failed and shows up again. */
typedef struct id_set {
    char **ids;
    size_t n, cap;
} id_set;

static bool id_set_add(id_set *s, const char *id)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->ids[i], id) == 0)
            return false;
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 64;
        s->ids = xrealloc(s->ids, s->cap * sizeof *s->ids);
    }
    s->ids[s->n++] = xstrdup(id);
    return true;
}

static int list_failed(const ctl_ctx *x, vlclient *c, size_t limit, vlclient_reply *list)
{
    cJSON *params = cJSON_CreateObject();
    cJSON_AddItemToArray(cJSON_AddArrayToObject(params, "states"), cJSON_CreateString("failed"));
    cJSON_AddNumberToObject(params, "limit", (double)limit);
    int code = call_on(x, c, "io.batchd.ListJobs", params, list);
    cJSON_Delete(params);
    return code;
}

/* Retries one failed job: 0, the exit code of a refusal (*refused), or of a failure that
 * ends retry --failed. */
static int retry_one(const ctl_ctx *x, vlclient *c, const char *id, cJSON *out, int *refused)
{
    cJSON *params = cJSON_CreateObject();
    cJSON_AddStringToObject(params, "job", id);
    vlclient_reply r;
    int rc = call_on(x, c, "io.batchd.Retry", params, &r);
    cJSON_Delete(params);
    if (rc != 0) {
        if (rc == CTL_EXIT_UNAVAILABLE || rc == CTL_EXIT_PROTOCOL || rc == CTL_EXIT_NOPERM)
            return rc;
        *refused = rc;
        return 0;
    }
    const cJSON *job = cJSON_GetObjectItemCaseSensitive(r.parameters, "job");
    if (x->json)
        cJSON_AddItemToArray(out, cJSON_Duplicate(job, 1));
    else
        printf("retrying %s (%s): now %s\n", msg_or(json_str(job, "name"), "?"),
               msg_or(json_str(job, "id"), "?"), msg_or(json_str(job, "state"), "?"));
    vlclient_reply_clear(&r);
    return 0;
}

/* One page of failed jobs: retries those not tried yet. *fresh says how many there were,
 * *full whether the page was full (more may be behind it). */
static int retry_page(const ctl_ctx *x, vlclient *c, size_t limit, id_set *tried, cJSON *out,
                      int *refused, size_t *fresh, bool *full)
{
    vlclient_reply list = {0};
    int code = list_failed(x, c, limit, &list);
    *fresh = 0;
    const cJSON *jobs =
        code == 0 ? cJSON_GetObjectItemCaseSensitive(list.parameters, "jobs") : NULL;
    *full = (size_t)cJSON_GetArraySize(jobs) >= limit;
    const cJSON *j;
    cJSON_ArrayForEach(j, jobs)
    {
        const char *id = json_str(j, "id");
        if (!id || !id_set_add(tried, id))
            continue;
        (*fresh)++;
        code = retry_one(x, c, id, out, refused);
        if (code != 0)
            break;
    }
    vlclient_reply_clear(&list);
    return code;
}

/* retry --failed: every failed job (not the cancelled ones), each on its own call so that
 * one refusal does not stop the others. Retried jobs leave the failed state, so the newest
 * page is asked for again until it holds none not tried yet; refused ones stay at its head,
 * so the page grows past them only when they fill it (each job is tried once). */
static int retry_failed(const ctl_ctx *x)
{
    vlclient *c = NULL;
    int code = open_client(x, &c);
    cJSON *out = cJSON_CreateArray();
    id_set tried = {0};
    int refused = 0;
    size_t limit = RETRY_PAGE;
    while (code == 0) {
        size_t fresh = 0;
        bool full = false;
        code = retry_page(x, c, limit, &tried, out, &refused, &fresh, &full);
        if (code != 0 || (fresh == 0 && !full))
            break;
        if (fresh == 0)
            limit += RETRY_PAGE;
    }
    if (code == 0 && x->json)
        print_json(out);
    else if (code == 0 && tried.n == 0)
        printf("no failed jobs\n");
    cJSON_Delete(out);
    for (size_t i = 0; i < tried.n; i++)
        free(tried.ids[i]);
    free(tried.ids);
    vlclient_free(c);
    return code != 0 ? code : refused;
}

int ctl_retry(const ctl_ctx *x, int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--failed") == 0)
        return retry_failed(x);
    return job_change(x, argc, argv, "io.batchd.Retry", "retrying");
}

int ctl_cancel(const ctl_ctx *x, int argc, char **argv)
{
    return job_change(x, argc, argv, "io.batchd.Cancel", "cancelled");
}

static int simple(const ctl_ctx *x, int argc, char **argv, const char *method, const char *said)
{
    if (!positional(argc, argv, 0))
        return ctl_usage(argv[0], "");
    vlclient_reply r;
    int code = call1(x, method, NULL, &r);
    if (code != 0)
        return code;
    if (x->json)
        print_json(r.parameters);
    else
        puts(said);
    vlclient_reply_clear(&r);
    return CTL_EXIT_OK;
}

int ctl_pause(const ctl_ctx *x, int argc, char **argv)
{
    return simple(x, argc, argv, "io.batchd.Pause",
                  "batchd paused: no new jobs are claimed and no new requests are sent; requests "
                  "in flight finish. The pause lasts across restarts; undo it with: batchctl "
                  "resume");
}

int ctl_resume(const ctl_ctx *x, int argc, char **argv)
{
    return simple(x, argc, argv, "io.batchd.Resume", "batchd resumed");
}

static void print_list(const char *title, const cJSON *arr)
{
    if (cJSON_GetArraySize(arr) == 0)
        return;
    printf("%s", title);
    const cJSON *s;
    const char *sep = " ";
    cJSON_ArrayForEach(s, arr)
    {
        if (cJSON_IsString(s)) {
            printf("%s%s", sep, s->valuestring);
            sep = ", ";
        }
    }
    putchar('\n');
}

int ctl_reload(const ctl_ctx *x, int argc, char **argv)
{
    if (!positional(argc, argv, 0))
        return ctl_usage("reload", "");
    vlclient_reply r;
    int code = call1(x, "io.batchd.Reload", NULL, &r);
    if (code != 0)
        return code;
    if (x->json) {
        print_json(r.parameters);
    } else {
        puts("configuration reloaded");
        print_list("applied:", cJSON_GetObjectItemCaseSensitive(r.parameters, "applied"));
        print_list("needs a restart to take effect:",
                   cJSON_GetObjectItemCaseSensitive(r.parameters, "restart_required"));
    }
    vlclient_reply_clear(&r);
    return CTL_EXIT_OK;
}

int ctl_watch_open(const ctl_ctx *x, vlclient **c, vlclient_reply *first)
{
    int code = open_client(x, c);
    if (code != 0)
        return code;
    int r = vlclient_send(*c, "io.batchd.Watch", NULL, VLCLIENT_MORE);
    if (r == 0)
        r = vlclient_recv(*c, x->timeout_ms, first);
    if (r == 0)
        ctl_defang_reply(x, first);
    if (r < 0)
        code = recv_failed(x, r);
    else if (first->error) {
        code = error_reply(x, "io.batchd.Watch", first);
        vlclient_reply_clear(first);
    }
    if (code != 0) {
        vlclient_free(*c);
        *c = NULL;
    }
    return code;
}

int ctl_watch_lost(const ctl_ctx *x, int r)
{
    return recv_failed(x, r);
}

/* The text goes out as the daemon made it when piped (promtool, a scraper script); on a
 * terminal each line is escaped like every other daemon text. Not defanged as a whole: its
 * line breaks are the format's. */
int ctl_metrics(const ctl_ctx *x, int argc, char **argv)
{
    if (!positional(argc, argv, 0))
        return ctl_usage("metrics", "");
    vlclient *c = NULL;
    vlclient_reply r = {0};
    int code = open_client(x, &c);
    if (code != 0)
        return code;
    int rc = vlclient_send(c, "io.batchd.GetMetrics", NULL, 0);
    if (rc == 0)
        rc = vlclient_recv(c, x->timeout_ms, &r);
    vlclient_free(c);
    if (rc < 0)
        return recv_failed(x, rc);
    if (r.error) {
        ctl_defang_reply(x, &r);
        code = error_reply(x, "io.batchd.GetMetrics", &r);
        vlclient_reply_clear(&r);
        return code;
    }
    const char *text = json_str(r.parameters, "text");
    if (!text) {
        fprintf(stderr, "batchctl: the daemon's GetMetrics reply has no text\n");
        vlclient_reply_clear(&r);
        return CTL_EXIT_PROTOCOL;
    }
    if (x->json) {
        print_json(r.parameters);
    } else if (!x->tty) {
        fputs(text, stdout);
    } else {
        for (const char *p = text; *p;) {
            size_t n = strcspn(p, "\n");
            char *line = xstrndup(p, n);
            printf("%s\n", ctl_esc(line));
            free(line);
            p += n + (p[n] == '\n');
        }
    }
    vlclient_reply_clear(&r);
    return CTL_EXIT_OK;
}
