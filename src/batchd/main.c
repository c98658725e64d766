/* batchd: the daemon's entry point. Wiring only: parse the command line, load the config,
 * set the modules up, run the loop, tear down. The work is elsewhere: the runner runs the
 * jobs (batchd/runner.h, over backend.c; the decisions are in the job module), ctl.c answers the
 * control socket, reload.c holds the reload policy, hold.c the pause and the token hold, stop.c the
 * signals and stopping. */
#include "batchd.h"
#include "hooks.h"
#include "metrics_http.h"
#include "memory.h"

#include "batchd/fsutil.h"
#include "batchd/log.h"
#include "batchd/manifest.h"
#include "batchd/notify.h"
#include "batchd/store.h"
#include "batchd/util.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <unistd.h>

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: batchd [-c FILE] [--check-config] [-V|--version] [-h|--help]\n"
            "\n"
            "Turns datasets dropped into a spool directory into READY Prolific AI Task Builder\n"
            "batches. Runs in the foreground; systemd supervises it.\n"
            "\n"
            "  -c, --config FILE   configuration file (default: $BATCHD_CONFIG, else %s)\n"
            "      --check-config  check the configuration, token source, directories and\n"
            "                      templates, print each problem with file:line, exit 0 or 78\n"
            "  -V, --version       print the version and exit\n"
            "  -h, --help          print this help and exit\n"
            "\n"
            "Signals: SIGTERM/SIGINT stop (jobs resume on the next start), SIGHUP reloads the\n"
            "configuration. See batchd(8) and batchd.conf(5).\n",
            CONFIG_DEFAULT_PATH);
}

static void print_diag(const diag *dg)
{
    for (size_t i = 0; i < dg->count; i++)
        fprintf(stderr, "batchd: %s\n", dg->lines[i]);
}

/* Removes the variable, and wipes its "NAME=value" string where it lies: unsetenv only drops
 * the pointer, while /proc/PID/environ keeps showing the block the process started with. */
static void scrub_env_token(void)
{
    static const char name[] = "BATCHD_API_TOKEN=";
    char *v = getenv("BATCHD_API_TOKEN");
    if (!v)
        return;
    char *entry = v - (sizeof name - 1);
    unsetenv("BATCHD_API_TOKEN");
    secret_wipe(entry, strlen(entry));
}

/* Jobs whose job.json names a workspace still run, so this does not stop the daemon (batchd
 * --check-config fails on it). */
static void warn_no_workspace(const config *c)
{
    if (c->api.workspace_id)
        return;
    char *ws = c->job.template_path ? manifest_template_workspace(c->job.template_path, c) : NULL;
    if (ws) {
        free(ws);
        return;
    }
    log_warn("%s: neither [api] workspace_id nor the template %s names a workspace: every data "
             "file dropped on its own will fail; set [api] workspace_id",
             c->path, c->job.template_path ? c->job.template_path : "(none)");
}

static char *strip_slash(const char *url)
{
    size_t n = strlen(url);
    while (n > 0 && url[n - 1] == '/')
        n--;
    return xstrndup(url, n);
}

/* One daemon per spool and per state directory: a second one would claim the same entries
 * and write the same records. The lock lives as long as the process (the fd is never
 * closed), so a crash releases it. Returns 0, or a sysexits code after logging why. */
static int lock_dir(const char *dir, const char *name)
{
    int r = fsutil_mkdir_p(dir, 0750);
    char *path = fsutil_join(dir, name);
    int fd = r < 0 ? r : open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        log_error("cannot create the lock file %s: %s", path, strerror(r < 0 ? -r : errno));
        free(path);
        return EX_CANTCREAT;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        log_error("another batchd is already running with %s (it holds %s); stop it first, or "
                  "give this one its own [spool] dir and [state] dir",
                  dir, path);
        close(fd);
        free(path);
        return EX_UNAVAILABLE;
    }
    free(path);
    return 0;
}

static void on_spool_change(void *ud)
{
    batchd *d = ud;
    runner_incoming_changed(d->runner);
}

/* ---- what the runner reports ---- */

static void on_job_changed(void *ud, const job *j, const char *as_state)
{
    batchd *d = ud;
    metrics_job_changed(d->metrics, j, as_state, time_now_ms());
    if (!d->ctl)
        return;
    cJSON *pub = job_to_public(j, false);
    if (as_state)
        cJSON_ReplaceItemInObjectCaseSensitive(pub, "state", cJSON_CreateString(as_state));
    control_job_changed(d->ctl, pub);
    cJSON_Delete(pub);
}

