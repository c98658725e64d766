/* stop: the signals, and stopping. SIGHUP reloads (reload.c); SIGTERM and SIGINT stop, after
 * giving the creates and setups in flight DRAIN_MS to answer; stopping tears every module
 * down so that the loop ends. */
#include "batchd.h"
#include "hooks.h"
#include "metrics_http.h"

#include "batchd/log.h"
#include "batchd/notify.h"

#include <signal.h>
#include <stdlib.h>

static void on_http_closed(void *ud)
{
    (void)ud;
}

/* Closes a handle once; a handle never initialised (still zeroed) is skipped. */
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
    /* Running hooks get SIGTERM, and SIGKILL 2 s later (the loop ends once they are gone);
     * their journal entries say "started", so they run again on the next start (hooks.c). */
    hooks_stop(d->hooks);
    d->hooks = NULL;
    runner_shutdown(d->runner);
    metrics_http_stop(d->metrics_http);
    d->metrics_http = NULL;
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
    backend_stop(d);
    close_handle((uv_handle_t *)&d->drain_timer);
    close_handle((uv_handle_t *)&d->sig_term);
    close_handle((uv_handle_t *)&d->sig_int);
    close_handle((uv_handle_t *)&d->sig_hup);
    notify_close();
}

static void stop_watching(batchd *d)
{
    if (d->watch) {
        spool_watch_stop(d->watch);
        d->watch = NULL;
    }
}

void batchd_stop_now(batchd *d)
{
    d->stopping = true;
    stop_watching(d);
    stop_now(d);
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
    stop_watching(d);
    /* A create or setup in flight that is abandoned leaves its outcome unknown (a dataset
     * created again on the next start is an orphan): give those a few seconds to answer.
     * Everything else stops at once. */
    size_t n = runner_begin_drain(d->runner);
    if (n == 0) {
        stop_now(d);
        return;
    }
    log_notice("stop: waiting up to %ds for %zu side-effecting request(s) in flight (creates, "
               "setups, syncs, export requests and deletes)",
               DRAIN_MS / 1000, n);
    d->draining = true;
    d->drain_timer.data = d;
    uv_timer_start(&d->drain_timer, on_drain_timeout, DRAIN_MS, 0);
}

static void on_hup(uv_signal_t *s, int signum)
{
    (void)signum;
    batchd *d = s->data;
    const char *err = NULL;
    char *msg = NULL;
    cJSON *r = batchd_reload(d, &err, &msg);
    cJSON_Delete(r);
    free(msg);
}

void batchd_signals_start(batchd *d)
{
    uv_signal_init(d->loop, &d->sig_term);
    uv_signal_init(d->loop, &d->sig_int);
    uv_signal_init(d->loop, &d->sig_hup);
    d->sig_term.data = d->sig_int.data = d->sig_hup.data = d;
    uv_signal_start(&d->sig_term, on_term, SIGTERM);
    uv_signal_start(&d->sig_int, on_term, SIGINT);
    uv_signal_start(&d->sig_hup, on_hup, SIGHUP);
}
