/* manifest: see include/batchd/manifest.h. A job is resolved in layers: the deepest template
 * first, each more specific template over it, job.json last; then the defaults fill what is
 * still missing, and the result is checked as a whole, because only the whole says what
 * batchd will send. */
#include "batchd/manifest.h"
#include "batchd/fsutil.h"
#include "batchd/rules.h"
#include "batchd/util.h"

#include <dirent.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define JOB_JSON "job.json"

/* A problem at a JSON path (NULL: none) of file (NULL: none). */
static void merr(diag *dg, const char *file, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void merr(diag *dg, const char *file, const char *path, const char *fmt, ...)
{
    const diag_where w = {.file = file, .path = path};
    va_list ap;
    va_start(ap, fmt);
    diag_vadd(dg, DIAG_ERROR, &w, fmt, ap);
    va_end(ap);
}

static void errno_text(int e, char *buf, size_t len)
{
    const char *s = strerror_r(e, buf, len);
    if (s != buf)
        strlcpy_bd(buf, s, len);
}

static bool has_suffix_ci(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcasecmp(s + a - b, suffix);
}

bool manifest_is_own_name(const char *name)
{
    return !strcmp(name, "rejected.jsonl") || !strcmp(name, "error.json") ||
           !strcmp(name, "result.json") || has_suffix_ci(name, ".cleaned.jsonl") ||
           has_suffix_ci(name, ".cleaned.csv");
}

/* The same extensions records_format_from_name accepts (kept here so that the manifest
 * does not need the record validator). */
static bool data_extension(const char *name)
{
    return (has_suffix_ci(name, ".jsonl") && strlen(name) > 6) ||
           (has_suffix_ci(name, ".csv") && strlen(name) > 4);
}

bool manifest_is_data_name(const char *name)
{
    return name[0] != '.' && !manifest_is_own_name(name) && data_extension(name);
}

static bool has_control(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return true;
    return false;
}

const char *manifest_template_name_problem(const char *ref)
{
    if (!ref || !*ref)
        return "is empty";
    if (has_control(ref))
        return "has control characters";
    if (strchr(ref, '/'))
        return "is a path; only a name is accepted (a template in the templates directory)";
    if (ref[0] == '.')
        return "starts with '.' (\".\", \"..\" and hidden files are not templates)";
    if (strlen(ref) > NAME_MAX - 5)
        return "is too long for a file name";
    return NULL;
}

static char *templates_dir(const config *cfg)
{
    const char *tp = cfg && cfg->job.template_path ? cfg->job.template_path
                                                   : "/etc/batchd/templates/default.json";
    return fsutil_dirname(tp);
}

char *manifest_template_path(const char *ref, const config *cfg)
{
    if (manifest_template_name_problem(ref))
        return NULL;
    char *dir = templates_dir(cfg);
    char *p =
        has_suffix_ci(ref, ".json") ? fsutil_join(dir, ref) : xasprintf("%s/%s.json", dir, ref);
    free(dir);
    return p;
}

/* True when real (a canonical path) lies inside the templates directory (canonical too), so
 * a link in there cannot lead a job's template reference to any other file. */
static bool inside_templates_dir(const char *real, const config *cfg)
{
    char *dir = templates_dir(cfg);
    char *rdir = realpath(dir, NULL);
    free(dir);
    if (!rdir)
        return false;
    size_t n = strlen(rdir);
    bool ok = strncmp(real, rdir, n) == 0 && (real[n] == '/' || (n == 1 && rdir[0] == '/'));
    free(rdir);
    return ok;
}

/* ---- reading JSON files ---- */

static void offset_to_line_col(const char *data, size_t off, int *line, int *col)
{
    int l = 1, c = 1;
    for (size_t i = 0; i < off; i++) {
        if (data[i] == '\n') {
            l++;
            c = 1;
        } else if (((unsigned char)data[i] & 0xC0) != 0x80) {
            c++;
        }
    }
    *line = l;
    *col = c;
}

static void file_error(diag *dg, const char *file, int line, int col, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void file_error(diag *dg, const char *file, int line, int col, const char *fmt, ...)
{
    const diag_where w = {.file = file, .line = line > 0 ? (uint64_t)line : 0, .column = col};
    va_list ap;
    va_start(ap, fmt);
    diag_vadd(dg, DIAG_ERROR, &w, fmt, ap);
    va_end(ap);
}

/* The first line (1-based) that is not valid UTF-8, or 0. Lines never split a character. */
static int first_bad_utf8_line(const char *data, size_t len)
{
    int line = 1;
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || data[i] == '\n') {
            if (!utf8_valid(data + start, i - start))
                return line;
            line++;
            start = i + 1;
        }
    }
    return 0;
}

