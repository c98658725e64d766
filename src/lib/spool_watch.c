/* spool_watch: turns inotify events on incoming/ (through uv_fs_event) and a periodic
 * rescan timer into coalesced "look at incoming/ again" calls. libuv reports a rename as
 * UV_RENAME for both ends and can lose events when the inotify queue overflows, so events
 * are only hints: the daemon always rescans, and the timer catches whatever was missed. */
#include "batchd/log.h"
#include "batchd/spool.h"
#include "spool_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "batchd/util.h"

/* Long enough to fold a burst of renames into one call, short enough that pickup stays
 * within milliseconds. */
#define DEBOUNCE_MS 2

struct spool_watch {
    spool *s;
    uv_fs_event_t event;
    uv_timer_t debounce;
    uv_timer_t rescan;
    void (*changed)(void *ud);
    void *ud;
    int open_handles;
    bool stopping;
    bool event_failed_logged;
};

static void on_debounce(uv_timer_t *t)
{
    spool_watch *w = t->data;
    if (!w->stopping)
        w->changed(w->ud);
}

static void fire_soon(spool_watch *w)
{
    if (!w->stopping && !uv_is_active((uv_handle_t *)&w->debounce))
        uv_timer_start(&w->debounce, on_debounce, DEBOUNCE_MS, 0);
}

static void on_rescan(uv_timer_t *t)
{
    spool_watch *w = t->data;
    if (!w->stopping)
        w->changed(w->ud);
}

/* True when an event names something no longer in incoming/: the far end of a claim or a
 * producer taking an entry back. Such events cannot make anything claimable. */
static bool event_is_departure(const spool_watch *w, const char *filename)
{
    int fd = spool_incoming_fd(w->s);
    if (!filename || fd < 0)
        return false;
    if (filename[0] == '.')
        return true;
    struct stat st;
    return fstatat(fd, filename, &st, AT_SYMLINK_NOFOLLOW) < 0 && errno == ENOENT;
}

static void on_event(uv_fs_event_t *h, const char *filename, int events, int status)
{
    (void)events;
    spool_watch *w = h->data;
    if (status < 0) {
        /* The rescan timer keeps working; say once why pickup became slow. */
        if (!w->event_failed_logged)
            log_warn("spool: watching %s failed: %s; new jobs are picked up by the periodic "
                     "rescan only",
                     spool_dir(w->s, "incoming"), uv_strerror(status));
        w->event_failed_logged = true;
        return;
    }
    if (!event_is_departure(w, filename))
        fire_soon(w);
}

spool_watch *spool_watch_start(spool *s, uv_loop_t *loop, int64_t rescan_ms,
                               void (*changed)(void *ud), void *ud)
{
    if (!s || !loop || !changed)
        return NULL;
    spool_watch *w = xcalloc(1, sizeof *w);
    w->s = s;
    w->changed = changed;
    w->ud = ud;
    uv_timer_init(loop, &w->debounce);
    uv_timer_init(loop, &w->rescan);
    uv_fs_event_init(loop, &w->event);
    w->debounce.data = w->rescan.data = w->event.data = w;
    w->open_handles = 3;
    int r = uv_fs_event_start(&w->event, on_event, spool_dir(s, "incoming"), 0);
    if (r < 0)
        log_warn("spool: cannot watch %s: %s; new jobs are picked up by the periodic rescan "
                 "only (raise fs.inotify.max_user_watches / max_user_instances if that is the "
                 "limit)",
                 spool_dir(s, "incoming"), uv_strerror(r));
    spool_watch_set_interval(w, rescan_ms);
    /* The start rescan: the daemon looks at incoming/ once without waiting for an event. */
    uv_timer_start(&w->debounce, on_debounce, 0, 0);
    return w;
}

void spool_watch_set_interval(spool_watch *w, int64_t rescan_ms)
{
    if (!w || w->stopping)
        return;
    uv_timer_stop(&w->rescan);
    if (rescan_ms > 0)
        uv_timer_start(&w->rescan, on_rescan, (uint64_t)rescan_ms, (uint64_t)rescan_ms);
}

static void on_close(uv_handle_t *h)
{
    spool_watch *w = h->data;
    if (--w->open_handles == 0)
        free(w);
}

void spool_watch_stop(spool_watch *w)
{
    if (!w || w->stopping)
        return;
    w->stopping = true;
    uv_fs_event_stop(&w->event);
    uv_timer_stop(&w->debounce);
    uv_timer_stop(&w->rescan);
    uv_close((uv_handle_t *)&w->event, on_close);
    uv_close((uv_handle_t *)&w->debounce, on_close);
    uv_close((uv_handle_t *)&w->rescan, on_close);
}
