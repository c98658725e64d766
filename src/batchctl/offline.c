/* batchctl submit and validate: see offline.h. submit is maildir's producer side: the job
 * is complete and durable in tmp/ before one rename makes it visible in incoming/, so the
 * daemon never sees half a job. */
#include "offline.h"
#include "batchctl.h"

#include "batchd/config.h"
#include "batchd/fsutil.h"
#include "batchd/intake.h"
#include "batchd/spool.h"
#include "batchd/util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define EX_OK_        0
#define EX_USAGE_     64
#define EX_DATAERR_   65
#define EX_NOINPUT_   66
#define EX_CANTCREAT_ 73
#define EX_IOERR_     74
#define EX_CONFIG_    78

#define MAX_SUFFIX 1000

const char *batchctl_name_problem(const char *name)
{
    size_t len = strlen(name);
    if (len == 0)
        return "is empty";
    if (len > BATCHCTL_NAME_MAX)
        return "is longer than 200 bytes";
    if (name[0] == '.')
        return "starts with '.' (such entries are ignored by batchd)";
    if (strchr(name, '/'))
        return "contains '/': a job name becomes one entry in the spool's directories "
               "(incoming/NAME, done/NAME), so it cannot name a path; use '-' or '_' instead";
    for (const char *p = name; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            return "contains a control character (newline, tab ...)";
    if (!utf8_valid(name, len))
        return "is not valid UTF-8";
    return NULL;
}

/* Loads the configuration for a client command. Returns 0 or an exit code. */
static int load_config(const char *config_path, config *c)
{
    const char *path = config_default_path(config_path);
    bool implicit = !config_path || !strcmp(path, config_default_path(NULL));
    diag d = {0};
    int r = config_load(path, c, &d);
    if (r == -ENOENT && implicit) {
        diag_free(&d);
        return 0; /* no config file: the built-in defaults */
    }
    for (size_t i = 0; i < d.count; i++)
        fprintf(stderr, "batchctl: %s\n", d.lines[i]);
    diag_free(&d);
    return r < 0 ? EX_CONFIG_ : 0;
}

/* ---- submit ---- */

typedef struct submit_args {
    const char *path;
    const char *name;
    bool wait;
    int64_t timeout_ms; /* --wait's bound; -1 none */
} submit_args;

/* How long submit waits for the daemon to claim the entry (batchctl(1), submit). */
#define CLAIM_WAIT_MS 10000

static int parse_submit(int argc, char **argv, submit_args *a)
{
    memset(a, 0, sizeof *a);
    a->timeout_ms = -1;
    for (int i = 1; i < argc; i++) {
        bool spaced = !strcmp(argv[i], "--timeout") && i + 1 < argc;
        if (spaced || !strncmp(argv[i], "--timeout=", 10)) {
            const char *t = spaced ? argv[++i] : argv[i] + 10;
            if (ctl_parse_timeout("submit", t, &a->timeout_ms) != 0)
                return EX_USAGE_;
            continue;
        }
        if (!strcmp(argv[i], "--wait")) {
            a->wait = true;
        } else if (!strcmp(argv[i], "--name") && i + 1 < argc) {
            a->name = argv[++i];
        } else if (!strncmp(argv[i], "--name=", 7)) {
            a->name = argv[i] + 7;
        } else if (!strcmp(argv[i], "--") && i + 1 < argc && !a->path) {
            a->path = argv[++i];
        } else if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "batchctl submit: unknown option %s\n", argv[i]);
            return EX_USAGE_;
        } else if (!a->path) {
            a->path = argv[i];
        } else {
            fprintf(stderr, "batchctl submit: one PATH only\n");
            return EX_USAGE_;
        }
    }
    if (!a->path) {
        fprintf(stderr,
                "usage: batchctl submit PATH [--name NAME] [--wait] [--timeout DURATION]\n");
        return EX_USAGE_;
    }
    return 0;
}

/* ".jsonl" / ".csv" (lower case), or NULL. */
static const char *data_ext(const char *name)
{
    const char *dot = strrchr(name, '.');
    if (!dot || dot == name)
        return NULL;
    if (!strcasecmp(dot, ".jsonl"))
        return ".jsonl";
    if (!strcasecmp(dot, ".csv"))
        return ".csv";
    return NULL;
}