static void on_status(void *ud, size_t active, size_t done, size_t failed)
{
    const batchd *d = ud;
    notify_status("%zu active, %zu done, %zu failed%s", active, done, failed,
                  d->token_hold ? ", on hold: the API rejected the token (fix it, then reload)"
                  : d->paused   ? ", paused by an operator (batchctl resume lifts it)"
                                : "");
}

static void on_request_ended(void *ud)
{
    batchd_check_drained(ud);
}

static void on_token_rejected(void *ud, unsigned gen)
{
    batchd_token_rejected(ud, gen);
}

static void on_job_finished(void *ud, const job *j)
{
    const batchd *d = ud;
    metrics_job_finished(d->metrics, j, time_now_ms());
    hooks_job_finished(d->hooks, j);
}

static void on_request_done(void *ud, const job *j, const runner_request_info *info)
{
    (void)j;
    const batchd *d = ud;
    metrics_request rq = {
        .endpoint = job_op_name(info->op),
        .status = info->status,
        .latency_ms = info->latency_ms,
        .retry_reason = info->retry_reason,
        .upload_bytes = info->upload_bytes,
    };
    metrics_request_done(d->metrics, &rq);
}

static void on_export_done(void *ud, const job *j)
{
    const batchd *d = ud;
    metrics_export_ended(d->metrics, true);
    hooks_export_done(d->hooks, j);
}

static void on_export_failed(void *ud, const job *j)
{
    (void)j;
    const batchd *d = ud;
    metrics_export_ended(d->metrics, false);
}

/* Export exchanges count with the API's requests, each under its own endpoint name. */
static void on_export_request_done(void *ud, export_op op, long status, int64_t latency_ms)
{
    const batchd *d = ud;
    static const char *const endpoints[EXPORT_OP_COUNT] = {
        [EXPORT_OP_NONE] = "export_none",     [EXPORT_OP_REQUEST] = "export_request",
        [EXPORT_OP_STATUS] = "export_status", [EXPORT_OP_DOWNLOAD] = "export_download",
        [EXPORT_OP_DELETE] = "export_delete",
    };
    metrics_request rq = {
        .endpoint = (unsigned)op < EXPORT_OP_COUNT ? endpoints[op] : "export_none",
        .status = status,
        .latency_ms = latency_ms,
    };
    metrics_request_done(d->metrics, &rq);
}

static const runner_hooks runner_hooks_of_main = {
    .job_changed = on_job_changed,
    .status = on_status,
    .request_ended = on_request_ended,
    .token_rejected = on_token_rejected,
    .job_finished = on_job_finished,
    .request_done = on_request_done,
    .export_done = on_export_done,
    .export_failed = on_export_failed,
    .export_request_done = on_export_request_done,
};

/* ---- hooks ---- */

static void on_hook_note(void *ud, const char *job_id, const char *text)
{
    const batchd *d = ud;
    if (d->runner)
        (void)runner_note(d->runner, job_id, text); /* an evicted job: the log has it */
}

/* Each attempt that ends: hook "on_ready"/"on_failed" and outcome "ok", "failed", "killed",
 * "timeout" or "not_run" (hookq_outcome_name). The metrics registry counts it here. */
static void on_hook_outcome(void *ud, const char *hook, const char *outcome)
{
    const batchd *d = ud;
    metrics_hook_run(d->metrics, hook, outcome);
}

/* After recovery: the journal's runs that had not ended, and the finished jobs whose run the
 * journal does not have yet (hooks.c explains why that closes the gap). */
static int start_hooks(batchd *d)
{
    hooks_options ho = {
        .loop = d->loop,
        .state_dir = d->cfg->c.state.dir,
        .done_dir = spool_dir(d->sp, "done"),
        .failed_dir = spool_dir(d->sp, "failed"),
        .ud = d,
        .note = on_hook_note,
        .outcome = on_hook_outcome,
    };
    d->hooks = hooks_new(&ho, &d->cfg->c);
    if (!d->hooks)
        return EX_CANTCREAT;
    for (size_t i = 0; i < runner_count(d->runner); i++)
        hooks_catch_up(d->hooks, runner_job_at(d->runner, i));
    hooks_caught_up(d->hooks);
    return 0;
}

static char *render_metrics(void *ud)
{
    return batchd_metrics_text(ud);
}

