/* export: io.batchd.Export of one ready job and, with --wait, its export followed to the end
 * on io.batchd.Watch (started before the call, so no change is missed; nothing is polled).
 * The Watch may still carry the job's earlier export: the end counts only once an event has
 * shown this export in progress (requested, generating or downloading), as every change of
 * it is published. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "batchctl.h"
#include "batchd/util.h"

static const char export_usage[] = "JOB [--wait] [--timeout DURATION]";

typedef struct export_args {
    const char *ref;
    bool wait;
    int64_t timeout_ms;
} export_args;

static int parse_args(int argc, char **argv, export_args *a)
{
    *a = (export_args){.timeout_ms = -1};
    bool rest = false;
    int code = 0;
    for (int i = 1; i < argc && code == 0; i++) {
        const char *s = argv[i];
        if (!rest && strcmp(s, "--wait") == 0)
            a->wait = true;
        else if (!rest && strcmp(s, "--timeout") == 0 && i + 1 < argc)
            code = ctl_parse_timeout("export", argv[++i], &a->timeout_ms);
        else if (!rest && strncmp(s, "--timeout=", 10) == 0)
            code = ctl_parse_timeout("export", s + 10, &a->timeout_ms);
        else if (!rest && strcmp(s, "--") == 0)
            rest = true;
        else if ((!rest && s[0] == '-' && s[1]) || a->ref)
            code = ctl_usage("export", export_usage);
        else
            a->ref = s;
    }
    if (code == 0 && !a->ref)
        code = ctl_usage("export", export_usage);
    return code;
}

static const char *export_state(const cJSON *job)
{
    return json_str(cJSON_GetObjectItemCaseSensitive(job, "export"), "state");
}

static bool in_progress(const char *s)
{
    return s && (strcmp(s, "requested") == 0 || strcmp(s, "generating") == 0 ||
                 strcmp(s, "downloading") == 0);
}

/* The spool directory, for the ZIP's full path: NULL when GetInfo does not say (malloc'd). */
static char *spool_dir(const ctl_ctx *x)
{
    vlclient_reply r;
    if (ctl_call(x, "io.batchd.GetInfo", NULL, &r) != 0)
        return NULL;
    const char *d = json_str(r.parameters, "spool_dir");
    char *out = d ? xstrdup(d) : NULL;
    vlclient_reply_clear(&r);
    return out;
}

/* The end of the export: the path (0) or the error (1). */
static int report(const ctl_ctx *x, const cJSON *job)
{
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(job, "export");
    const char *st = json_str(e, "state"), *path = json_str(e, "path");
    const char *name = json_str(job, "name") ? json_str(job, "name") : "?";
    if (x->json) {
        char *s = json_print_pretty(job);
        fputs(s, stdout);
        free(s);
    }
    if (!st || strcmp(st, "complete") != 0 || !path) {
        const char *err = json_str(e, "error");
        fprintf(stderr, "batchctl: export: %s: the export failed: %s\n", ctl_esc(name),
                err ? ctl_esc(err) : "no reason given");
        return CTL_EXIT_JOB_FAILED;
    }
    if (!x->json) {
        char *root = spool_dir(x);
        const char *dir = json_str(job, "dir") ? json_str(job, "dir") : "?";
        printf("%s%s%s/%s\n", root ? root : "", root ? "/" : "", ctl_esc(dir), ctl_esc(path));
        free(root);
    }
    return CTL_EXIT_OK;
}

static int follow(const ctl_ctx *x, vlclient *c, cJSON *job, int64_t timeout_ms)
{
    const char *id = json_str(job, "id");
    char *want = xstrdup(id ? id : "");
    /* The reply's own state does not count: the Watch carries it too, in order. */
    bool seen = false;
    int64_t deadline = timeout_ms >= 0 ? time_mono_ms() + timeout_ms : -1;
    int code = -1;
    while (code < 0 && !(seen && !in_progress(export_state(job)))) {
        int64_t left = deadline < 0 ? -1 : deadline - time_mono_ms();
        vlclient_reply r;
        int rr = deadline >= 0 && left <= 0 ? -ETIMEDOUT : vlclient_recv(c, left, &r);
        if (rr == -ETIMEDOUT) {
            fprintf(stderr, "batchctl: export: timed out (the export goes on)\n");
            code = CTL_EXIT_TEMPFAIL;
        } else if (rr < 0) {
            fprintf(stderr, "batchctl: export: batchd went away before the export ended\n");
            code = rr == -ECONNRESET || rr == -EPIPE ? CTL_EXIT_UNAVAILABLE : ctl_watch_lost(x, rr);
        } else {
            ctl_defang_reply(x, &r);
            const cJSON *j = cJSON_GetObjectItemCaseSensitive(r.parameters, "job");
            const char *jid = json_str(j, "id");
            if (jid && strcmp(jid, want) == 0) {
                cJSON_ReplaceItemInObjectCaseSensitive(
                    job, "export",
                    cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(j, "export"), 1));
                seen = seen || in_progress(export_state(job));
            }
            vlclient_reply_clear(&r);
        }
    }
    free(want);
    return code >= 0 ? code : report(x, job);
}

int ctl_export(const ctl_ctx *x, int argc, char **argv)
{
    export_args a;
    int code = parse_args(argc, argv, &a);
    if (code != 0)
        return code;
    vlclient *c = NULL;
    vlclient_reply snap;
    if (a.wait) {
        code = ctl_watch_open(x, &c, &snap);
        if (code != 0)
            return code;
        vlclient_reply_clear(&snap);
    }
    cJSON *params = cJSON_CreateObject();
    cJSON_AddStringToObject(params, "job", a.ref);
    vlclient_reply r;
    code = ctl_call(x, "io.batchd.Export", params, &r);
    cJSON_Delete(params);
    if (code != 0) {
        vlclient_free(c);
        return code;
    }
    ctl_defang_reply(x, &r);
    cJSON *job = cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(r.parameters, "job"), 1);
    vlclient_reply_clear(&r);
    if (!cJSON_IsObject(job)) {
        fprintf(stderr, "batchctl: batchd's Export reply has no job\n");
        code = CTL_EXIT_PROTOCOL;
    } else if (a.wait) {
        code = follow(x, c, job, a.timeout_ms);
    } else if (x->json) {
        char *s = json_print_pretty(job);
        fputs(s, stdout);
        free(s);
    } else {
        printf("export of %s (%s): %s\n",
               ctl_esc(json_str(job, "name") ? json_str(job, "name") : "?"),
               ctl_esc(json_str(job, "id") ? json_str(job, "id") : "?"),
               export_state(job) ? export_state(job) : "?");
    }
    cJSON_Delete(job);
    vlclient_free(c);
    return code;
}