/* The name from the path: a directory's base name, or a file's without extension. */
static char *derive_name(const char *path, bool is_dir)
{
    char *p = xstrdup(path);
    size_t n = strlen(p);
    while (n > 1 && p[n - 1] == '/')
        p[--n] = '\0';
    char *base = xstrdup(fsutil_basename(p));
    free(p);
    if (!is_dir) {
        char *dot = strrchr(base, '.');
        if (dot && dot != base)
            *dot = '\0';
    }
    return base;
}

static int errno_exit(int e)
{
    switch (-e) {
    case ENOSPC:
    case EDQUOT:
    case EIO:
        return EX_IOERR_;
    default:
        return EX_CANTCREAT_;
    }
}

/* Lists a job directory's regular files (dotfiles skipped). Anything else is refused: it
 * would be dropped silently otherwise, or followed. Returns 0 or an exit code. */
static int list_job_files(const char *dir, char ***names, size_t *count)
{
    *names = NULL;
    *count = 0;
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "batchctl submit: cannot read %s: %s\n", ctl_esc(dir), strerror(errno));
        return EX_NOINPUT_;
    }
    int rc = 0;
    const struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        struct stat st;
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
            continue;
        if (!S_ISREG(st.st_mode)) {
            fprintf(stderr,
                    "batchctl submit: %s/%s is not a regular file (symbolic links, "
                    "directories and special files are not copied); remove it or copy the "
                    "real file in\n",
                    dir, de->d_name);
            rc = EX_DATAERR_;
            continue;
        }
        *names = xrealloc(*names, (*count + 1) * sizeof **names);
        (*names)[(*count)++] = xstrdup(de->d_name);
    }
    closedir(d);
    return rc;
}

static void names_free(char **names, size_t count)
{
    for (size_t i = 0; i < count; i++)
        free(names[i]);
    free(names);
}

/* True when the job name cand is taken in incoming/ (in any of its forms) or active/. */
static bool name_taken(const char *incoming, const char *active, const char *cand)
{
    const char *forms[] = {"", ".jsonl", ".csv"};
    for (size_t i = 0; i < BD_ARRAY_LEN(forms); i++) {
        char *p = xasprintf("%s/%s%s", incoming, cand, forms[i]);
        bool e = access(p, F_OK) == 0 || errno != ENOENT;
        free(p);
        if (e)
            return true;
    }
    char *p = xasprintf("%s/%s", active, cand);
    bool e = access(p, F_OK) == 0;
    free(p);
    return e;
}

/* Renames staged (a directory, or a file when ext is set) into incoming/ as NAME[ext],
 * NAME-2[ext] ... *final_name receives the name used. 0 or -errno. */
static int publish(const char *staged, const char *incoming, const char *active, const char *name,
                   const char *ext, char **final_name, char **final_path)
{
    for (int n = 1; n <= MAX_SUFFIX; n++) {
        char *cand = n == 1 ? xstrdup(name) : xasprintf("%s-%d", name, n);
        char *to = xasprintf("%s/%s%s", incoming, cand, ext ? ext : "");
        int r = name_taken(incoming, active, cand) ? -EEXIST : fsutil_rename_noreplace(staged, to);
        if (r == 0) {
            *final_name = cand;
            *final_path = to;
            return 0;
        }
        free(cand);
        free(to);
        if (r != -EEXIST)
            return r;
    }
    return -EEXIST;
}

static int stage_copy(const char *src_dir, char **names, size_t count, const char *stage)
{
    for (size_t i = 0; i < count; i++) {
        char *from = fsutil_join(src_dir, names[i]);
        char *to = fsutil_join(stage, names[i]);
        int r = fsutil_copy_file(from, to, 0640);
        free(from);
        free(to);
        if (r < 0)
            return r;
    }
    return 0;
}

/* Removes the staging directory and what was copied into it. */
static void stage_remove(const char *stage)
{
    DIR *d = opendir(stage);
    if (d) {
        const struct dirent *de;
        while ((de = readdir(d)) != NULL)
            if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
                unlinkat(dirfd(d), de->d_name, 0);
        closedir(d);
    }
    rmdir(stage);
}