/* [metrics] listen: off unless configured. */
static int start_metrics_http(batchd *d)
{
    const char *listen = d->cfg->c.metrics.listen;
    if (!listen)
        return 0;
    char *err = NULL;
    if (metrics_http_start(d->loop, listen, render_metrics, d, &d->metrics_http, &err) < 0) {
        log_error("[metrics] listen = %s: cannot serve the metrics there: %s (is another "
                  "program on that port? is the address one of this host's?)",
                  listen, err);
        free(err);
        return EX_UNAVAILABLE;
    }
    log_info("serving GET /metrics on %s", listen);
    return 0;
}

/* The locks, the spool and the state directory. Returns 0, or a sysexits code after logging
 * why. */
static int start_dirs(batchd *d)
{
    char *err = NULL;
    const config *c = &d->cfg->c;
    int locked = lock_dir(c->state.dir, "batchd.lock");
    if (locked == 0)
        locked = lock_dir(c->spool.dir, ".batchd.lock");
    if (locked != 0)
        return locked;
    d->sp = spool_new(c->spool.dir);
    if (spool_init(d->sp, &err) < 0) {
        log_error("cannot set up the spool: %s", err ? err : "?");
        free(err);
        return EX_CANTCREAT;
    }
    if (store_init(c->state.dir, &err) < 0) {
        log_error("cannot set up the state directory: %s", err ? err : "?");
        free(err);
        return EX_CANTCREAT;
    }
    return 0;
}

static int start_control(batchd *d)
{
    char *err = NULL;
    const config *c = &d->cfg->c;
    control_options co = {
        .socket_path = c->control.socket,
        .group = c->control.group,
        /* batchd(8), CONTROL SOCKET: a member of the control group can read, not harm. Calls are
         * small (a job name at most), replies bounded (ListJobs limit), and everything held
         * for clients stays within a 48 MiB budget, so below 64 MiB whatever they do. */
        .max_connections = 1024,
        .max_per_uid = 256,
        .reserved_connections = 32,
        .max_message = 64 << 10,
        .max_pending_out = 4 << 20,
        .max_stream_out = 1 << 20,
        .memory_budget = 48 << 20,
        .idle_timeout_ms = 60000,
        .version = BATCHD_VERSION,
    };
    control_ops ops = ctl_ops;
    ops.ud = d;
    int rc = control_start(d->loop, &co, &ops, &d->ctl, &err);
    if (rc < 0) {
        log_error("cannot listen on %s: %s", c->control.socket, err ? err : strerror(-rc));
        free(err);
        return rc == -EADDRINUSE ? EX_UNAVAILABLE : EX_CANTCREAT;
    }
    return 0;
}

static int start(batchd *d)
{
    const config *c = &d->cfg->c;
    int code = start_dirs(d);
    if (code != 0)
        return code;
    http_client_options ho = batchd_http_options(c);
    d->http = http_client_new(d->loop, &ho);
    if (!d->http) {
        log_error("cannot start the HTTP client");
        return EX_SOFTWARE;
    }
    uv_timer_init(d->loop, &d->drain_timer);
    runner_hooks rh = runner_hooks_of_main;
    rh.ud = d;
    d->runner = backend_runner_new(d, &rh);
    /* Before any claim or request: an operator's pause outlives the process (ctl.c). */
    if (backend_pause_marker_present(d)) {
        log_notice("starting paused: an operator paused batchd (%s/%s exists); nothing is "
                   "claimed or sent until batchctl resume",
                   c->state.dir, BATCHD_PAUSE_MARKER);
        batchd_set_paused(d, true, false);
    }
    /* Recover first, then listen: a client never sees a half-loaded job table. */
    if (runner_recover(d->runner) < 0)
        return EX_IOERR;
    code = start_hooks(d);
    if (code != 0)
        return code;
    code = start_control(d);
    if (code == 0)
        code = start_metrics_http(d);
    if (code != 0)
        return code;
    batchd_signals_start(d);
    notify_init(d->loop);
    d->watch = spool_watch_start(d->sp, d->loop, c->spool.rescan_interval_ms, on_spool_change, d);
    if (!d->watch) {
        log_error("cannot watch %s", spool_dir(d->sp, "incoming"));
        return EX_OSERR;
    }
    runner_drive_all(d->runner);
    runner_update_status(d->runner);
    notify_ready();
    log_notice("batchd %s ready: spool %s, state %s, API %s, control %s", BATCHD_VERSION,
               c->spool.dir, c->state.dir, d->api_url, c->control.socket);
    return 0;
}

