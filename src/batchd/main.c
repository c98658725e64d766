/* batchd: the daemon's entry point. Wiring only: parse the command line and the config,
 * recover state, listen on the control socket, tell systemd, run the loop, handle signals
 * and reloads. The work is the runner's (runner.h, over backend.c); the decisions the job module's. */
#include "batchd.h"

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
            "Usage: batchd [-c FILE] [--check-config] [--version] [--help]\n"
            "\n"
            "Turns datasets dropped into a spool directory into READY Prolific AI Task Builder\n"
            "batches. Runs in the foreground; systemd supervises it.\n"
            "\n"
            "  -c, --config FILE   configuration file (default: $BATCHD_CONFIG, else %s)\n"
            "      --check-config  check the configuration, token source, directories and\n"
            "                      templates, print each problem with file:line, exit 0 or 78\n"
            "      --version       print the version and exit\n"
            "  -h, --help          print this help and exit\n"
            "\n"
            "Signals: SIGTERM/SIGINT stop (jobs resume on the next start), SIGHUP reloads the\n"
            "configuration. See batchd(8) and batchd.conf(5).\n",
            CONFIG_DEFAULT_PATH);
}

static void print_diag(const config_diag *dg)
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
    explicit_bzero(entry, strlen(entry));
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

static void fill_params(batchd *d)
{
    const config *c = &d->cfg->c;
    job_params_default(&d->params);
    d->params.poll_initial_ms = c->poll.initial_ms;
    d->params.poll_max_ms = c->poll.max_ms;
    d->params.poll_multiplier = c->poll.multiplier;
    d->params.import_timeout_ms = c->poll.import_timeout_ms;
    d->params.batch_timeout_ms = c->poll.batch_timeout_ms;
    /* Retries start near the first poll interval and back off to the poll maximum. */
    d->params.retry_base_ms = c->poll.initial_ms < 1000 ? c->poll.initial_ms : 1000;
    d->params.retry_cap_ms = c->poll.max_ms > 300000 ? c->poll.max_ms : 300000;
    if (d->params.retry_cap_ms > c->poll.max_ms * 5)
        d->params.retry_cap_ms = c->poll.max_ms * 5;
}

static http_client_options http_options(const config *c)
{
    http_client_options o = {
        .timeout_ms = (long)c->api.timeout_ms,
        .max_connections = c->api.max_connections,
        .max_rate = c->api.max_rate,
        .burst = 0,
        .user_agent = "batchd/" BATCHD_VERSION,
    };
    return o;
}

void batchd_apply_config(batchd *d)
{
    fill_params(d);
    http_client_options ho = http_options(&d->cfg->c);
    if (d->http)
        http_client_configure(d->http, &ho);
    if (d->watch)
        spool_watch_set_interval(d->watch, d->cfg->c.spool.rescan_interval_ms);
    if (d->runner)
        runner_configure(d->runner, &d->params, (size_t)d->cfg->c.job.max_active);
}

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
    config_diag dg = {0};
    int rc = config_load_token(&d->cfg->c, &token, &source, &dg);
    if (rc < 0) {
        /* Not fatal for a resume: the token in use stays. */
        if (!(rc == -ENOENT && d->token_from_env))
            for (size_t i = 0; i < dg.count; i++)
                log_warn("resume: cannot read the API token, keeping the one in use: %s",
                         dg.lines[i]);
        config_diag_free(&dg);
        return;
    }
    config_diag_free(&dg);
    if (d->token && strcmp(d->token, token) == 0) {
        explicit_bzero(token, strlen(token));
        free(token);
        return;
    }
    if (d->token) {
        explicit_bzero(d->token, strlen(d->token));
        free(d->token);
    }
    d->token = token;
    d->token_gen++;
    log_notice("resume: a different API token was read from %s", source);
}

static bool str_differs(const char *a, const char *b)
{
    if (!a || !b)
        return a != b;
    return strcmp(a, b) != 0;
}