/* The daemon's side of a submit: a Watch started before the rename, so the claim of the
 * entry cannot slip by unseen, and the ids already known then (an earlier job may have come
 * from an entry of the same name). */
typedef struct claim_watch {
    vlclient *c;  /* NULL: no daemon answered */
    cJSON *known; /* id -> true */
    cJSON *job;   /* the claimed job, once seen */
    bool paused;  /* nothing is claimed until batchctl resume: no point waiting for it */
} claim_watch;

/* GetInfo's paused, asked on the connection before it starts watching. */
static bool daemon_paused(vlclient *c)
{
    vlclient_reply r = {0};
    bool paused = vlclient_send(c, "io.batchd.GetInfo", NULL, 0) == 0 &&
                  vlclient_recv(c, 5000, &r) == 0 && !r.error &&
                  cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r.parameters, "paused"));
    vlclient_reply_clear(&r);
    return paused;
}

static void claim_watch_start(const ctl_ctx *x, claim_watch *w)
{
    memset(w, 0, sizeof *w);
    w->known = cJSON_CreateObject();
    if (!x || vlclient_connect(x->socket_path, 2000, &w->c) < 0)
        return;
    w->paused = daemon_paused(w->c);
    vlclient_reply r = {0};
    if (vlclient_send(w->c, "io.batchd.Watch", NULL, VLCLIENT_MORE) < 0 ||
        vlclient_recv(w->c, 5000, &r) < 0 || r.error) {
        vlclient_reply_clear(&r);
        vlclient_free(w->c);
        w->c = NULL;
        return;
    }
    const cJSON *j;
    cJSON_ArrayForEach(j, cJSON_GetObjectItemCaseSensitive(r.parameters, "jobs"))
    {
        if (json_str(j, "id"))
            cJSON_AddTrueToObject(w->known, json_str(j, "id"));
    }
    vlclient_reply_clear(&r);
}

/* Waits (timeout_ms; <0 no limit) for the job claimed from incoming/<entry>. */
static void claim_watch_wait(const ctl_ctx *x, claim_watch *w, const char *entry,
                             int64_t timeout_ms)
{
    int64_t deadline = timeout_ms < 0 ? -1 : time_mono_ms() + timeout_ms;
    while (w->c && !w->job) {
        int64_t left = deadline < 0 ? -1 : deadline - time_mono_ms();
        if (deadline >= 0 && left <= 0)
            return;
        vlclient_reply r;
        if (vlclient_recv(w->c, left, &r) < 0)
            return;
        ctl_defang_reply(x, &r);
        const cJSON *j = cJSON_GetObjectItemCaseSensitive(r.parameters, "job");
        const char *src = json_str(j, "source"), *id = json_str(j, "id");
        if (src && id && strcmp(src, entry) == 0 && !cJSON_GetObjectItemCaseSensitive(w->known, id))
            w->job = cJSON_Duplicate(j, 1);
        vlclient_reply_clear(&r);
    }
}

static void claim_watch_free(claim_watch *w)
{
    vlclient_free(w->c);
    cJSON_Delete(w->known);
    cJSON_Delete(w->job);
}

static void print_submitted(bool json, const char *name, const char *path, const cJSON *job)
{
    const char *id = json_str(job, "id");
    const char *final_name = job && json_str(job, "name") ? json_str(job, "name") : name;
    if (json) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "job", final_name);
        json_add_str_or_null(j, "id", id);
        cJSON_AddStringToObject(j, "path", path);
        char *s = json_print(j);
        printf("%s\n", s);
        free(s);
        cJSON_Delete(j);
    } else {
        printf("%s\n", ctl_esc(final_name));
    }
    fflush(stdout);
    /* The id goes to stderr in text mode: n=$(batchctl submit f.jsonl) is the job's name. */
    if (id && !json)
        fprintf(stderr, "batchctl submit: claimed as job %s (id %s)\n", ctl_esc(final_name), id);
}

typedef struct submit_job {
    bool is_dir;
    char *src_dir; /* where the files are */
    char **files;  /* their names */
    size_t n_files;
    const char *ext; /* bare file: its extension */
} submit_job;