/* Reads and parses a JSON object file. shown is the name used in messages. Returns 0,
 * -ENOENT silently (the caller decides whether absence is a problem), or another -errno /
 * -EINVAL with the problem in dg. */
static int load_json_object(const char *path, const char *shown, bool nofollow, cJSON **out,
                            diag *dg)
{
    char *data = NULL;
    size_t len = 0;
    *out = NULL;
    int r = fsutil_read_file(path, MANIFEST_MAX_FILE, nofollow, &data, &len);
    if (r == -ENOENT)
        return r;
    if (r < 0) {
        char eb[128];
        errno_text(-r, eb, sizeof eb);
        if (r == -ELOOP)
            file_error(dg, shown, 0, 0,
                       "is a symbolic link; batchd never follows links in a job: copy the file "
                       "in instead");
        else if (r == -EFBIG)
            file_error(dg, shown, 0, 0, "is larger than %d bytes", MANIFEST_MAX_FILE);
        else if (r == -EINVAL)
            file_error(dg, shown, 0, 0, "is not a regular file");
        else
            file_error(dg, shown, 0, 0, "cannot be read: %s", eb);
        return r;
    }
    int bad = 0;
    if (strlen(data) != len) {
        int line, col;
        offset_to_line_col(data, strlen(data), &line, &col);
        file_error(dg, shown, line, col, "contains a NUL byte: not a JSON text file");
        r = -EINVAL;
    } else if ((bad = first_bad_utf8_line(data, len)) > 0) {
        file_error(dg, shown, bad, 0, "is not valid UTF-8 (save it as UTF-8)");
        r = -EINVAL;
    } else {
        const char *end = NULL;
        cJSON *j = cJSON_ParseWithOpts(data, &end, true);
        if (!j) {
            int line, col;
            size_t off = end && end >= data && end <= data + len ? (size_t)(end - data) : 0;
            offset_to_line_col(data, off, &line, &col);
            file_error(dg, shown, line, col,
                       "malformed JSON near here (check for a missing comma, quote or brace)");
            r = -EINVAL;
        } else if (!cJSON_IsObject(j)) {
            file_error(dg, shown, 1, 1, "must be a JSON object ({...})");
            cJSON_Delete(j);
            r = -EINVAL;
        } else {
            *out = j;
        }
    }
    free(data);
    return r;
}

/* ---- the shape of job.json and templates ---- */

static bool key_allowed(const char *key, const char *const *allowed)
{
    for (; *allowed; allowed++)
        if (!strcmp(key, *allowed))
            return true;
    return false;
}

static void check_members(const cJSON *obj, const char *prefix, const char *const *allowed,
                          const char *file, diag *dg, int *count)
{
    for (const cJSON *c = obj->child; c; c = c->next) {
        const char *key = c->string ? c->string : "";
        strbuf p = {0};
        if (prefix)
            strbuf_printf(&p, "%s.%s", prefix, key);
        else
            strbuf_puts(&p, key);
        if (!key_allowed(key, allowed)) {
            strbuf known = {0};
            for (const char *const *a = allowed; *a; a++)
                strbuf_printf(&known, "%s%s", a == allowed ? "" : ", ", *a);
            merr(dg, file, p.data, "unknown member (allowed here: %s)", known.data);
            strbuf_free(&known);
            (*count)++;
        } else {
            for (const cJSON *d = c->next; d; d = d->next) {
                if (d->string && !strcmp(d->string, key)) {
                    merr(dg, file, p.data, "given twice");
                    (*count)++;
                    break;
                }
            }
        }
        strbuf_free(&p);
    }
}

static void want_string(const cJSON *obj, const char *key, const char *path, bool allow_null,
                        const char *file, diag *dg, int *count)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsString(v) || (allow_null && cJSON_IsNull(v)))
        return;
    merr(dg, file, path, "must be a string%s", allow_null ? " or null" : "");
    (*count)++;
}

static const char *const top_keys[] = {"template", "workspace_id", "dataset",
                                       "batch",    "append_to",    NULL};
static const char *const append_keys[] = {"batch_id", "dataset_id", NULL};

/* An API id as append_to may give it: 1 to MANIFEST_APPEND_ID_MAX of [A-Za-z0-9_-], so that
 * it can go into a request path as it is. */
static bool api_id_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > MANIFEST_APPEND_ID_MAX)
        return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '_' && *s != '-')
            return false;
    return true;
}