cJSON *ctl_reload(batchd *d, const char **err, char **err_msg)
{
    notify_reloading();
    log_notice("reloading %s", d->config_path);
    cfgref *n = cfgref_new();
    config_diag dg = {0};
    char *token = NULL;
    const char *source = NULL;
    int rc = config_load(d->config_path, &n->c, &dg);
    if (rc == 0)
        rc = config_load_token(&n->c, &token, &source, &dg);
    if (rc == -ENOENT && d->token_from_env && d->token) {
        /* The environment was cleared at start: the token read from it then still holds. */
        config_diag_free(&dg);
        token = xstrdup(d->token);
        source = "environment BATCHD_API_TOKEN (as read at start)";
        rc = 0;
    }
    if (rc < 0) {
        strbuf sb = {0};
        for (size_t i = 0; i < dg.count; i++)
            strbuf_printf(&sb, "%s%s", i ? "\n" : "", dg.lines[i]);
        log_error("reload failed; keeping the running configuration: %s", sb.data ? sb.data : "");
        *err = "io.batchd.ReloadFailed";
        *err_msg = strbuf_steal(&sb);
        config_diag_free(&dg);
        cfgref_put(n);
        notify_ready();
        return NULL;
    }
    config_diag_free(&dg);
    const config *o = &d->cfg->c, *c = &n->c;
    cJSON *reply = cJSON_CreateObject();
    cJSON *applied = cJSON_AddArrayToObject(reply, "applied");
    cJSON *restart = cJSON_AddArrayToObject(reply, "restart_required");
    /* What is bound at start (sockets, directories, the API the jobs were created in) needs a
     * restart; everything else applies to the next request or claim. */
    struct {
        const char *key;
        bool changed;
        bool needs_restart;
    } keys[] = {
        {"api.url", str_differs(o->api.url, c->api.url), true},
        {"spool.dir", str_differs(o->spool.dir, c->spool.dir), true},
        {"state.dir", str_differs(o->state.dir, c->state.dir), true},
        {"control.socket", str_differs(o->control.socket, c->control.socket), true},
        {"control.group", str_differs(o->control.group, c->control.group), true},
        {"api.workspace_id", str_differs(o->api.workspace_id, c->api.workspace_id), false},
        {"api.token_file", str_differs(o->api.token_file, c->api.token_file), false},
        {"api.timeout", o->api.timeout_ms != c->api.timeout_ms, false},
        {"api.max_rate", o->api.max_rate != c->api.max_rate, false},
        {"api.max_connections", o->api.max_connections != c->api.max_connections, false},
        {"spool.rescan_interval", o->spool.rescan_interval_ms != c->spool.rescan_interval_ms,
         false},
        {"poll.initial", o->poll.initial_ms != c->poll.initial_ms, false},
        {"poll.max", o->poll.max_ms != c->poll.max_ms, false},
        {"poll.multiplier", o->poll.multiplier != c->poll.multiplier, false},
        {"poll.import_timeout", o->poll.import_timeout_ms != c->poll.import_timeout_ms, false},
        {"poll.batch_timeout", o->poll.batch_timeout_ms != c->poll.batch_timeout_ms, false},
        {"job.template", str_differs(o->job.template_path, c->job.template_path), false},
        {"job.max_active", o->job.max_active != c->job.max_active, false},
        {"job.invalid_records", o->job.invalid_records != c->job.invalid_records, false},
        {"job.max_record_size", o->job.max_record_bytes != c->job.max_record_bytes, false},
    };
    for (size_t i = 0; i < BD_ARRAY_LEN(keys); i++)
        if (keys[i].changed)
            cJSON_AddItemToArray(keys[i].needs_restart ? restart : applied,
                                 cJSON_CreateString(keys[i].key));
    /* Keep the running values of what needs a restart, so nothing half-changes. */
    char **keep[] = {&n->c.api.url, &n->c.spool.dir, &n->c.state.dir, &n->c.control.socket,
                     &n->c.control.group};
    const char *cur[] = {o->api.url, o->spool.dir, o->state.dir, o->control.socket,
                         o->control.group};
    for (size_t i = 0; i < BD_ARRAY_LEN(keep); i++) {
        free(*keep[i]);
        *keep[i] = cur[i] ? xstrdup(cur[i]) : NULL;
    }
    bool token_changed = !d->token || strcmp(d->token, token) != 0;
    if (d->token) {
        explicit_bzero(d->token, strlen(d->token));
        free(d->token);
    }
    d->token = token;
    if (token_changed)
        d->token_gen++;
    cfgref_put(d->cfg);
    d->cfg = n;
    batchd_apply_config(d);
    char *a = json_print(applied), *rs = json_print(restart);
    log_notice("reloaded: applied %s; needs a restart: %s (token from %s)", a, rs, source);
    free(a);
    free(rs);
    notify_ready();
    if (d->token_hold && token_changed) {
        log_notice("reload loaded a different API token: lifting the hold; every job carries on");
        batchd_set_paused(d, d->operator_paused, false);
    } else if (d->token_hold) {
        log_warn("reload loaded the same API token the API rejected: still on hold; put the "
                 "right token in %s and reload again (or batchctl resume to try it once more)",
                 d->cfg->c.api.token_file ? d->cfg->c.api.token_file : source);
    }
    runner_update_status(d->runner);
    runner_claim_soon(d->runner);
    return reply;
}