/* Examines PATH. Returns 0 or an exit code. */
static int examine_source(const char *path, submit_job *job)
{
    memset(job, 0, sizeof *job);
    struct stat st;
    if (stat(path, &st) < 0) {
        fprintf(stderr, "batchctl submit: %s: %s\n", ctl_esc(path), strerror(errno));
        return EX_NOINPUT_;
    }
    if (S_ISDIR(st.st_mode)) {
        job->is_dir = true;
        job->src_dir = xstrdup(path);
        int rc = list_job_files(path, &job->files, &job->n_files);
        if (rc == 0 && job->n_files == 0) {
            fprintf(stderr, "batchctl submit: %s holds no files\n", ctl_esc(path));
            rc = EX_DATAERR_;
        }
        return rc;
    }
    if (!S_ISREG(st.st_mode)) {
        fprintf(stderr, "batchctl submit: %s is not a regular file or directory\n", ctl_esc(path));
        return EX_DATAERR_;
    }
    job->ext = data_ext(path);
    if (!job->ext) {
        fprintf(stderr,
                "batchctl submit: %s: a data file must end in .jsonl or .csv (or submit a "
                "job directory)\n",
                path);
        return EX_DATAERR_;
    }
    const char *slash = strrchr(path, '/');
    job->src_dir = slash ? xstrndup(path, (size_t)(slash - path) + (slash == path)) : xstrdup(".");
    job->files = xmalloc(sizeof *job->files);
    job->files[0] = xstrdup(fsutil_basename(path));
    job->n_files = 1;
    return 0;
}

/* After the rename: reports the entry (and its job, once the daemon claims it), and with
 * --wait follows the job to its end. Returns the exit code. */
static int report_submit(const ctl_ctx *x, const submit_args *a, claim_watch *w, bool json,
                         const char *final_name, const char *final_path)
{
    int64_t claim_ms = a->wait ? a->timeout_ms : w->paused ? 0 : CLAIM_WAIT_MS;
    int64_t t0 = time_mono_ms();
    claim_watch_wait(x, w, fsutil_basename(final_path), claim_ms);
    print_submitted(json, final_name, final_path, w->job);
    if (!w->job)
        fprintf(stderr, "batchctl submit: %s; the job's id is not known yet (batchctl list)\n",
                !w->c       ? "batchd is not running (or not reachable): the entry waits in "
                              "incoming/"
                : w->paused ? "batchd is paused: the entry waits in incoming/ until batchctl "
                              "resume"
                            : "batchd did not claim it in time");
    if (!a->wait)
        return 0;
    if (!w->job) {
        if (w->c)
            return CTL_EXIT_TEMPFAIL;
        fprintf(stderr, "batchctl submit: --wait needs batchd running\n");
        return CTL_EXIT_UNAVAILABLE;
    }
    cJSON *jobs = cJSON_CreateArray();
    cJSON_AddItemToArray(jobs, cJSON_Duplicate(w->job, 1));
    int64_t left = a->timeout_ms < 0 ? -1 : a->timeout_ms - (time_mono_ms() - t0);
    int rc = ctl_wait_follow(x, w->c, jobs, left < 0 && a->timeout_ms >= 0 ? 0 : left);
    cJSON_Delete(jobs);
    return rc;
}

