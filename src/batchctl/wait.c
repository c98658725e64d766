/* wait: blocks until named jobs are finished, following io.batchd.Watch (the daemon pushes
 * every change, so nothing is polled). The Watch starts before the jobs are looked up, so a
 * change between the lookup and the first event cannot be missed. Shared by batchctl wait and
 * submit --wait. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "batchctl.h"
#include "batchd/util.h"

static const char wait_usage[] = "JOB... [--timeout DURATION]";

static bool all_finished(const cJSON *jobs)
{
    const cJSON *j;
    cJSON_ArrayForEach(j, jobs)
    {
        if (!ctl_job_finished(j))
            return false;
    }
    return true;
}

/* Replaces the tracked job that has job's id with a copy of it. */
static void track_change(cJSON *jobs, const cJSON *job)
{
    const char *id = json_str(job, "id");
    cJSON *j;
    int i = 0;
    cJSON_ArrayForEach(j, jobs)
    {
        const char *tid = json_str(j, "id");
        if (id && tid && strcmp(id, tid) == 0) {
            cJSON_ReplaceItemInArray(jobs, i, cJSON_Duplicate(job, 1));
            return;
        }
        i++;
    }
}

static const char *name_of(const cJSON *j)
{
    return json_str(j, "name") ? json_str(j, "name") : "?";
}

static const char *id_of(const cJSON *j)
{
    return json_str(j, "id") ? json_str(j, "id") : "?";
}

/* One job's line: nothing for a ready one with --json (the array says it all). */
static void report_job(const ctl_ctx *x, const cJSON *j)
{
    const char *s = json_str(j, "state") ? json_str(j, "state") : "?";
    const char *msg = json_str(j, "error_message");
    const char *batch = json_str(j, "batch_id");
    if (!ctl_job_finished(j))
        fprintf(stderr, "batchctl: wait: %s (%s) is still %s\n", name_of(j), id_of(j), s);
    else if (strcmp(s, "ready") == 0 && !x->json)
        printf("%s (%s): ready%s%s\n", name_of(j), id_of(j), batch ? ", batch " : "",
               batch ? batch : "");
    else if (strcmp(s, "ready") != 0)
        fprintf(x->json ? stderr : stdout, "%s (%s): %s: %s%s%s\n", name_of(j), id_of(j), s,
                json_str(j, "error_code") ? json_str(j, "error_code") : "error", msg ? ": " : "",
                msg ? msg : "");
}

/* The outcome: each job with its state (failed ones with their error); 0, 1 or 75. */
static int report(const ctl_ctx *x, const cJSON *jobs, bool timed_out)
{
    int code = CTL_EXIT_OK;
    const cJSON *j;
    cJSON_ArrayForEach(j, jobs)
    {
        const char *s = json_str(j, "state");
        if (!ctl_job_finished(j))
            code = CTL_EXIT_TEMPFAIL;
        else if (strcmp(s, "ready") != 0 && code == CTL_EXIT_OK)
            code = CTL_EXIT_JOB_FAILED;
    }
    if (timed_out)
        code = CTL_EXIT_TEMPFAIL;
    if (x->json) {
        char *s = json_print_pretty(jobs);
        fputs(s, stdout);
        free(s);
    }
    cJSON_ArrayForEach(j, jobs)
    {
        report_job(x, j);
    }
    if (timed_out)
        fprintf(stderr, "batchctl: wait: timed out\n");
    return code;
}

int ctl_wait_follow(const ctl_ctx *x, vlclient *c, cJSON *jobs, int64_t timeout_ms)
{
    int64_t deadline = timeout_ms >= 0 ? time_mono_ms() + timeout_ms : -1;
    while (!all_finished(jobs)) {
        int64_t left = deadline < 0 ? -1 : deadline - time_mono_ms();
        if (deadline >= 0 && left <= 0)
            return report(x, jobs, true);
        vlclient_reply r;
        int rr = vlclient_recv(c, left, &r);
        if (rr == -ETIMEDOUT)
            return report(x, jobs, true);
        if (rr < 0) {
            fprintf(stderr, "batchctl: wait: batchd went away before the jobs finished\n");
            return rr == -ECONNRESET || rr == -EPIPE ? CTL_EXIT_UNAVAILABLE : ctl_watch_lost(x, rr);
        }
        ctl_defang_reply(x, &r);
        if (r.error) {
            fprintf(stderr, "batchctl: wait: the watch ended: %s\n", r.error);
            vlclient_reply_clear(&r);
            return CTL_EXIT_UNAVAILABLE;
        }
        const cJSON *job = cJSON_GetObjectItemCaseSensitive(r.parameters, "job");
        if (job)
            track_change(jobs, job);
        vlclient_reply_clear(&r);
    }
    return report(x, jobs, false);
}

int ctl_parse_timeout(const char *cmd, const char *s, int64_t *ms)
{
    if (duration_parse(s, ms) < 0 || *ms < 0) {
        fprintf(stderr, "batchctl %s: --timeout %s: not a duration (e.g. 90, 30s, 10m, 2h)\n", cmd,
                s);
        return CTL_EXIT_USAGE;
    }
    return 0;
}

int ctl_wait(const ctl_ctx *x, int argc, char **argv)
{
    int64_t timeout = -1;
    const char **refs = xcalloc((size_t)argc + 1, sizeof(*refs));
    size_t n = 0;
    int code = 0;
    bool rest = false;
    for (int i = 1; i < argc && code == 0; i++) {
        const char *a = argv[i];
        if (!rest && strcmp(a, "--timeout") == 0 && i + 1 < argc)
            code = ctl_parse_timeout("wait", argv[++i], &timeout);
        else if (!rest && strncmp(a, "--timeout=", 10) == 0)
            code = ctl_parse_timeout("wait", a + 10, &timeout);
        else if (!rest && strcmp(a, "--") == 0)
            rest = true;
        else if (!rest && a[0] == '-' && a[1])
            code = ctl_usage("wait", wait_usage);
        else
            refs[n++] = a;
    }
    if (code == 0 && n == 0)
        code = ctl_usage("wait", wait_usage);
    vlclient *c = NULL;
    vlclient_reply snap;
    if (code == 0)
        code = ctl_watch_open(x, &c, &snap);
    if (code != 0) {
        free(refs);
        return code;
    }
    vlclient_reply_clear(&snap);
    cJSON *jobs = cJSON_CreateArray();
    for (size_t i = 0; i < n && code == 0; i++) {
        cJSON *job = NULL;
        code = ctl_get_job(x, refs[i], &job);
        if (code == 0)
            cJSON_AddItemToArray(jobs, job);
    }
    if (code == 0)
        code = ctl_wait_follow(x, c, jobs, timeout);
    cJSON_Delete(jobs);
    vlclient_free(c);
    free(refs);
    return code;
}