static int check_append_ids(const cJSON *a, const char *file, diag *dg)
{
    int n = 0;
    check_members(a, "append_to", append_keys, file, dg, &n);
    for (const char *const *k = append_keys; *k; k++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(a, *k);
        char path[32];
        snprintf(path, sizeof path, "append_to.%s", *k);
        if (!v)
            merr(dg, file, path, "required: append_to with ids names both batch_id and dataset_id");
        else if (!cJSON_IsString(v))
            merr(dg, file, path, "must be a string");
        else if (!api_id_ok(v->valuestring))
            merr(dg, file, path, "must be 1 to %d letters, digits, '_' or '-'",
                 MANIFEST_APPEND_ID_MAX);
        else
            continue;
        n++;
    }
    return n;
}

/* append_to: a job's name or id, {"batch_id", "dataset_id"}, or null (not an append job: a
 * job.json's way to opt out of its template's append_to). Returns the number of issues. */
static int check_append_shape(const cJSON *j, const char *file, diag *dg)
{
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, "append_to");
    if (!a || cJSON_IsNull(a))
        return 0;
    if (cJSON_IsObject(a))
        return check_append_ids(a, file, dg);
    if (!cJSON_IsString(a)) {
        merr(dg, file, "append_to",
             "must be a job's name or id (a string), {\"batch_id\": ..., \"dataset_id\": ...} "
             "or null");
        return 1;
    }
    const char *s = a->valuestring;
    if (!*s)
        merr(dg, file, "append_to", "must not be empty: name a ready job by its name or id");
    else if (has_control(s))
        merr(dg, file, "append_to", "must not hold control characters");
    else if (strlen(s) > MANIFEST_APPEND_REF_MAX)
        merr(dg, file, "append_to", "is longer than %d bytes: no job has such a name",
             MANIFEST_APPEND_REF_MAX);
    else
        return 0;
    return 1;
}
static const char *const dataset_keys[] = {"name", "file", "schema", NULL};
static const char *const batch_keys[] = {"name", "task_details", "batch_items", "tasks_per_group",
                                         NULL};

/* Checks member names and the types this module relies on. Returns the number of issues. */
static int check_shape(const cJSON *j, const char *file, diag *dg)
{
    int n = 0;
    check_members(j, NULL, top_keys, file, dg, &n);
    want_string(j, "template", "template", true, file, dg, &n);
    want_string(j, "workspace_id", "workspace_id", false, file, dg, &n);
    const cJSON *ds = cJSON_GetObjectItemCaseSensitive(j, "dataset");
    if (ds && !cJSON_IsObject(ds)) {
        merr(dg, file, "dataset", "must be an object");
        n++;
    } else if (ds) {
        check_members(ds, "dataset", dataset_keys, file, dg, &n);
        want_string(ds, "name", "dataset.name", false, file, dg, &n);
        want_string(ds, "file", "dataset.file", false, file, dg, &n);
    }
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(j, "batch");
    if (b && !cJSON_IsObject(b)) {
        merr(dg, file, "batch", "must be an object");
        n++;
    } else if (b) {
        check_members(b, "batch", batch_keys, file, dg, &n);
        want_string(b, "name", "batch.name", false, file, dg, &n);
    }
    n += check_append_shape(j, file, dg);
    return n;
}

/* ---- merging ---- */

static void replace_member(cJSON *obj, const char *key, const cJSON *value)
{
    cJSON *dup = cJSON_Duplicate(value, true);
    if (cJSON_GetObjectItemCaseSensitive(obj, key))
        cJSON_ReplaceItemInObjectCaseSensitive(obj, key, dup);
    else
        cJSON_AddItemToObject(obj, key, dup);
}

/* Lays over onto base: top-level members replace, and inside dataset and batch each member
 * replaces the base's member (one level down, as batchd(8), JOB FILES AND TEMPLATES, says). */
static void merge_over(cJSON *base, const cJSON *over)
{
    for (const cJSON *c = over->child; c; c = c->next) {
        if (!c->string || !strcmp(c->string, "template"))
            continue;
        cJSON *mine = cJSON_GetObjectItemCaseSensitive(base, c->string);
        bool nested = !strcmp(c->string, "dataset") || !strcmp(c->string, "batch");
        if (nested && cJSON_IsObject(mine) && cJSON_IsObject(c)) {
            for (const cJSON *m = c->child; m; m = m->next)
                if (m->string)
                    replace_member(mine, m->string, m);
        } else {
            replace_member(base, c->string, c);
        }
    }
}

/* ---- template chains ---- */

typedef struct chain {
    cJSON *layers[MANIFEST_MAX_TEMPLATE_DEPTH];
    char *paths[MANIFEST_MAX_TEMPLATE_DEPTH]; /* as shown in messages */
    char *real[MANIFEST_MAX_TEMPLATE_DEPTH];  /* canonical, for cycle detection */
    int n;
} chain;

