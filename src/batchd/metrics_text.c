/* metrics_text: the metrics as they are now (GetMetrics, GET /metrics): the job table's
 * counts, the backlog, the pause, and the process_* values read from /proc/self. */
#include "batchd.h"

#include "batchd/util.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

/* utime, stime (clock ticks), vsize (bytes) and rss (pages) from /proc/self/stat: the fields
 * after the command name, which may hold spaces and parentheses, so it is skipped to its
 * last ')'. */
static void read_stat(metrics_snapshot *s)
{
    char buf[1024];
    FILE *f = fopen("/proc/self/stat", "re");
    if (!f)
        return;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (!p)
        return;
    /* proc(5) numbers the fields from 1; the state, after the name, is field 3. */
    unsigned long long v[25] = {0};
    char *save = NULL;
    int field = 3;
    for (char *t = strtok_r(p + 1, " ", &save); t && field < 25;
         t = strtok_r(NULL, " ", &save), field++)
        v[field] = strtoull(t, NULL, 10);
    if (field < 25)
        return;
    unsigned long long utime = v[14], stime = v[15], vsize = v[23], rss = v[24];
    long ticks = sysconf(_SC_CLK_TCK);
    long page = sysconf(_SC_PAGESIZE);
    if (ticks > 0)
        s->process_cpu_seconds = (double)(utime + stime) / (double)ticks;
    s->process_virtual_bytes = (double)vsize;
    if (page > 0)
        s->process_resident_bytes = (double)rss * (double)page;
}

/* Entries in a directory but dotfiles; -1 when unreadable (here: the open descriptors). */
static int64_t count_entries(const char *path)
{
    DIR *d = opendir(path);
    if (!d)
        return -1;
    int64_t n = 0;
    for (const struct dirent *e; (e = readdir(d));)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

static void read_process(const batchd *d, metrics_snapshot *s)
{
    s->process_cpu_seconds = s->process_resident_bytes = s->process_virtual_bytes = -1;
    read_stat(s);
    int64_t fds = count_entries("/proc/self/fd");
    s->process_open_fds = fds > 0 ? (double)(fds - 1) : -1; /* less the directory's own */
    struct rlimit rl;
    s->process_max_fds = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY
                             ? (double)rl.rlim_cur
                             : -1;
    s->process_start_time_seconds = (double)d->started_at / 1000.0;
}

char *batchd_metrics_text(batchd *d)
{
    metrics_snapshot s = {.incoming = -1, .waiting_for_slot = -1};
    if (d->runner) {
        for (size_t i = 0; i < runner_count(d->runner); i++)
            s.jobs_by_state[runner_job_at(d->runner, i)->state]++;
        s.stuck = runner_stuck_count(d->runner);
        /* The claim path's own counts, as GetInfo reports them. */
        s.incoming = (int64_t)runner_incoming(d->runner);
        s.waiting_for_slot = (int64_t)runner_waiting_for_slot(d->runner);
    }
    s.paused = d->paused;
    s.pause_reason = batchd_pause_reason(d);
    s.rate_limit_wait_seconds = d->http ? http_client_rate_wait_seconds(d->http) : 0;
    read_process(d, &s);
    return metrics_render(d->metrics, &s);
}
