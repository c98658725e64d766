/* reload: the reload policy. What a reload (SIGHUP, or the Reload method) may change, what it
 * keeps until a restart, and applying a config to the running modules. batchd.conf(5) lists
 * which keys need a restart. */
#include "batchd.h"
#include "hooks.h"

#include "batchd/log.h"
#include "batchd/notify.h"
#include "batchd/util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

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

runner_export_config batchd_export_config(const batchd *d)
{
    const config *c = &d->cfg->c;
    runner_export_config x = {
        .interval_ms = c->export.interval_ms,
        .window_ms = c->export.window_ms,
        .keep = c->export.keep > 0 ? (unsigned)c->export.keep : 0,
    };
    /* [poll] and the jobs' retry bounds (fill_params) apply to exports too. */
    export_params_default(&x.params);
    x.params.poll_initial_ms = d->params.poll_initial_ms;
    x.params.poll_max_ms = d->params.poll_max_ms;
    x.params.poll_multiplier = d->params.poll_multiplier;
    x.params.retry_base_ms = d->params.retry_base_ms;
    x.params.retry_cap_ms = d->params.retry_cap_ms;
    x.params.retry_attempts_max = d->params.retry_attempts_max;
    /* A download needs its URL valid only when it starts (the store checks the signature
     * then): a second is margin enough for the clocks, and URLs that live minutes are used. */
    x.params.url_margin_ms = 1000;
    return x;
}

http_client_options batchd_http_options(const config *c)
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
    http_client_options ho = batchd_http_options(&d->cfg->c);
    if (d->http)
        http_client_configure(d->http, &ho);
    if (d->watch)
        spool_watch_set_interval(d->watch, d->cfg->c.spool.rescan_interval_ms);
    if (d->runner) {
        runner_configure(d->runner, &d->params, (size_t)d->cfg->c.job.max_active);
        runner_export_config x = batchd_export_config(d);
        runner_configure_export(d->runner, &x);
    }
    if (d->hooks)
        hooks_configure(d->hooks, &d->cfg->c);
}

static bool str_differs(const char *a, const char *b)
{
    if (!a || !b)
        return a != b;
    return strcmp(a, b) != 0;
}

/* Reads the config file and the token source into n, *token and *source. On failure logs
 * why, sets *err_msg to every problem found and returns < 0. */
static int load_new(const batchd *d, cfgref *n, char **token, const char **source, char **err_msg)
{
    diag dg = {0};
    int rc = config_load(d->config_path, &n->c, &dg);
    if (rc == 0 && config_check_hooks(&n->c, &dg) > 0)
        rc = -EINVAL;
    if (rc == 0)
        rc = config_load_token(&n->c, token, source, &dg);
    if (rc == -ENOENT && d->token_from_env && d->token) {
        /* The environment was cleared at start: the token read from it then still holds. */
        diag_free(&dg);
        *token = xstrdup(d->token);
        *source = "environment BATCHD_API_TOKEN (as read at start)";
        rc = 0;
    }
    if (rc < 0) {
        strbuf sb = {0};
        for (size_t i = 0; i < dg.count; i++)
            strbuf_printf(&sb, "%s%s", i ? "\n" : "", dg.lines[i]);
        log_error("reload failed; keeping the running configuration: %s", sb.data ? sb.data : "");
        *err_msg = strbuf_steal(&sb);
    }
    diag_free(&dg);
    return rc;
}

/* The reply: which keys changed from o to c, split into those applied now and those that
 * wait for a restart. */
static cJSON *diff_config(const config *o, const config *c)
{
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
        {"metrics.listen", str_differs(o->metrics.listen, c->metrics.listen), true},
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
        {"hooks.on_ready", str_differs(o->hooks.on_ready, c->hooks.on_ready), false},
        {"hooks.on_failed", str_differs(o->hooks.on_failed, c->hooks.on_failed), false},
        {"hooks.hook_timeout", o->hooks.timeout_ms != c->hooks.timeout_ms, false},
        {"hooks.hook_retries", o->hooks.retries != c->hooks.retries, false},
        {"hooks.hook_max_parallel", o->hooks.max_parallel != c->hooks.max_parallel, false},
        {"hooks.on_export", str_differs(o->hooks.on_export, c->hooks.on_export), false},
        {"export.interval", o->export.interval_ms != c->export.interval_ms, false},
        {"export.window", o->export.window_ms != c->export.window_ms, false},
        {"export.keep", o->export.keep != c->export.keep, false},
        {"export.max_size", o->export.max_bytes != c->export.max_bytes, false},
    };
    for (size_t i = 0; i < BD_ARRAY_LEN(keys); i++)
        if (keys[i].changed)
            cJSON_AddItemToArray(keys[i].needs_restart ? restart : applied,
                                 cJSON_CreateString(keys[i].key));
    return reply;
}

/* Keeps the running values of what needs a restart, so nothing half-changes. */
static void keep_restart_values(config *c, const config *o)
{
    char **keep[] = {&c->api.url,        &c->spool.dir,     &c->state.dir,
                     &c->control.socket, &c->control.group, &c->metrics.listen};
    const char *cur[] = {o->api.url,        o->spool.dir,     o->state.dir,
                         o->control.socket, o->control.group, o->metrics.listen};
    for (size_t i = 0; i < BD_ARRAY_LEN(keep); i++) {
        free(*keep[i]);
        *keep[i] = cur[i] ? xstrdup(cur[i]) : NULL;
    }
}

static void log_reloaded(const cJSON *reply, const char *source)
{
    char *a = json_print(cJSON_GetObjectItemCaseSensitive(reply, "applied"));
    char *rs = json_print(cJSON_GetObjectItemCaseSensitive(reply, "restart_required"));
    log_notice("reloaded: applied %s; needs a restart: %s (token from %s)", a, rs, source);
    free(a);
    free(rs);
}

/* A token hold ends when the reload brought a different token; the same one still holds. */
static void recheck_hold(batchd *d, bool token_changed, const char *source)
{
    if (d->token_hold && token_changed) {
        log_notice("reload loaded a different API token: lifting the hold; every job carries on");
        batchd_set_paused(d, d->operator_paused, false);
    } else if (d->token_hold) {
        log_warn("reload loaded the same API token the API rejected: still on hold; put the "
                 "right token in %s and reload again (or batchctl resume to try it once more)",
                 d->cfg->c.api.token_file ? d->cfg->c.api.token_file : source);
    }
}

cJSON *batchd_reload(batchd *d, const char **err, char **err_msg)
{
    notify_reloading();
    log_notice("reloading %s", d->config_path);
    cfgref *n = cfgref_new();
    char *token = NULL;
    const char *source = NULL;
    if (load_new(d, n, &token, &source, err_msg) < 0) {
        *err = "io.batchd.ReloadFailed";
        cfgref_put(n);
        notify_ready();
        return NULL;
    }
    cJSON *reply = diff_config(&d->cfg->c, &n->c);
    keep_restart_values(&n->c, &d->cfg->c);
    bool token_changed = batchd_token_replace(d, token);
    cfgref_put(d->cfg);
    d->cfg = n;
    batchd_apply_config(d);
    log_reloaded(reply, source);
    notify_ready();
    recheck_hold(d, token_changed, source);
    runner_update_status(d->runner);
    runner_claim_soon(d->runner);
    return reply;
}