static void chain_free(chain *ch)
{
    for (int i = 0; i < ch->n; i++) {
        cJSON_Delete(ch->layers[i]);
        free(ch->paths[i]);
        free(ch->real[i]);
    }
    ch->n = 0;
}

static void report_cycle(const chain *ch, int back_to, const char *path, diag *dg)
{
    strbuf sb = {0};
    for (int i = back_to; i < ch->n; i++)
        strbuf_printf(&sb, "%s -> ", ch->paths[i]);
    strbuf_puts(&sb, path);
    merr(dg, ch->paths[ch->n - 1], "template",
         "template cycle: %s; remove one of the \"template\" references", sb.data);
    strbuf_free(&sb);
}

/* Loads ref and every template it names. from_file: the file holding the reference (for
 * messages). by_name: ref is a name from job.json (else the configured template, any path);
 * the templates a template names are always names. missing_ok: an absent first template is
 * not an error (the configured default). Returns 0, -ENOENT (absent, when missing_ok) or
 * -EINVAL. */
/* Where one template of the chain is: *path as named (a name looked up in the templates
 * directory when named, else the configured path as given) and *real, its resolved path.
 * Returns 0, -ENOENT for a missing first template when missing_ok, else -EINVAL (reported
 * at where/member). */
static int chain_locate(const char *ref, bool named, const char *where, const config *cfg,
                        bool missing_ok, diag *dg, char **path, char **real)
{
    const char *member = named ? "template" : NULL;
    *real = NULL;
    *path = named ? manifest_template_path(ref, cfg) : xstrdup(ref);
    if (!*path) {
        char *dir = templates_dir(cfg);
        merr(dg, where, member,
             "\"%s\" is not a template name: it %s; name a template in %s "
             "(\"pairwise\" for %s/pairwise.json), or leave \"template\" out "
             "for the configured one",
             has_control(ref) ? "(the name)" : ref, manifest_template_name_problem(ref), dir, dir);
        free(dir);
        return -EINVAL;
    }
    *real = realpath(*path, NULL);
    if (*real && named && !inside_templates_dir(*real, cfg)) {
        char *dir = templates_dir(cfg);
        merr(dg, where, member,
             "template \"%s\" (%s) leads outside the templates directory %s "
             "(a symbolic link?); templates named by a job must be files in "
             "that directory",
             ref, *path, dir);
        free(dir);
        return -EINVAL;
    }
    if (*real)
        return 0;
    int e = errno;
    if (e == ENOENT && missing_ok)
        return -ENOENT;
    char eb[128];
    errno_text(e, eb, sizeof eb);
    if (e == ENOENT && !named)
        merr(dg, where, member, "template %s does not exist", *path);
    else if (e == ENOENT)
        merr(dg, where, member,
             "unknown template \"%s\": %s does not exist (a name is "
             "looked up in the directory of the configured template)",
             ref, *path);
    else
        merr(dg, where, member, "template \"%s\" (%s): %s", ref, *path, eb);
    return -EINVAL;
}

/* Loads the template at path (resolved: real) as the chain's next layer: refuses a cycle
 * and a chain deeper than MANIFEST_MAX_TEMPLATE_DEPTH. Returns 0 (the chain owns path and
 * real) or -EINVAL (the caller still owns them). */
static int chain_push(chain *ch, char *path, char *real, const char *where, const char *member,
                      diag *dg)
{
    for (int i = 0; i < ch->n; i++) {
        if (!strcmp(ch->real[i], real)) {
            report_cycle(ch, i, path, dg);
            return -EINVAL;
        }
    }
    if (ch->n == MANIFEST_MAX_TEMPLATE_DEPTH) {
        merr(dg, where, member, "templates nest deeper than %d levels (next: %s)",
             MANIFEST_MAX_TEMPLATE_DEPTH, path);
        return -EINVAL;
    }
    cJSON *j = NULL;
    int lr = load_json_object(path, path, false, &j, dg);
    if (lr < 0) {
        if (lr == -ENOENT)
            merr(dg, where, member, "template %s disappeared", path);
        return -EINVAL;
    }
    ch->layers[ch->n] = j;
    ch->paths[ch->n] = path;
    ch->real[ch->n] = real;
    ch->n++;
    return 0;
}