/* Returns -1 to go on, else the exit code. */
static int parse_args(int argc, char **argv, const char **explicit_path, bool *check)
{
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'},
        {"check-config", no_argument, NULL, 'C'},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int opt;
    while ((opt = getopt_long(argc, argv, "c:hV", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            *explicit_path = optarg;
            break;
        case 'C':
            *check = true;
            break;
        case 'V':
            printf("batchd %s\n", BATCHD_VERSION);
            return EX_OK;
        case 'h':
            usage(stdout);
            return EX_OK;
        default:
            usage(stderr);
            return EX_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "batchd: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return EX_USAGE;
    }
    return -1;
}

static void harden(void)
{
    /* A peer that hangs up (a batchctl, the API) must be an EPIPE, not the end of the daemon. */
    signal(SIGPIPE, SIG_IGN);
    /* Before any token is read: no core file and no ptrace by other users can hold it, and
     * /proc/PID/environ and friends become root's only. */
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
        log_warn("cannot make the process non-dumpable: %s", strerror(errno));
}

/* Loads the config and the token into a zeroed d. Returns 0, or EX_CONFIG after printing
 * every problem. */
static int load(batchd *d, const char *path)
{
    d->config_path = xstrdup(path);
    d->cfg = cfgref_new();
    diag dg = {0};
    const char *source = NULL;
    int rc = config_load(path, &d->cfg->c, &dg);
    if (rc == 0 && config_check_hooks(&d->cfg->c, &dg) > 0)
        rc = -EINVAL;
    if (rc == 0)
        rc = config_load_token(&d->cfg->c, &d->token, &source, &dg);
    if (rc < 0) {
        print_diag(&dg);
        diag_free(&dg);
        cfgref_put(d->cfg);
        free(d->config_path);
        return EX_CONFIG;
    }
    diag_free(&dg);
    /* Read once; the environment is inherited by whatever runs later and shown in /proc. A
     * reload cannot read it again: it keeps this token unless a file source then has one. */
    d->token_from_env = source && strncmp(source, "environment", 11) == 0;
    scrub_env_token();
    log_info("configuration %s; API token from %s", path, source);
    warn_no_workspace(&d->cfg->c);
    d->api_url = strip_slash(d->cfg->c.api.url);
    d->started_at = time_now_ms();
    d->metrics = metrics_new(BATCHD_VERSION);
    batchd_apply_config(d);
    return 0;
}

/* Runs until stopped; returns 0, or the sysexits code of a start that failed. */
static int run(batchd *d)
{
    d->loop = uv_default_loop();
    memory_idle_trim_start(d->loop);
    int code = start(d);
    if (code != 0)
        batchd_stop_now(d); /* whatever started; the jobs' records are all durable already */
    uv_run(d->loop, UV_RUN_DEFAULT);
    uv_loop_close(d->loop);
    return code;
}

static void teardown(batchd *d)
{
    spool_free(d->sp);
    batchd_tokens_free(d);
    cfgref_put(d->cfg);
    free(d->api_url);
    free(d->config_path);
    metrics_free(d->metrics);
}

int main(int argc, char **argv)
{
    const char *explicit_path = NULL;
    bool check = false;
    int code = parse_args(argc, argv, &explicit_path, &check);
    if (code >= 0)
        return code;
    const char *path = config_default_path(explicit_path);
    harden();
    if (check)
        return intake_check_config(path, stdout);

    const char *lvl = getenv("BATCHD_LOG_LEVEL");
    log_init("batchd", lvl && strcmp(lvl, "debug") == 0 ? LOG_LVL_DEBUG : LOG_LVL_INFO);
    /* Validations and durable writes share libuv's pool: at least 12 threads, so that the
     * runner's four validations and the backend's lanes, one thread each (record writes,
     * checkpoints, the spool, the count, the marker: backend.c), leave some for the rest
     * (an export's fsync and ZIP check, the hooks' journal). Those are not capped: many at
     * once can make a write wait behind them, never block it. An inherited larger size is
     * kept. */
    const char *pool = getenv("UV_THREADPOOL_SIZE");
    if (!pool || strtol(pool, NULL, 10) < 12)
        setenv("UV_THREADPOOL_SIZE", "12", 1);

    batchd d;
    memset(&d, 0, sizeof d);
    code = load(&d, path);
    if (code != 0)
        return code;
    code = run(&d);
    teardown(&d);
    if (code == 0)
        log_notice("stopped");
    return code;
}
