/* batchctl: command line of the batchd control client. Parses the global options, finds the
 * control socket (-s, else the config file's [control] socket, else $BATCHCTL_SOCKET, else the
 * built-in default) and hands the command to its implementation. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "batchctl.h"
#include "batchd/config.h"
#include "batchd/util.h"
#include "offline.h"

#define DEFAULT_SOCKET "/run/batchd/io.batchd"

static const char usage_text[] =
    "usage: batchctl [-c FILE] [-s SOCKET] [--json] COMMAND [ARGS]\n"
    "\n"
    "Commands:\n"
    "  status                 daemon summary and the jobs that are not finished\n"
    "  list [--state STATE]... [--limit N] [-q]\n"
    "                         known jobs, newest first, at most N (default 1000; -q: names "
    "only)\n"
    "  show JOB               one job in full, with its history (exit 1 if failed/cancelled)\n"
    "  watch                  follow changes until interrupted\n"
    "  submit PATH [--name NAME]\n"
    "                         enqueue a data file or job directory (no daemon needed)\n"
    "  validate PATH          check a job locally (no daemon needed)\n"
    "  retry JOB              resume a failed job\n"
    "  cancel JOB             cancel an unfinished job\n"
    "  pause                  stop claiming jobs and sending new requests\n"
    "  resume                 undo pause, or lift the hold after a rejected token\n"
    "  reload                 re-read the configuration\n"
    "  metrics                the daemon's metrics, Prometheus text format\n"
    "JOB is a job id or a unique job name.\n"
    "\n"
    "Options:\n"
    "  -c, --config FILE      configuration file (default $BATCHD_CONFIG or " CONFIG_DEFAULT_PATH
    ")\n"
    "  -s, --socket SOCKET    control socket (default: [control] socket of the configuration,\n"
    "                         else $BATCHCTL_SOCKET, else " DEFAULT_SOCKET ")\n"
    "      --json             machine-readable output\n"
    "  -h, --help             this help\n"
    "  -V, --version          version\n"
    "\n"
    "Exit status: 0 ok; 1 the job asked about failed or was cancelled; 64 usage; 65 request\n"
    "refused (no such job, ambiguous name, invalid state) or invalid data; 69 daemon unreachable;\n"
    "75 daemon busy; 76 protocol error; 77 permission denied; 78 configuration error.\n";

typedef struct command {
    const char *name;
    int (*fn)(const ctl_ctx *x, int argc, char **argv);
} command;

static const command remote_commands[] = {
    {"status", ctl_status}, {"list", ctl_list},       {"show", ctl_show},   {"watch", ctl_watch},
    {"retry", ctl_retry},   {"cancel", ctl_cancel},   {"pause", ctl_pause}, {"resume", ctl_resume},
    {"reload", ctl_reload}, {"metrics", ctl_metrics},
};

typedef struct globals {
    const char *config_path; /* -c, or NULL */
    const char *socket_path; /* -s, or NULL */
    bool json;
} globals;

/* Returns the index of the command in argv, or -1 with an exit code in *code. */
static int parse_globals(int argc, char **argv, globals *g, int *code)
{
    int i = 1;
    for (; i < argc; i++) {
        const char *a = argv[i];
        const char **target = NULL;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(usage_text, stdout);
            *code = CTL_EXIT_OK;
            return -1;
        }
        if (strcmp(a, "-V") == 0 || strcmp(a, "--version") == 0) {
            printf("batchctl %s\n", BATCHD_VERSION);
            *code = CTL_EXIT_OK;
            return -1;
        }
        if (strcmp(a, "--json") == 0) {
            g->json = true;
            continue;
        }
        if (strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0)
            target = &g->config_path;
        else if (strcmp(a, "-s") == 0 || strcmp(a, "--socket") == 0)
            target = &g->socket_path;
        else if (strncmp(a, "--config=", 9) == 0) {
            g->config_path = a + 9;
            continue;
        } else if (strncmp(a, "--socket=", 9) == 0) {
            g->socket_path = a + 9;
            continue;
        } else if (a[0] == '-') {
            fprintf(stderr, "batchctl: unknown option %s\n%s", a, usage_text);
            *code = CTL_EXIT_USAGE;
            return -1;
        } else {
            return i;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "batchctl: %s needs a value\n", a);
            *code = CTL_EXIT_USAGE;
            return -1;
        }
        *target = argv[++i];
    }
    fprintf(stderr, "batchctl: no command given\n%s", usage_text);
    *code = CTL_EXIT_USAGE;
    return -1;
}