static int chain_load(chain *ch, const char *ref, const char *from_file, bool by_name,
                      const config *cfg, bool missing_ok, diag *dg)
{
    const char *referrer = from_file;
    char *next_ref = ref ? xstrdup(ref) : NULL;
    int r = 0;
    while (next_ref) {
        const char *where = ch->n ? ch->paths[ch->n - 1] : referrer;
        /* The configured template ([job] template, the operator's) may be any path; every
         * template a job.json or a template names is a name looked up only in the
         * templates directory, so job.json cannot make batchd read any other file. */
        bool named = ch->n > 0 || by_name;
        char *path, *real;
        r = chain_locate(next_ref, named, where, cfg, missing_ok && ch->n == 0, dg, &path, &real);
        if (r == 0)
            r = chain_push(ch, path, real, where, named ? "template" : NULL, dg);
        free(next_ref);
        next_ref = NULL;
        if (r < 0) {
            free(path);
            free(real);
            break;
        }
        const cJSON *j = ch->layers[ch->n - 1];
        if (check_shape(j, path, dg) > 0) {
            r = -EINVAL;
            break;
        }
        const char *t = json_str(j, "template");
        if (t)
            next_ref = xstrdup(t);
    }
    free(next_ref);
    return r;
}

/* Merged chain, deepest first; a new empty object when the chain is empty. */
static cJSON *chain_merge(const chain *ch)
{
    cJSON *m = cJSON_CreateObject();
    for (int i = ch->n - 1; i >= 0; i--)
        merge_over(m, ch->layers[i]);
    return m;
}

/* ---- defaults and the data file ---- */

static cJSON *ensure_object(cJSON *parent, const char *key)
{
    cJSON *o = cJSON_GetObjectItemCaseSensitive(parent, key);
    if (cJSON_IsObject(o))
        return o;
    if (o)
        return NULL; /* wrong type: reported by check_shape */
    return cJSON_AddObjectToObject(parent, key);
}

