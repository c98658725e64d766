/* watch: follows io.batchd.Watch until interrupted. On a terminal it keeps one redrawn line per
 * active job with a progress bar (finished jobs leave a permanent line above); otherwise it
 * prints one line per event, or with --json one JSON object per line, for scripts and logs. */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "batchctl.h"
#include "batchd/util.h"

/* Jobs whose last event line is remembered for de-duplication. */
#define PRINTED_MAX 1000

static volatile sig_atomic_t stop_requested;
static volatile sig_atomic_t resized;

static void on_signal(int sig)
{
    if (sig == SIGWINCH)
        resized = 1;
    else
        stop_requested = 1;
}

static void install_signals(bool tty)
{
    struct sigaction sa = {0};
    sa.sa_handler = on_signal; /* no SA_RESTART: poll() returns EINTR at once */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    if (tty)
        sigaction(SIGWINCH, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

typedef struct view {
    const ctl_ctx *x;
    cJSON *active;  /* id -> latest Job, in order of appearance */
    cJSON *printed; /* line mode: id -> the last event line printed for it, without its time */
    int drawn;      /* live lines on screen below the permanent ones */
} view;

/* ---------------------------------------------------------------- event lines */

static void event_note(const cJSON *job, int64_t now, char *buf, size_t len)
{
    char prog[256], prob[512];
    ctl_progress_text(job, prog, sizeof(prog));
    ctl_problem_text(job, now, prob, sizeof(prob));
    const char *batch = json_str(job, "batch_id");
    const char *state = json_str(job, "state");
    if (state && strcmp(state, "ready") == 0 && batch)
        snprintf(buf, len, "batch %s%s%s", batch, prog[0] ? ", " : "", prog);
    else
        snprintf(buf, len, "%s%s%s", prog, prog[0] && prob[0] ? "; " : "", prob);
}

static void print_event(const ctl_ctx *x, const cJSON *job, int64_t now)
{
    char when[40], note[1024];
    const char *at = json_str(job, "updated_at");
    if (!at)
        at = time_format_rfc3339(now, false, when, sizeof(when));
    const char *state = json_str(job, "state");
    const char *col = x->color ? ctl_state_color(state) : NULL;
    event_note(job, now, note, sizeof(note));
    printf("%s %s %s%s%s%s%s\n", at, json_str(job, "name") ? json_str(job, "name") : "?",
           col ? col : "", state ? state : "?", col ? CTL_RESET : "", note[0] ? " " : "", note);
}

/* Line mode: an event that would print the same line as the job's previous one (the daemon
 * also reports changes that show nothing here, e.g. a finished job's directory move) is left
 * out, so every line says something new. */
static void print_event_once(view *v, const cJSON *job, int64_t now)
{
    const char *id = json_str(job, "id");
    char note[1024];
    event_note(job, now, note, sizeof(note));
    char *line = xasprintf("%s %s", json_str(job, "state") ? json_str(job, "state") : "?", note);
    const cJSON *last = id ? cJSON_GetObjectItemCaseSensitive(v->printed, id) : NULL;
    if (last && cJSON_IsString(last) && strcmp(last->valuestring, line) == 0) {
        free(line);
        return;
    }
    print_event(v->x, job, now);
    if (id) {
        cJSON_DeleteItemFromObjectCaseSensitive(v->printed, id);
        cJSON_AddItemToObject(v->printed, id, cJSON_CreateString(line));
        /* A watch may run for months: remember only the most recently printed jobs. */
        if (cJSON_GetArraySize(v->printed) > PRINTED_MAX)
            cJSON_Delete(cJSON_DetachItemViaPointer(v->printed, v->printed->child));
    }
    free(line);
}

/* ---------------------------------------------------------------- live view */

static int term_cols(int *rows)
{
    struct winsize ws;
    if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) {
        *rows = ws.ws_row > 0 ? ws.ws_row : 24;
        return ws.ws_col;
    }
    *rows = 24;
    return 80;
}

/* Cuts s to at most max code points. */
static void cut(char *s, size_t max)
{
    size_t n = 0;
    for (char *p = s; *p; p++) {
        if (((unsigned char)*p & 0xC0) != 0x80 && n++ == max) {
            *p = '\0';
            return;
        }
    }
}

static void erase(view *v)
{
    if (v->drawn > 0)
        printf("\r\033[%dA\033[J", v->drawn);
    v->drawn = 0;
}

static void draw(view *v)
{
    int rows;
    int cols = term_cols(&rows);
    int64_t now = time_now_ms();
    erase(v);
    size_t namew = 4;
    const cJSON *j;
    cJSON_ArrayForEach(j, v->active)
    {
        const char *n = json_str(j, "name");
        if (n && strlen(n) > namew)
            namew = strlen(n) > 30 ? 30 : strlen(n);
    }
    int max_lines = rows > 3 ? rows - 2 : 1;
    int n = cJSON_GetArraySize(v->active);
    if (n == 0) {
        printf("no active jobs; waiting for changes (Ctrl-C to quit)\n");
        v->drawn = 1;
        fflush(stdout);
        return;
    }
    int shown = 0;
    cJSON_ArrayForEach(j, v->active)
    {
        if (shown == max_lines - 1 && n > max_lines) {
            printf("... and %d more\n", n - shown);
            shown++;
            break;
        }
        char name[128], bar[32], prog[256], prob[512], rest[1024];
        snprintf(name, sizeof(name), "%s", json_str(j, "name") ? json_str(j, "name") : "?");
        cut(name, namew);
        const char *state = json_str(j, "state") ? json_str(j, "state") : "?";
        ctl_progress_bar(ctl_progress_fraction(j), 22, bar, sizeof(bar));
        ctl_progress_text(j, prog, sizeof(prog));
        ctl_problem_text(j, now, prob, sizeof(prob));
        snprintf(rest, sizeof(rest), " %s %s%s%s", bar, prog, prob[0] ? "  " : "", prob);
        int used = (int)namew + 2 + 16;
        cut(rest, cols - used - 1 > 0 ? (size_t)(cols - used - 1) : 0);
        const char *col = v->x->color ? ctl_state_color(state) : NULL;
        size_t pad = namew - (strlen(name) < namew ? strlen(name) : namew);
        printf("%s%*s  %s%-16.16s%s%s\n", name, (int)pad, "", col ? col : "", state,
               col ? CTL_RESET : "", rest);
        shown++;
    }
    v->drawn = shown;
    fflush(stdout);
}

static void view_update(view *v, const cJSON *job, bool permanent_line)
{
    const char *id = json_str(job, "id");
    if (!id)
        return;
    if (ctl_state_finished(json_str(job, "state"))) {
        cJSON_DeleteItemFromObjectCaseSensitive(v->active, id);
        if (permanent_line) {
            erase(v);
            /* Once per finish: the daemon also reports the move into done/ or failed/. */
            print_event_once(v, job, time_now_ms());
        }
        return;
    }
    cJSON *copy = cJSON_Duplicate(job, 1);
    if (cJSON_GetObjectItemCaseSensitive(v->active, id))
        cJSON_ReplaceItemInObjectCaseSensitive(v->active, id, copy);
    else
        cJSON_AddItemToObject(v->active, id, copy);
}

/* ---------------------------------------------------------------- the loop */

/* Remembers what was printed of a job for --json (without updated_at, which a change that
 * shows nothing new still moves); true when it differs from the last time. */
static bool json_remember(view *v, const cJSON *job)
{
    const char *id = json_str(job, "id");
    if (!id)
        return true;
    cJSON *copy = cJSON_Duplicate(job, 1);
    cJSON_DeleteItemFromObjectCaseSensitive(copy, "updated_at");
    char *text = json_print(copy);
    cJSON_Delete(copy);
    const cJSON *last = cJSON_GetObjectItemCaseSensitive(v->printed, id);
    if (last && cJSON_IsString(last) && strcmp(last->valuestring, text) == 0) {
        free(text);
        return false;
    }
    cJSON_DeleteItemFromObjectCaseSensitive(v->printed, id);
    cJSON_AddItemToObject(v->printed, id, cJSON_CreateString(text));
    free(text);
    if (cJSON_GetArraySize(v->printed) > PRINTED_MAX)
        cJSON_Delete(cJSON_DetachItemViaPointer(v->printed, v->printed->child));
    return true;
}

/* --json: one object per line, {"event", "at", "jobs" | "job"}: "snapshot" with the jobs
 * known when the watch began, then "changed" or "finished" (a job that reached ready, failed
 * or cancelled) with one job; a change that leaves the job as it was printed is left out. */
static void json_event(view *v, const vlclient_reply *r, bool first)
{
    char at[40];
    cJSON *o = cJSON_CreateObject();
    const cJSON *jobs = cJSON_GetObjectItemCaseSensitive(r->parameters, "jobs");
    const cJSON *job = cJSON_GetObjectItemCaseSensitive(r->parameters, "job");
    if (first) {
        const cJSON *j;
        cJSON_ArrayForEach(j, jobs)
        {
            json_remember(v, j);
        }
        cJSON_AddStringToObject(o, "event", "snapshot");
    } else if (!job || !json_remember(v, job)) {
        cJSON_Delete(o);
        return;
    } else {
        bool done = ctl_job_finished(job);
        cJSON_AddStringToObject(o, "event", done ? "finished" : "changed");
    }
    cJSON_AddStringToObject(o, "at", time_format_rfc3339(time_now_ms(), true, at, sizeof(at)));
    if (first)
        cJSON_AddItemToObject(o, "jobs", jobs ? cJSON_Duplicate(jobs, 1) : cJSON_CreateArray());
    else
        cJSON_AddItemToObject(o, "job", cJSON_Duplicate(job, 1));
    char *s = json_print(o);
    puts(s);
    free(s);
    cJSON_Delete(o);
    fflush(stdout);
}

static void handle_reply(view *v, const vlclient_reply *r, bool first)
{
    const ctl_ctx *x = v->x;
    if (x->json) {
        json_event(v, r, first);
        return;
    }
    int64_t now = time_now_ms();
    if (first) {
        const cJSON *j;
        cJSON_ArrayForEach(j, cJSON_GetObjectItemCaseSensitive(r->parameters, "jobs"))
        {
            if (x->tty)
                view_update(v, j, false);
            else if (!ctl_state_finished(json_str(j, "state")))
                print_event_once(v, j, now);
        }
    } else {
        const cJSON *j = cJSON_GetObjectItemCaseSensitive(r->parameters, "job");
        if (!j)
            return;
        if (x->tty)
            view_update(v, j, true);
        else
            print_event_once(v, j, now);
    }
    if (!x->tty)
        fflush(stdout);
}

int ctl_watch(const ctl_ctx *x, int argc, char **argv)
{
    (void)argv;
    if (argc != 1) {
        fprintf(stderr, "usage: batchctl [-c FILE] [-s SOCKET] [--json] watch\n");
        return CTL_EXIT_USAGE;
    }
    bool live = x->tty && !x->json;
    install_signals(live);
    vlclient *c = NULL;
    vlclient_reply r;
    int code = ctl_watch_open(x, &c, &r);
    if (code != 0)
        return code;
    view v = {.x = x, .active = cJSON_CreateObject(), .printed = cJSON_CreateObject()};
    ctl_ctx xx = *x;
    xx.tty = live;
    v.x = &xx;
    if (live)
        fputs("\033[?25l", stdout); /* hide the cursor while redrawing */
    handle_reply(&v, &r, true);
    vlclient_reply_clear(&r);
    if (live)
        draw(&v);
    while (!stop_requested) {
        struct pollfd p = {.fd = vlclient_fd(c), .events = POLLIN};
        int pr = poll(&p, 1, live ? 1000 : -1);
        if (pr < 0 && errno != EINTR)
            break;
        int rr = 0;
        bool changed = false;
        while (pr > 0 && (rr = vlclient_recv(c, 0, &r)) == 0) {
            ctl_defang_reply(x, &r);
            handle_reply(&v, &r, false);
            vlclient_reply_clear(&r);
            changed = true;
        }
        if (rr < 0 && rr != -EAGAIN) {
            if (live) {
                draw(&v);
                fputs("\033[?25h", stdout);
                fflush(stdout);
            }
            code = ctl_watch_lost(x, rr);
            break;
        }
        if (live && (changed || pr == 0 || resized)) {
            resized = 0;
            draw(&v);
        }
        if (ferror(stdout))
            break; /* the reader went away (e.g. | head) */
    }
    if (live) {
        fputs("\033[?25h", stdout);
        fflush(stdout);
    }
    cJSON_Delete(v.active);
    cJSON_Delete(v.printed);
    vlclient_free(c);
    return code;
}