/* Removes --json from the command's arguments (it may come after the command too). */
static int strip_json(int argc, char **argv, bool *json)
{
    int out = 0;
    bool rest = false;
    for (int i = 0; i < argc; i++) {
        if (!rest && strcmp(argv[i], "--json") == 0) {
            *json = true;
            continue;
        }
        if (strcmp(argv[i], "--") == 0)
            rest = true;
        argv[out++] = argv[i];
    }
    argv[out] = NULL;
    return out;
}

/* The socket to use, malloc'd into *path; *group (malloc'd or NULL) for hints. 0 or an exit
 * code. A missing default config file is fine; a named one that cannot be read, or any
 * config with errors, is not. */
static int resolve_socket(const globals *g, char **path, char **group)
{
    *path = NULL;
    *group = NULL;
    if (g->socket_path) {
        *path = xstrdup(g->socket_path);
        return 0;
    }
    const char *cfg_path = config_default_path(g->config_path);
    bool explicit_path = g->config_path || getenv("BATCHD_CONFIG");
    if (explicit_path || access(cfg_path, F_OK) == 0) {
        config cfg = {0};
        diag dg = {0};
        int r = config_load(cfg_path, &cfg, &dg);
        if (r < 0) {
            for (size_t i = 0; i < dg.count; i++)
                fprintf(stderr, "batchctl: %s\n", dg.lines[i]);
            if (dg.count == 0)
                fprintf(stderr, "batchctl: %s: %s\n", cfg_path, strerror(-r));
            fprintf(stderr, "hint: fix the configuration, or name the socket with -s SOCKET\n");
            diag_free(&dg);
            config_free(&cfg);
            return CTL_EXIT_CONFIG;
        }
        if (cfg.control.socket)
            *path = xstrdup(cfg.control.socket);
        if (cfg.control.group)
            *group = xstrdup(cfg.control.group);
        diag_free(&dg);
        config_free(&cfg);
        if (*path)
            return 0;
    }
    const char *env = getenv("BATCHCTL_SOCKET");
    *path = xstrdup(env && env[0] ? env : DEFAULT_SOCKET);
    return 0;
}

static bool want_color(void)
{
    const char *no = getenv("NO_COLOR");
    const char *term = getenv("TERM");
    return isatty(STDOUT_FILENO) && !(no && no[0]) && !(term && strcmp(term, "dumb") == 0);
}

int main(int argc, char **argv)
{
    globals g = {0};
    int code = 0;
    int at = parse_globals(argc, argv, &g, &code);
    if (at < 0)
        return code;
    int cargc = strip_json(argc - at, argv + at, &g.json);
    char **cargv = argv + at;
    if (cargc < 1 || !cargv[0]) {
        fputs(usage_text, stderr);
        return CTL_EXIT_USAGE;
    }
    const char *cmd = cargv[0];

    if (strcmp(cmd, "submit") == 0)
        return batchctl_submit(g.config_path, g.json, cargc, cargv);
    if (strcmp(cmd, "validate") == 0)
        return batchctl_validate(g.config_path, g.json, cargc, cargv);
    if (strcmp(cmd, "help") == 0) {
        fputs(usage_text, stdout);
        return CTL_EXIT_OK;
    }
    for (size_t i = 0; i < BD_ARRAY_LEN(remote_commands); i++) {
        if (strcmp(cmd, remote_commands[i].name) != 0)
            continue;
        char *socket_path = NULL, *group = NULL;
        code = resolve_socket(&g, &socket_path, &group);
        if (code == 0) {
            ctl_ctx x = {.socket_path = socket_path,
                         .group = group,
                         .json = g.json,
                         .tty = isatty(STDOUT_FILENO),
                         .color = want_color(),
                         .timeout_ms = 30000};
            code = remote_commands[i].fn(&x, cargc, cargv);
        }
        free(socket_path);
        free(group);
        return code;
    }
    fprintf(stderr, "batchctl: unknown command \"%s\"\n%s", cmd, usage_text);
    return CTL_EXIT_USAGE;
}