static void default_string(cJSON *obj, const char *key, const char *value)
{
    if (obj && value && !cJSON_GetObjectItemCaseSensitive(obj, key))
        cJSON_AddStringToObject(obj, key, value);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* What a non-regular directory entry is, for messages. */
static const char *file_kind(mode_t mode)
{
    if (S_ISFIFO(mode))
        return "a FIFO (named pipe)";
    if (S_ISDIR(mode))
        return "a directory";
    if (S_ISSOCK(mode))
        return "a socket";
    if (S_ISCHR(mode) || S_ISBLK(mode))
        return "a device";
    return "a special file";
}

/* Checks a data file named in dataset.file: a plain name of an existing regular file. */
static int check_named_file(const char *job_dir, const char *name, diag *dg)
{
    if (!*name || strchr(name, '/') || !strcmp(name, ".") || !strcmp(name, "..") ||
        has_control(name)) {
        merr(dg, NULL, "dataset.file",
             "must be a plain file name in the job directory (no '/', no '..')");
        return -EINVAL;
    }
    if (!data_extension(name)) {
        merr(dg, NULL, "dataset.file", "\"%s\" is not a .jsonl or .csv file name", name);
        return -EINVAL;
    }
    if (manifest_is_own_name(name)) {
        merr(dg, NULL, "dataset.file",
             "\"%s\" is a name batchd writes itself; rename the data file", name);
        return -EINVAL;
    }
    char *p = fsutil_join(job_dir, name);
    struct stat st;
    int r = lstat(p, &st) < 0 ? -errno : 0;
    free(p);
    if (r == -ENOENT) {
        merr(dg, NULL, "dataset.file", "\"%s\" does not exist in the job directory", name);
        return r;
    }
    if (r < 0) {
        char eb[128];
        errno_text(-r, eb, sizeof eb);
        merr(dg, NULL, "dataset.file", "\"%s\": %s", name, eb);
        return r;
    }
    if (S_ISLNK(st.st_mode)) {
        merr(dg, NULL, "dataset.file",
             "\"%s\" is a symbolic link; batchd never follows links: copy the "
             "file in instead",
             name);
        return -EINVAL;
    }
    if (!S_ISREG(st.st_mode)) {
        merr(dg, NULL, "dataset.file",
             "\"%s\" is %s, not a regular file; only regular files are read", name,
             file_kind(st.st_mode));
        return -EINVAL;
    }
    return 0;
}

/* Finds the one data file in job_dir. *found is malloc'd. */
/* The data-like names of a job directory, sorted; own is the first name batchd writes
 * itself that looks like data (NULL when none). */
typedef struct data_names {
    char **names;
    size_t n;
    char *own;
} data_names;

/* Takes one directory entry into dn when it is a regular data file; a symbolic link or a
 * non-regular file named like data is reported (-EINVAL). */
static int consider_entry(DIR *d, const struct dirent *de, data_names *dn, diag *dg)
{
    if (!manifest_is_data_name(de->d_name)) {
        if (!dn->own && de->d_name[0] != '.' && manifest_is_own_name(de->d_name) &&
            data_extension(de->d_name))
            dn->own = xstrdup(de->d_name);
        return 0;
    }
    struct stat st;
    if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
        return 0; /* vanished while we looked */
    if (S_ISLNK(st.st_mode)) {
        merr(dg, NULL, "dataset.file",
             "\"%s\" is a symbolic link; batchd never follows links: copy "
             "the file in instead",
             de->d_name);
        return -EINVAL;
    }
    if (!S_ISREG(st.st_mode)) {
        /* Named like data but a FIFO, device or directory: say so, rather than "no
         * data file", and never open it (a FIFO would block the reader). */
        merr(dg, NULL, "dataset.file",
             "\"%s\" is %s, not a regular file; only regular files are read", de->d_name,
             file_kind(st.st_mode));
        return -EINVAL;
    }
    dn->names = xrealloc(dn->names, (dn->n + 1) * sizeof *dn->names);
    dn->names[dn->n++] = xstrdup(de->d_name);
    return 0;
}

/* The one data file among dn (moved to *found), or -EINVAL with the reason reported. */
static int pick_data_file(data_names *dn, char **found, diag *dg)
{
    if (dn->n == 0 && dn->own) {
        /* Most likely a producer's file dropped as it is (incoming/rejected.jsonl): taking it
         * as data would let batchd's own rejected.jsonl replace it in skip mode. */
        merr(dg, NULL, "dataset.file",
             "\"%s\" is a name batchd writes itself (rejected.jsonl, "
             "*.cleaned.jsonl, *.cleaned.csv), so it is not taken as data; "
             "rename the file and submit it again",
             dn->own);
        return -EINVAL;
    }
    if (dn->n == 0) {
        merr(dg, NULL, "dataset.file",
             "no data file: put one *.jsonl or *.csv file in the job directory");
        return -EINVAL;
    }
    if (dn->n > 1) {
        strbuf sb = {0};
        for (size_t i = 0; i < dn->n; i++)
            strbuf_printf(&sb, "%s%s", i ? ", " : "", dn->names[i]);
        merr(dg, NULL, "dataset.file",
             "%zu data files (%s) and none is named: set \"dataset\": {\"file\": "
             "...} in job.json, or keep one data file",
             dn->n, sb.data);
        strbuf_free(&sb);
        return -EINVAL;
    }
    *found = dn->names[0];
    dn->names[0] = NULL;
    return 0;
}

static int discover_data_file(const char *job_dir, char **found, diag *dg)
{
    *found = NULL;
    DIR *d = opendir(job_dir);
    if (!d) {
        char eb[128];
        int e = errno;
        errno_text(e, eb, sizeof eb);
        merr(dg, NULL, NULL, "cannot list the job directory %s: %s", job_dir, eb);
        return -e;
    }
    data_names dn = {0};
    int r = 0;
    const struct dirent *de;
    while ((de = readdir(d)) != NULL)
        if (consider_entry(d, de, &dn, dg) < 0)
            r = -EINVAL;
    closedir(d);
    if (dn.n > 1)
        qsort(dn.names, dn.n, sizeof *dn.names, cmp_str);
    if (r == 0)
        r = pick_data_file(&dn, found, dg);
    for (size_t i = 0; i < dn.n; i++)
        free(dn.names[i]);
    free(dn.names);
    free(dn.own);
    return r;
}

/* ---- checking the whole ---- */

/* Only the path and message of the API rules' issues: a manifest problem names no
 * dataset field or layout position of its own. */
static void add_rules_issues(const diag *rep, diag *dg)
{
    for (size_t i = 0; i < rep->count; i++)
        merr(dg, NULL, rep->entries[i].path, "%s", rep->entries[i].message);
}

static int check_required_string(const cJSON *obj, const char *key, const char *path,
                                 const char *hint, diag *dg)
{
    const cJSON *v = obj ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
    if (!v) {
        merr(dg, NULL, path, "required%s", hint);
        return 1;
    }
    if (!cJSON_IsString(v)) {
        merr(dg, NULL, path, "must be a string");
        return 1;
    }
    if (!*v->valuestring || has_control(v->valuestring)) {
        merr(dg, NULL, path, "must be a non-empty string without control characters");
        return 1;
    }
    return 0;
}

static int check_tasks_per_group(const cJSON *batch, diag *dg)
{
    const cJSON *t = batch ? cJSON_GetObjectItemCaseSensitive(batch, "tasks_per_group") : NULL;
    if (!t)
        return 0;
    if (!cJSON_IsNumber(t) || t->valuedouble != (double)(int64_t)t->valuedouble ||
        t->valuedouble < 1 || t->valuedouble > 1e6) {
        merr(dg, NULL, "batch.tasks_per_group", "must be a whole number >= 1");
        return 1;
    }
    return 0;
}

/* Checks the resolved job. hint is appended to "required" messages. With want_all false (a
 * template alone), absent parts are not errors. */
static int check_resolved(const cJSON *job, const char *hint, bool want_all, diag *dg)
{
    int n = 0;
    const cJSON *ds = cJSON_GetObjectItemCaseSensitive(job, "dataset");
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(job, "batch");
    if (!cJSON_IsObject(ds))
        ds = NULL;
    if (!cJSON_IsObject(b))
        b = NULL;
    if (want_all) {
        n += check_required_string(job, "workspace_id", "workspace_id",
                                   ": set it in job.json, a template, or [api] workspace_id in "
                                   "the configuration",
                                   dg);
        n += check_required_string(ds, "name", "dataset.name", hint, dg);
        n += check_required_string(b, "name", "batch.name", hint, dg);
    }
    n += check_tasks_per_group(b, dg);
    const cJSON *schema = ds ? cJSON_GetObjectItemCaseSensitive(ds, "schema") : NULL;
    const cJSON *td = b ? cJSON_GetObjectItemCaseSensitive(b, "task_details") : NULL;
    const cJSON *items = b ? cJSON_GetObjectItemCaseSensitive(b, "batch_items") : NULL;
    const char *what[3] = {"dataset.schema", "batch.task_details", "batch.batch_items"};
    const cJSON *vals[3] = {schema, td, items};
    for (int i = 0; i < 3; i++) {
        if (!vals[i] && want_all) {
            merr(dg, NULL, what[i], "required: give it in job.json or in its template%s", hint);
            n++;
        }
    }
    diag rep = {0};
    if (schema)
        rules_check_schema(schema, "dataset.schema", &rep);
    if (td)
        rules_check_task_details(td, "batch.task_details", &rep);
    if (items)
        rules_check_batch_items(items, cJSON_IsObject(schema) ? schema : NULL, "batch.batch_items",
                                &rep);
    add_rules_issues(&rep, dg);
    n += (int)rep.count;
    diag_free(&rep);
    return n;
}

/* An append job: only what it sends is required. With ids its own dataset.schema is what
 * the records are checked against; with a job's name nothing more (the target's schema is
 * used). */
static int check_resolved_append(const cJSON *job, const char *hint, diag *dg)
{
    if (!cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(job, "append_to")))
        return 0;
    const cJSON *ds = cJSON_GetObjectItemCaseSensitive(job, "dataset");
    const cJSON *schema =
        cJSON_IsObject(ds) ? cJSON_GetObjectItemCaseSensitive(ds, "schema") : NULL;
    if (!schema) {
        merr(dg, NULL, "dataset.schema",
             "required with append_to's batch_id and dataset_id (the records are checked "
             "against it): give it in job.json or in its template%s",
             hint);
        return 1;
    }
    diag rep = {0};
    rules_check_schema(schema, "dataset.schema", &rep);
    add_rules_issues(&rep, dg);
    int n = (int)rep.count;
    diag_free(&rep);
    return n;
}