static void on_hup(uv_signal_t *s, int signum)
{
    (void)signum;
    batchd *d = s->data;
    const char *err = NULL;
    char *msg = NULL;
    cJSON *r = ctl_reload(d, &err, &msg);
    cJSON_Delete(r);
    free(msg);
}

static void on_http_closed(void *ud)
{
    (void)ud;
}

/* Closes a handle once; a handle start() never initialised (still zeroed) is skipped. */
static void close_handle(uv_handle_t *h)
{
    if (h->type != UV_UNKNOWN_HANDLE && !uv_is_closing(h))
        uv_close(h, NULL);
}

/* Tears everything down; the loop ends once libuv has closed the handles and the thread
 * pool has returned its work. Every job's record is durable by then. */
static void stop_now(batchd *d)
{
    d->draining = false;
    runner_shutdown(d->runner);
    if (d->ctl) {
        control_stop(d->ctl);
        d->ctl = NULL;
    }
    if (d->http) {
        http_client_close(d->http, on_http_closed, NULL);
        d->http = NULL;
    }
    runner_free(d->runner);
    d->runner = NULL;
    close_handle((uv_handle_t *)&d->drain_timer);
    close_handle((uv_handle_t *)&d->sig_term);
    close_handle((uv_handle_t *)&d->sig_int);
    close_handle((uv_handle_t *)&d->sig_hup);
    notify_close();
}

static void on_drain_timeout(uv_timer_t *t)
{
    batchd *d = t->data;
    log_notice("stop: abandoning the requests still in flight; their outcome is checked on the "
               "next start");
    stop_now(d);
}

void batchd_check_drained(batchd *d)
{
    if (d->draining && runner_in_flight(d->runner) == 0)
        stop_now(d);
}

static void on_term(uv_signal_t *s, int signum)
{
    batchd *d = s->data;
    if (d->stopping)
        return;
    d->stopping = true;
    log_notice("received %s: stopping; unfinished jobs resume on the next start",
               signum == SIGINT ? "SIGINT" : "SIGTERM");
    notify_stopping();
    notify_extend_timeout((DRAIN_MS + 10000) * 1000ULL);
    if (d->watch) {
        spool_watch_stop(d->watch);
        d->watch = NULL;
    }
    /* A create or setup in flight that is abandoned leaves its outcome unknown (a dataset
     * created again on the next start is an orphan): give those a few seconds to answer.
     * Everything else stops at once. */
    size_t n = runner_begin_drain(d->runner);
    if (n == 0) {
        stop_now(d);
        return;
    }
    log_notice("stop: waiting up to %ds for %zu create/setup request(s) in flight", DRAIN_MS / 1000,
               n);
    d->draining = true;
    d->drain_timer.data = d;
    uv_timer_start(&d->drain_timer, on_drain_timeout, DRAIN_MS, 0);
}

static void on_spool_change(void *ud)
{
    batchd *d = ud;
    runner_claim_soon(d->runner);
}

/* ---- what the runner reports ---- */

