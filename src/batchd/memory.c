/* memory: see memory.h.
 *
 * What an idle batchd's RSS is made of (bench/README.md has the figures): about 1.5 MiB of
 * its own (heap, stacks, the writable pages of its libraries) and 8-10 MiB of file pages of
 * shared libraries: libcurl loads some forty (OpenSSL's libcrypto and GnuTLS alone over
 * 4 MiB), the dynamic loader and their initialisers touch them, and the kernel maps up to
 * 16 cached neighbours of each page touched (fault-around). Those pages are in the page
 * cache, shared with every other process using the libraries; they count in RSS only
 * because this process's page tables point at them.
 *
 * So, when idle, this drops those page-table entries with MADV_DONTNEED, but only for
 * private file mappings that are read-only and have no anonymous (copied-on-write) page:
 * for such a mapping MADV_DONTNEED changes no byte the process can see (see madvise(2):
 * private file mappings are refilled from the file), and as it is read-only nothing can
 * write to it meanwhile. A page used again is mapped again from the page cache by a minor
 * fault, so the cost is a few microseconds on the first job after an idle spell, never on
 * a busy daemon: trimming waits for a second with almost no CPU. malloc_trim gives back the
 * free pages of every malloc arena (the pool threads' too). */
#include "memory.h"

#include <malloc.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>

/* Quiet means under 1% of a core over IDLE_MS; work since the last trim means at least
 * BUSY_CPU_US of CPU (idle wake-ups use a few microseconds each, so this re-trims an idle
 * daemon at most every few minutes). */
#define IDLE_MS     1000
#define IDLE_CPU_US (IDLE_MS * 10)
#define BUSY_CPU_US 20000
#define SAMPLE_MS   1000

typedef struct trimmer {
    uv_loop_t *loop;
    uv_timer_t timer;
    uv_check_t check;
    bool armed;
    int64_t cpu_at_arm;  /* us */
    int64_t cpu_at_trim; /* us */
    uint64_t sampled_at; /* uv_now */
} trimmer;

/* One per process: batchd has one loop. Static, so nothing is left to free. */
static trimmer trim_state;

static int64_t cpu_us(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) < 0)
        return 0;
    return (int64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000 + ru.ru_utime.tv_usec +
           ru.ru_stime.tv_usec;
}

/* Skips n space-separated fields of p and the spaces after them. */
static const char *skip_fields(const char *p, int n)
{
    for (int i = 0; i < n && *p; i++) {
        p += strcspn(p, " ");
        p += strspn(p, " ");
    }
    return p;
}

/* A mapping line of /proc/self/smaps ("start-end perms offset dev inode path") that may be
 * dropped once its Anonymous: is 0: private, not writable, backed by a file. */
static bool droppable_header(const char *line, char **start, size_t *len)
{
    char *end;
    uintptr_t a = (uintptr_t)strtoull(line, &end, 16);
    if (*end != '-')
        return false;
    uintptr_t b = (uintptr_t)strtoull(end + 1, &end, 16);
    if (*end != ' ' || b <= a)
        return false;
    const char *perms = end + 1;
    if (strlen(perms) < 4 || perms[1] == 'w' || perms[3] != 'p')
        return false;
    const char *inode = skip_fields(perms, 3);
    unsigned long long ino = strtoull(inode, &end, 10);
    const char *path = skip_fields(inode, 1);
    if (ino == 0 || end == inode || *path != '/')
        return false;
    /* The address the kernel printed: NOLINTNEXTLINE(performance-no-int-to-ptr) */
    *start = (char *)a;
    *len = b - a;
    return true;
}

static void drop_clean_file_pages(void)
{
    FILE *f = fopen("/proc/self/smaps", "re");
    if (!f)
        return;
    char line[512];
    char *start = NULL;
    size_t len = 0;
    bool candidate = false, continued = false;
    static const char anon[] = "Anonymous:";
    while (fgets(line, sizeof line, f)) {
        /* The rest of a line longer than the buffer (a long path): not a line of its own. */
        bool was_continued = continued;
        continued = !strchr(line, '\n');
        if (was_continued)
            continue;
        if (line[0] >= 'A' && line[0] <= 'Z') {
            if (candidate && strncmp(line, anon, sizeof anon - 1) == 0) {
                char *end;
                unsigned long long kb = strtoull(line + sizeof anon - 1, &end, 10);
                if (kb == 0 && end != line + sizeof anon - 1)
                    (void)madvise(start, len, MADV_DONTNEED);
                candidate = false;
            }
            continue;
        }
        /* A header line; one longer than the buffer is skipped (its path is cut). */
        candidate = !continued && droppable_header(line, &start, &len);
    }
    fclose(f);
}

static void trim_now(trimmer *t)
{
    malloc_trim(0);
    drop_clean_file_pages();
    t->cpu_at_trim = cpu_us();
}

static void on_timer(uv_timer_t *h);

static void arm(trimmer *t)
{
    t->armed = true;
    t->cpu_at_arm = cpu_us();
    uv_timer_start(&t->timer, on_timer, IDLE_MS, 0);
}

static void on_timer(uv_timer_t *h)
{
    trimmer *t = h->data;
    t->armed = false;
    if (cpu_us() - t->cpu_at_arm < IDLE_CPU_US)
        trim_now(t);
    else
        arm(t); /* still busy: look again later */
}

static void on_close(uv_handle_t *h)
{
    (void)h;
}

/* Runs after every poll, so it costs no wake-up of its own: at most once a second it looks
 * whether work was done since the last trim, and if so arms the idle timer. */
static void on_check(uv_check_t *h)
{
    trimmer *t = h->data;
    /* Only closing handles left: the loop ends after this turn, so close ours with it. */
    if (t->loop->active_handles == 0 && t->loop->active_reqs.count == 0) {
        uv_close((uv_handle_t *)&t->timer, on_close);
        uv_close((uv_handle_t *)&t->check, on_close);
        return;
    }
    uint64_t now = uv_now(t->loop);
    if (t->armed || now - t->sampled_at < SAMPLE_MS)
        return;
    t->sampled_at = now;
    if (cpu_us() - t->cpu_at_trim >= BUSY_CPU_US)
        arm(t);
}

void memory_idle_trim_start(uv_loop_t *loop)
{
    trimmer *t = &trim_state;
    memset(t, 0, sizeof *t);
    t->loop = loop;
    t->timer.data = t;
    t->check.data = t;
    if (uv_timer_init(loop, &t->timer) < 0 || uv_check_init(loop, &t->check) < 0)
        return;
    uv_unref((uv_handle_t *)&t->timer);
    uv_unref((uv_handle_t *)&t->check);
    uv_check_start(&t->check, on_check);
    arm(t); /* the first trim, once start-up is over */
}