/* ---- resolution ---- */

typedef struct resolve_in {
    const char *job_dir;   /* directory of the job's files */
    const char *bare_file; /* a bare data file's name in job_dir, or NULL */
    const char *job_name;
    const config *cfg;
} resolve_in;

/* An append job sends no batch (the batch exists): its batch section is dropped, and with a
 * job's name its dataset.schema too (the target's is the one that counts; the runner
 * supplies it). "append_to": null is no append. Returns whether the job appends. */
static bool strip_for_append(cJSON *m)
{
    const cJSON *at = cJSON_GetObjectItemCaseSensitive(m, "append_to");
    bool append = at && !cJSON_IsNull(at);
    if (at && !append)
        cJSON_DeleteItemFromObjectCaseSensitive(m, "append_to");
    if (append) {
        cJSON_DeleteItemFromObjectCaseSensitive(m, "batch");
        if (cJSON_IsString(at))
            cJSON_DeleteItemFromObjectCaseSensitive(cJSON_GetObjectItemCaseSensitive(m, "dataset"),
                                                    "schema");
    }
    return append;
}

/* The defaults, and the data file: named (checked) or found. Returns the number of issues. */
static int apply_defaults(cJSON *m, const resolve_in *in, bool append, diag *dg)
{
    int bad = 0;
    cJSON *ds = ensure_object(m, "dataset");
    cJSON *b = append ? NULL : ensure_object(m, "batch");
    default_string(m, "workspace_id", in->cfg ? in->cfg->api.workspace_id : NULL);
    default_string(ds, "name", in->job_name);
    default_string(b, "name", in->job_name);
    if (b && !cJSON_GetObjectItemCaseSensitive(b, "tasks_per_group"))
        cJSON_AddNumberToObject(b, "tasks_per_group", 1);
    if (ds && in->bare_file) {
        cJSON_DeleteItemFromObjectCaseSensitive(ds, "file");
        cJSON_AddStringToObject(ds, "file", in->bare_file);
    } else if (ds) {
        const char *named = json_str(ds, "file");
        if (named) {
            if (check_named_file(in->job_dir, named, dg) < 0)
                bad++;
        } else {
            char *found = NULL;
            if (discover_data_file(in->job_dir, &found, dg) < 0)
                bad++;
            else
                cJSON_AddStringToObject(ds, "file", found);
            free(found);
        }
    }
    return bad;
}