static int do_submit(const config *cfg, const submit_job *job, const char *name,
                     const submit_args *a, const ctl_ctx *x, bool json)
{
    spool *sp = spool_new(cfg->spool.dir);
    char *err = NULL;
    int r = spool_open(sp, true, &err);
    if (r < 0) {
        fprintf(stderr, "batchctl submit: %s\n", err ? err : "cannot open the spool");
        free(err);
        spool_free(sp);
        return EX_CANTCREAT_;
    }
    const char *tmp = spool_dir(sp, "tmp"), *incoming = spool_dir(sp, "incoming");
    unsigned char rnd[8];
    random_bytes(rnd, sizeof rnd);
    char *stage = xasprintf("%s/.%s.%02x%02x%02x%02x%02x%02x%02x%02x", tmp, name, rnd[0], rnd[1],
                            rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
    char *final_name = NULL, *final_path = NULL, *staged_file = NULL;
    int rc = 0;
    if (mkdir(stage, 0700) < 0) {
        r = -errno;
        fprintf(stderr, "batchctl submit: cannot create %s: %s\n", ctl_esc(stage), strerror(-r));
        rc = errno_exit(r);
        goto out;
    }
    r = stage_copy(job->src_dir, job->files, job->n_files, stage);
    /* The job directory must be writable by the daemon's group (it writes error.json,
     * rejected.jsonl there); chmod, not mkdir's mode, so the umask cannot take it away. */
    if (r == 0 && chmod(stage, 02770) < 0)
        r = -errno;
    if (r == 0)
        r = fsutil_fsync_dir(stage);
    if (r < 0) {
        fprintf(stderr, "batchctl submit: cannot copy into %s: %s\n", ctl_esc(stage), strerror(-r));
        rc = errno_exit(r);
        goto out;
    }
    staged_file = job->is_dir ? NULL : fsutil_join(stage, job->files[0]);
    claim_watch w;
    claim_watch_start(x, &w);
    r = publish(job->is_dir ? stage : staged_file, incoming, spool_dir(sp, "active"), name,
                job->is_dir ? NULL : job->ext, &final_name, &final_path);
    if (r == 0)
        r = fsutil_fsync_dir(incoming);
    if (r == 0)
        r = fsutil_fsync_dir(tmp);
    if (r < 0) {
        fprintf(stderr, "batchctl submit: cannot move the job into %s: %s\n", incoming,
                strerror(-r));
        rc = errno_exit(r);
        claim_watch_free(&w);
        goto out;
    }
    rc = report_submit(x, a, &w, json, final_name, final_path);
    claim_watch_free(&w);
out:
    if (!final_path || !job->is_dir)
        stage_remove(stage); /* a published directory is no longer at stage */
    free(stage);
    free(staged_file);
    free(final_name);
    free(final_path);
    spool_free(sp);
    return rc;
}

int batchctl_submit(const char *config_path, const ctl_ctx *x, bool json, int argc, char **argv)
{
    submit_args a;
    int rc = parse_submit(argc, argv, &a);
    if (rc)
        return rc;
    config cfg;
    rc = load_config(config_path, &cfg);
    if (rc) {
        config_free(&cfg);
        return rc;
    }
    submit_job job;
    char *name = NULL;
    rc = examine_source(a.path, &job);
    if (rc == 0) {
        name = a.name ? xstrdup(a.name) : derive_name(a.path, job.is_dir);
        const char *why = batchctl_name_problem(name);
        if (why) {
            fprintf(stderr,
                    "batchctl submit: the job name %s'%s' %s; choose another with --name NAME\n",
                    a.name ? "given, " : "taken from the path, ", ctl_esc(name), why);
            rc = EX_DATAERR_;
        }
    }
    if (rc == 0)
        rc = do_submit(&cfg, &job, name, &a, x, json);
    free(name);
    free(job.src_dir);
    names_free(job.files, job.n_files);
    config_free(&cfg);
    return rc;
}

/* ---- validate ---- */

static void print_problem(const cJSON *e, const char *data_label, const char *job_label)
{
    const char *msg = json_str(e, "message");
    const char *path = json_str(e, "path");
    const char *file = json_str(e, "file");
    int64_t line = json_int64(e, "line", 0);
    if (!msg)
        msg = "";
    if (path || file) {
        /* a manifest problem */
        printf("%s", ctl_esc(file ? file : job_label));
        if (line > 0)
            printf(":%lld", (long long)line);
        if (line > 0 && json_int64(e, "column", 0) > 0)
            printf(":%lld", (long long)json_int64(e, "column", 0));
        if (path)
            printf(": %s", ctl_esc(path));
        printf(": %s\n", ctl_esc(msg));
    } else if (line > 0) {
        const char *field = json_str(e, "field");
        printf("%s:%lld: ", ctl_esc(data_label), (long long)line);
        if (field)
            printf("%s: ", ctl_esc(field));
        printf("%s\n", ctl_esc(msg));
    } else {
        printf("%s: %s\n", ctl_esc(data_label), ctl_esc(msg));
    }
}

static void print_validate_json(const intake_result *r, bool valid)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddBoolToObject(j, "valid", valid);
    json_add_str_or_null(j, "code", r->code);
    json_add_str_or_null(j, "message", r->message);
    json_add_str_or_null(j, "data_file", r->data_path);
    cJSON_AddNumberToObject(j, "records", (double)r->records);
    cJSON_AddNumberToObject(j, "rejected", (double)r->rejected);
    cJSON_AddItemToObject(j, "errors",
                          r->errors ? cJSON_Duplicate(r->errors, true) : cJSON_CreateArray());
    char *s = json_print(j);
    printf("%s\n", s);
    free(s);
    cJSON_Delete(j);
}

