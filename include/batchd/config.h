/* config: batchd.conf (INI, parsed with inih) into a typed struct, with every problem
 * reported as "file:line: what is wrong" and the token read from the first source that
 * has it. Owns the strings in struct config. */
#ifndef BATCHD_CONFIG_H
#define BATCHD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "batchd/util.h"

#define CONFIG_DEFAULT_PATH "/etc/batchd/batchd.conf"

typedef enum config_invalid_records {
    CONFIG_INVALID_FAIL = 0,
    CONFIG_INVALID_SKIP = 1,
} config_invalid_records;

typedef struct config {
    char *path; /* the file this came from */
    struct {
        char *url;           /* default https://api.prolific.com */
        char *workspace_id;  /* may be NULL: then every job must name one */
        char *token_file;    /* may be NULL */
        int64_t timeout_ms;  /* one HTTP request; default 30s */
        double max_rate;     /* requests per second, all jobs; default 5 */
        int max_connections; /* default 8 */
    } api;
    struct {
        char *dir;                  /* default /var/spool/batchd */
        int64_t rescan_interval_ms; /* default 30s */
    } spool;
    struct {
        char *dir; /* default /var/lib/batchd */
    } state;
    struct {
        char *socket; /* default /run/batchd/io.batchd */
        char *group;  /* default batchd */
    } control;
    struct {
        int64_t initial_ms;        /* default 2s */
        int64_t max_ms;            /* default 60s */
        double multiplier;         /* default 2 */
        int64_t import_timeout_ms; /* default 1h */
        int64_t batch_timeout_ms;  /* default 6h */
    } poll;
    struct {
        char *template_path;                    /* default /etc/batchd/templates/default.json */
        int max_active;                         /* default 64 */
        config_invalid_records invalid_records; /* default fail */
        size_t max_record_bytes;                /* longest accepted record; default 1 MiB */
    } job;
    /* [hooks]: programs run after a job finishes (batchd.conf(5), HOOKS). */
    struct {
        char *on_ready;    /* absolute path or NULL */
        char *on_failed;   /* absolute path or NULL */
        char *on_export;   /* absolute path or NULL: after each downloaded export */
        int on_ready_line; /* where each was set, for config_check_hooks */
        int on_failed_line;
        int on_export_line;
        int64_t timeout_ms; /* hook_timeout; default 5m */
        int retries;        /* hook_retries; default 3 */
        int max_parallel;   /* hook_max_parallel; default 4 */
    } hooks;
    /* [export]: harvesting the responses of ready jobs on a schedule (batchd.conf(5)). */
    struct {
        int64_t interval_ms; /* 0: no scheduled exports (the default) */
        int64_t window_ms;   /* jobs ready within this long; default 14d */
        int keep;            /* ZIPs kept per job; default 3; 0 keeps all */
        uint64_t max_bytes;  /* largest ZIP downloaded; default 0: no cap */
    } export;
    struct {
        char *listen; /* ADDR:PORT of the GET /metrics endpoint; NULL: off (the default) */
    } metrics;
} config;

/* Problems go into a diag (util.h): each line "file:line: message" (or "file: message"). */

/* Fills c with defaults (strings allocated). */
void config_defaults(config *c);
/* Fills c with the defaults (config_defaults), then loads path over them: c must not hold
 * allocations yet (do not call config_defaults first). Returns 0 when usable; -EINVAL with
 * diag filled when the file has errors; -errno when it cannot be read (also described in
 * diag; c then holds the defaults). Always config_free(c) afterwards. Besides the keys of
 * batchd.conf(5): [job] max_record_size (bytes, k/M suffix) sets max_record_bytes. */
int config_load(const char *path, config *c, diag *diag);
void config_free(config *c);

/* Reads the API token: token_file, then $CREDENTIALS_DIRECTORY/api-token, then
 * $BATCHD_API_TOKEN. A file readable by group or others is refused. Surrounding white
 * space is stripped. *token is malloc'd; *source says where it came from (static string,
 * never the token). Returns 0, or -ENOENT (no source), -EPERM (mode), -EINVAL (empty)
 * with a message in diag. */
int config_load_token(const config *c, char **token, const char **source, diag *diag);

/* Checks that each configured hook is an executable regular file, each problem as
 * "file:line: ..." in diag. Separate from config_load: batchctl reads the same file as
 * another user, for whom the daemon's hooks need not be executable. Returns the number of
 * problems. */
int config_check_hooks(const config *c, diag *diag);

/* Resolves the path of the config file to use: explicit (-c), else $BATCHD_CONFIG, else
 * CONFIG_DEFAULT_PATH. */
const char *config_default_path(const char *explicit_path);

/* [metrics] listen: a numeric IPv4 address or a bracketed IPv6 one, a colon and a port
 * (127.0.0.1:9465, [::1]:9465). Fills *addr (a struct sockaddr_in or sockaddr_in6, *len
 * bytes); returns NULL, or what is wrong (static text). Pure. */
struct sockaddr_storage;
const char *config_parse_listen(const char *v, struct sockaddr_storage *addr, unsigned *len);

#endif
