/* notify: see include/batchd/notify.h. A thin layer over libsystemd's sd_notify. */
#include "batchd/notify.h"
#include "batchd/log.h"
#include "batchd/util.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <systemd/sd-daemon.h>

typedef enum notify_timer_state {
    NOTIFY_TIMER_NONE = 0, /* no handle: watchdog off or never initialised */
    NOTIFY_TIMER_RUNNING,
    NOTIFY_TIMER_CLOSING, /* uv_close called, close callback pending */
} notify_timer_state;

static uv_timer_t notify_timer;
static notify_timer_state notify_timer_st;
static char *notify_last_status;
static bool notify_warned;

/* A failed notification is not fatal (systemd may be restarting), but say so once. */
static void notify_send(const char *msg)
{
    int r = sd_notify(0, msg);
    if (r < 0 && !notify_warned) {
        notify_warned = true;
        log_warn("cannot send a notification to systemd (NOTIFY_SOCKET): %s; "
                 "further failures are not logged",
                 strerror(-r));
    }
}

static void notify_on_watchdog(uv_timer_t *t)
{
    (void)t;
    notify_send("WATCHDOG=1");
}

int notify_init(uv_loop_t *loop)
{
    uint64_t usec = 0;
    if (notify_timer_st != NOTIFY_TIMER_NONE)
        return -EALREADY;
    /* 0: keep WATCHDOG_USEC in the environment, batchd starts no children that could
     * mistake it for their own (WATCHDOG_PID guards that too). */
    int r = sd_watchdog_enabled(0, &usec);
    if (r < 0) {
        log_warn("ignoring the systemd watchdog: WATCHDOG_USEC or WATCHDOG_PID is malformed: %s",
                 strerror(-r));
        return r;
    }
    if (r == 0 || usec == 0)
        return 0;
    /* Half the interval, as sd_watchdog_enabled(3) recommends, so one late loop turn does
     * not cost a restart. */
    uint64_t every_ms = usec / 2000;
    if (every_ms == 0)
        every_ms = 1;
    r = uv_timer_init(loop, &notify_timer);
    if (r < 0)
        return r;
    notify_timer_st = NOTIFY_TIMER_RUNNING;
    uv_unref((uv_handle_t *)&notify_timer);
    /* The loop's cached time may be as old as the start-up (recovery can take long); count
     * the first interval from now, not from then. */
    uv_update_time(loop);
    r = uv_timer_start(&notify_timer, notify_on_watchdog, every_ms, every_ms);
    if (r < 0) {
        notify_close();
        return r;
    }
    log_debug("systemd watchdog: pinging every %" PRIu64 " ms", every_ms);
    return 0;
}

void notify_ready(void)
{
    notify_send("READY=1");
}

void notify_status(const char *fmt, ...)
{
    strbuf sb;
    va_list ap;
    strbuf_init(&sb);
    strbuf_puts(&sb, "STATUS=");
    va_start(ap, fmt);
    strbuf_vprintf(&sb, fmt, ap);
    va_end(ap);
    for (size_t i = 0; i < sb.len; i++) {
        if (sb.data[i] == '\n' || sb.data[i] == '\r')
            sb.data[i] = ' ';
    }
    if (notify_last_status && strcmp(notify_last_status, sb.data) == 0) {
        strbuf_free(&sb);
        return;
    }
    notify_send(sb.data);
    free(notify_last_status);
    notify_last_status = strbuf_steal(&sb);
}

void notify_reloading(void)
{
    struct timespec ts;
    char msg[96];
    /* systemd compares MONOTONIC_USEC with its own clock to match this RELOADING=1 with the
     * reload request (Type=notify-reload, systemd >= 253); older versions ignore it. */
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t usec = (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
    snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%" PRIu64, usec);
    notify_send(msg);
}

void notify_stopping(void)
{
    notify_send("STOPPING=1");
}

void notify_extend_timeout(uint64_t usec)
{
    char msg[64];
    snprintf(msg, sizeof(msg), "EXTEND_TIMEOUT_USEC=%" PRIu64, usec);
    notify_send(msg);
}

static void notify_on_timer_closed(uv_handle_t *h)
{
    (void)h;
    notify_timer_st = NOTIFY_TIMER_NONE;
}

void notify_close(void)
{
    if (notify_timer_st == NOTIFY_TIMER_RUNNING) {
        uv_timer_stop(&notify_timer);
        notify_timer_st = NOTIFY_TIMER_CLOSING;
        uv_close((uv_handle_t *)&notify_timer, notify_on_timer_closed);
    }
    free(notify_last_status);
    notify_last_status = NULL;
}