static void on_job_changed(void *ud, const job *j, const char *as_state)
{
    batchd *d = ud;
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
                  : d->paused   ? ", paused"
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

static const runner_hooks runner_hooks_of_main = {
    .job_changed = on_job_changed,
    .status = on_status,
    .request_ended = on_request_ended,
    .token_rejected = on_token_rejected,
};

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

static int start(batchd *d)
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
    http_client_options ho = http_options(c);
    d->http = http_client_new(d->loop, &ho);
    if (!d->http) {
        log_error("cannot start the HTTP client");
        return EX_SOFTWARE;
    }
    uv_timer_init(d->loop, &d->drain_timer);
    runner_hooks hooks = runner_hooks_of_main;
    hooks.ud = d;
    d->runner = backend_runner_new(d, &hooks);
    /* Recover first, then listen: a client never sees a half-loaded job table. */
    if (runner_recover(d->runner) < 0)
        return EX_IOERR;
    control_options co = {
        .socket_path = c->control.socket,
        .group = c->control.group,
        /* PRODUCT.md section 9: a member of the control group can read, not harm. Calls are
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
    uv_signal_init(d->loop, &d->sig_term);
    uv_signal_init(d->loop, &d->sig_int);
    uv_signal_init(d->loop, &d->sig_hup);
    d->sig_term.data = d->sig_int.data = d->sig_hup.data = d;
    uv_signal_start(&d->sig_term, on_term, SIGTERM);
    uv_signal_start(&d->sig_int, on_term, SIGINT);
    uv_signal_start(&d->sig_hup, on_hup, SIGHUP);
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

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'},
        {"check-config", no_argument, NULL, 'C'},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *explicit_path = NULL;
    bool check = false;
    int opt;
    while ((opt = getopt_long(argc, argv, "c:h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            explicit_path = optarg;
            break;
        case 'C':
            check = true;
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
    const char *path = config_default_path(explicit_path);
    /* A peer that hangs up (a batchctl, the API) must be an EPIPE, not the end of the daemon. */
    signal(SIGPIPE, SIG_IGN);
    /* Before any token is read: no core file and no ptrace by other users can hold it, and
     * /proc/PID/environ and friends become root's only. */
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
        log_warn("cannot make the process non-dumpable: %s", strerror(errno));
    if (check)
        return intake_check_config(path, stdout);

    const char *lvl = getenv("BATCHD_LOG_LEVEL");
    log_init("batchd", lvl && strcmp(lvl, "debug") == 0 ? LOG_LVL_DEBUG : LOG_LVL_INFO);
    /* Validations and durable writes share libuv's pool; a few more threads than the
     * default keep one slow disk from stalling everything. */
    setenv("UV_THREADPOOL_SIZE", "8", 0);

    batchd d;
    memset(&d, 0, sizeof d);
    d.config_path = xstrdup(path);
    d.cfg = cfgref_new();
    config_diag dg = {0};
    const char *source = NULL;
    int rc = config_load(path, &d.cfg->c, &dg);
    if (rc == 0)
        rc = config_load_token(&d.cfg->c, &d.token, &source, &dg);
    if (rc < 0) {
        print_diag(&dg);
        config_diag_free(&dg);
        cfgref_put(d.cfg);
        free(d.config_path);
        return EX_CONFIG;
    }
    config_diag_free(&dg);
    /* Read once; the environment is inherited by whatever runs later and shown in /proc. A
     * reload cannot read it again: it keeps this token unless a file source then has one. */
    d.token_from_env = source && strncmp(source, "environment", 11) == 0;
    scrub_env_token();
    log_info("configuration %s; API token from %s", path, source);
    warn_no_workspace(&d.cfg->c);
    d.api_url = strip_slash(d.cfg->c.api.url);
    d.started_at = time_now_ms();
    fill_params(&d);
    d.loop = uv_default_loop();

    int code = start(&d);
    if (code != 0) {
        /* Tear down whatever started; the jobs' records are all durable already. */
        d.stopping = true;
        if (d.watch) {
            spool_watch_stop(d.watch);
            d.watch = NULL;
        }
        stop_now(&d);
    }
    uv_run(d.loop, UV_RUN_DEFAULT);
    uv_loop_close(d.loop);
    spool_free(d.sp);
    if (d.token) {
        explicit_bzero(d.token, strlen(d.token));
        free(d.token);
    }
    cfgref_put(d.cfg);
    free(d.api_url);
    free(d.config_path);
    if (code == 0)
        log_notice("stopped");
    return code;
}