static int resolve(const resolve_in *in, cJSON **out, diag *dg)
{
    *out = NULL;
    cJSON *job = NULL;
    chain ch = {0};
    int r = 0;
    if (!in->bare_file) {
        char *p = fsutil_join(in->job_dir, JOB_JSON);
        int lr = load_json_object(p, JOB_JSON, true, &job, dg);
        free(p);
        if (lr < 0 && lr != -ENOENT)
            return -EINVAL;
        if (job && check_shape(job, JOB_JSON, dg) > 0) {
            cJSON_Delete(job);
            return -EINVAL;
        }
    }
    if (!job)
        job = cJSON_CreateObject();

    /* The template: the job's own, "template": null for none, else the configured one. */
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(job, "template");
    const char *hint = "";
    char hintbuf[PATH_MAX + 96];
    if (cJSON_IsString(t)) {
        r = chain_load(&ch, t->valuestring, JOB_JSON, true, in->cfg, false, dg);
    } else if (!t && in->cfg && in->cfg->job.template_path) {
        r = chain_load(&ch, in->cfg->job.template_path, "[job] template", false, in->cfg, true, dg);
        if (r == -ENOENT) {
            snprintf(hintbuf, sizeof hintbuf, " (the configured template %s does not exist)",
                     in->cfg->job.template_path);
            hint = hintbuf;
            r = 0;
        }
    }
    if (r < 0) {
        chain_free(&ch);
        cJSON_Delete(job);
        return -EINVAL;
    }
    cJSON *m = chain_merge(&ch);
    chain_free(&ch);
    merge_over(m, job);
    cJSON_Delete(job);

    bool append = strip_for_append(m);
    int bad = apply_defaults(m, in, append, dg);
    bad += append ? check_resolved_append(m, hint, dg) : check_resolved(m, hint, true, dg);
    if (bad) {
        cJSON_Delete(m);
        return -EINVAL;
    }
    *out = m;
    return 0;
}

int manifest_resolve(const char *job_dir, const char *job_name, const config *cfg, cJSON **out,
                     diag *errors)
{
    resolve_in in = {.job_dir = job_dir, .job_name = job_name, .cfg = cfg};
    return resolve(&in, out, errors);
}

int manifest_resolve_bare(const char *data_path, const char *job_name, const config *cfg,
                          cJSON **out, diag *errors)
{
    char *dir = fsutil_dirname(data_path);
    resolve_in in = {
        .job_dir = dir, .bare_file = fsutil_basename(data_path), .job_name = job_name, .cfg = cfg};
    int r = resolve(&in, out, errors);
    free(dir);
    return r;
}

int manifest_check_template(const char *ref, const config *cfg, diag *errors)
{
    chain ch = {0};
    /* A bare name means a template in the templates directory; anything else is the
     * operator's path. */
    bool by_name = ref && !strchr(ref, '/');
    int r = chain_load(&ch, ref, "[job] template", by_name, cfg, false, errors);
    if (r == 0) {
        cJSON *m = chain_merge(&ch);
        if (check_resolved(m, "", false, errors) > 0)
            r = -EINVAL;
        cJSON_Delete(m);
    }
    chain_free(&ch);
    return r;
}

char *manifest_template_workspace(const char *ref, const config *cfg)
{
    chain ch = {0};
    char *ws = NULL;
    /* Problems are manifest_check_template's to report: none are kept here. */
    if (chain_load(&ch, ref, "[job] template", false, cfg, false, NULL) == 0) {
        cJSON *m = chain_merge(&ch);
        const char *v = json_str(m, "workspace_id");
        if (v && *v)
            ws = xstrdup(v);
        cJSON_Delete(m);
    }
    chain_free(&ch);
    return ws;
}