/* The one PATH of "batchctl validate [--] PATH". Returns 0 or an exit code. */
static int parse_validate(int argc, char **argv, const char **path)
{
    *path = NULL;
    for (int i = 1; i < argc; i++) {
        if (argv[i][0] == '-' && argv[i][1] && strcmp(argv[i], "--") != 0) {
            fprintf(stderr, "batchctl validate: unknown option %s\n", argv[i]);
            return EX_USAGE_;
        }
        if (!strcmp(argv[i], "--"))
            continue;
        if (*path) {
            fprintf(stderr, "batchctl validate: one PATH only\n");
            return EX_USAGE_;
        }
        *path = argv[i];
    }
    if (!*path) {
        fprintf(stderr, "usage: batchctl validate PATH (a job directory or a data file)\n");
        return EX_USAGE_;
    }
    return 0;
}

/* The problems on stdout, one a line, and the verdict on stderr. */
static void print_validate_text(const intake_result *r, bool valid, const char *path,
                                const char *data_label, const char *job_label)
{
    const cJSON *e;
    cJSON_ArrayForEach(e, r->errors)
    {
        print_problem(e, data_label, job_label);
    }
    if (!valid && cJSON_GetArraySize(r->errors) == 0)
        printf("%s: %s\n", ctl_esc(path), ctl_esc(r->message ? r->message : "invalid"));
    if (valid && r->code) /* needs_target: an append to a job by name */
        fprintf(stderr, "%s: job.json valid; records not checked: %s\n", ctl_esc(path),
                ctl_esc(r->message ? r->message : ""));
    else if (valid)
        fprintf(stderr, "%s: valid: %llu records%s\n", ctl_esc(path),
                (unsigned long long)r->records,
                r->rejected ? " (the records listed above would be skipped)" : "");
    else
        fprintf(stderr, "%s: invalid: %s\n", ctl_esc(path), ctl_esc(r->message ? r->message : ""));
}

int batchctl_validate(const char *config_path, bool json, int argc, char **argv)
{
    const char *path;
    int rc = parse_validate(argc, argv, &path);
    if (rc)
        return rc;
    config cfg;
    rc = load_config(config_path, &cfg);
    if (rc) {
        config_free(&cfg);
        return rc;
    }
    struct stat st;
    bool is_dir = stat(path, &st) == 0 && S_ISDIR(st.st_mode);
    char *name = derive_name(path, is_dir);
    intake_options opts = {.dry_run = true};
    intake_result r;
    int ir = intake_check_ex(path, name, &cfg, NULL, &opts, &r);
    const char *job_label =
        is_dir ? "job.json" : (cfg.job.template_path ? cfg.job.template_path : "template");
    const char *data_label = r.data_path ? r.data_path : path;
    /* An append to a job by name: the records are checked against that job's schema, which
     * only the daemon knows; what can be checked here is. */
    bool valid = r.code == NULL || strcmp(r.code, "needs_target") == 0;
    if (json)
        print_validate_json(&r, valid);
    else
        print_validate_text(&r, valid, path, data_label, job_label);
    /* 66 when something could not be read at all; 65 when it was read and is wrong. */
    rc = valid ? EX_OK_ : (ir < 0 && ir != -ECANCELED && ir != -EINVAL) ? EX_NOINPUT_ : EX_DATAERR_;
    intake_result_free(&r);
    free(name);
    config_free(&cfg);
    return rc;
}
