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
    "  submit PATH [--name NAME] [--wait] [--timeout DURATION]\n"
    "                         enqueue a data file or job directory (no daemon needed)\n"
    "  wait JOB... [--timeout DURATION]\n"
    "                         block until the jobs are finished\n"
    "  validate PATH          check a job locally (no daemon needed)\n"
    "  retry JOB | --failed   resume a failed job, or every failed job\n"
    "  cancel JOB             cancel an unfinished job\n"
    "  export JOB [--wait] [--timeout DURATION]\n"
    "                         export a ready job's responses as a ZIP (--wait: print its path)\n"
    "  pause                  stop claiming jobs and sending new requests\n"
    "  resume                 undo pause, or lift the hold after a rejected token\n"
    "  reload                 re-read the configuration\n"
    "  metrics                the daemon's metrics, Prometheus text format\n"
    "JOB is a job id, a unique job name, or a unique prefix of at least 4 characters of an id\n"
    "(the ID column of list). batchctl COMMAND --help describes one command.\n"
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
    "75 daemon busy, or wait timed out; 76 protocol error; 77 permission denied; 78 configuration "
    "error.\n";

typedef struct command_help {
    const char *name;
    const char *text;
} command_help;

/* batchctl COMMAND --help: the synopsis and what the command does (batchctl(1) in full). */
static const command_help command_helps[] = {
    {"status", "usage: batchctl [--json] status\n"
               "The daemon's summary (version, uptime, paused or on hold, jobs per state, the\n"
               "backlog in incoming/) and a table of the jobs that are not finished.\n"},
    {"list", "usage: batchctl [--json] list [--state STATE]... [--limit N] [-q]\n"
             "Known jobs, newest first. --state (repeatable) keeps the jobs in STATE: a job\n"
             "state (queued, validating, creating_dataset, uploading, importing, creating_batch,\n"
             "setting_up, processing, ready, failed, cancelled), finished (ready, failed,\n"
             "cancelled) or unfinished (every other state). --limit N: at most N (default\n"
             "1000). -q: names only. The ID column is an id prefix that JOB arguments accept.\n"},
    {"show", "usage: batchctl [--json] show JOB\n"
             "One job in full with its history and, for a failed job, its first 20 record\n"
             "errors (line, field, message). Exit 1 if the job failed or was cancelled.\n"},
    {"watch", "usage: batchctl [--json] watch\n"
              "Follows changes until interrupted: on a terminal one line per active job with a\n"
              "progress bar, otherwise one event per line; with --json one object per line:\n"
              "{\"event\": \"snapshot\"|\"changed\"|\"finished\", \"at\": TIME, \"job\": Job}.\n"},
    {"submit", "usage: batchctl [-c FILE] [--json] submit PATH [--name NAME] [--wait] [--timeout "
               "DURATION]\n"
               "Enqueues a data file (.jsonl, .csv) or a job directory into the spool's\n"
               "incoming/ (copy into tmp/, fsync, rename), with no daemon needed, and prints\n"
               "the job's name. When the daemon runs it waits up to 10 s for the claim and\n"
               "prints the final name (NAME-2 if done/NAME existed) and, on stderr, the id;\n"
               "--json prints {job, id, path}. --wait then follows the job to its end like\n"
               "batchctl wait (--timeout bounds that).\n"},
    {"wait", "usage: batchctl [--json] wait JOB... [--timeout DURATION]\n"
             "Blocks until every named job is finished. Exit 0 if all are ready, 1 if any\n"
             "failed or was cancelled (each printed with its error), 75 on --timeout, 69 if\n"
             "batchd goes away. --json prints the final Job objects.\n"},
    {"validate", "usage: batchctl [-c FILE] [--json] validate PATH\n"
                 "Checks a job locally (manifest, template, schema, every record) and prints\n"
                 "the problems with line numbers. Exit 0 valid, 65 invalid.\n"},
    {"retry", "usage: batchctl [--json] retry JOB\n"
              "       batchctl [--json] retry --failed\n"
              "Resumes a failed or cancelled job from its last durable step; --failed retries\n"
              "every failed job (not cancelled ones) and prints each. Exit 65 if any retry\n"
              "was refused.\n"},
    {"cancel", "usage: batchctl [--json] cancel JOB\nCancels an unfinished job.\n"},
    {"export", "usage: batchctl [--json] export JOB [--wait] [--timeout DURATION]\n"
               "Exports the responses of a ready job's batch as a ZIP into\n"
               "done/NAME/exports/ (an export in progress is followed, not started again).\n"
               "--wait follows it to its end and prints the ZIP's path: exit 0 when it is\n"
               "there, 1 when the export failed (its error printed), 75 on --timeout.\n"},
    {"pause", "usage: batchctl pause\n"
              "Stops claiming jobs and sending new requests (requests in flight finish) until\n"
              "batchctl resume; the pause lasts across restarts.\n"},
    {"resume", "usage: batchctl resume\n"
               "Undoes pause, and lifts the hold after the API rejected the token.\n"},
    {"reload", "usage: batchctl [--json] reload\n"
               "Re-reads the configuration; says what was applied and what needs a restart.\n"},
    {"metrics", "usage: batchctl [--json] metrics\n"
                "The daemon's metrics in the Prometheus text format (--json: {\"text\": ...}).\n"},
    {"help", "usage: batchctl help\nThe list of commands.\n"},
};

/* "CMD --help" or "CMD -h" before any "--": prints the command's help. */
static bool command_help_asked(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0)
            return false;
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return true;
    }
    return false;
}

static int print_command_help(const char *cmd)
{
    for (size_t i = 0; i < BD_ARRAY_LEN(command_helps); i++)
        if (strcmp(command_helps[i].name, cmd) == 0) {
            fputs(command_helps[i].text, stdout);
            return CTL_EXIT_OK;
        }
    fprintf(stderr, "batchctl: unknown command \"%s\"\n%s", cmd, usage_text);
    return CTL_EXIT_USAGE;
}

typedef struct command {
    const char *name;
    int (*fn)(const ctl_ctx *x, int argc, char **argv);
} command;

static const command remote_commands[] = {
    {"status", ctl_status}, {"list", ctl_list},       {"show", ctl_show},
    {"watch", ctl_watch},   {"retry", ctl_retry},     {"cancel", ctl_cancel},
    {"pause", ctl_pause},   {"resume", ctl_resume},   {"reload", ctl_reload},
    {"wait", ctl_wait},     {"metrics", ctl_metrics}, {"export", ctl_export},
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

/* Resolves the socket and runs fn (NULL: submit, which works without a socket too). */
static int run_remote(const globals *g, int (*fn)(const ctl_ctx *x, int argc, char **argv),
                      int argc, char **argv)
{
    char *socket_path = NULL, *group = NULL;
    int code = resolve_socket(g, &socket_path, &group);
    ctl_ctx x = {.socket_path = socket_path,
                 .group = group,
                 .json = g->json,
                 .tty = isatty(STDOUT_FILENO),
                 .color = want_color(),
                 .timeout_ms = 30000};
    if (!fn)
        code = batchctl_submit(g->config_path, code == 0 ? &x : NULL, g->json, argc, argv);
    else if (code == 0)
        code = fn(&x, argc, argv);
    free(socket_path);
    free(group);
    return code;
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
    if (command_help_asked(cargc, cargv))
        return print_command_help(cmd);

    if (strcmp(cmd, "validate") == 0)
        return batchctl_validate(g.config_path, g.json, cargc, cargv);
    if (strcmp(cmd, "help") == 0) {
        fputs(usage_text, stdout);
        return CTL_EXIT_OK;
    }
    bool submit = strcmp(cmd, "submit") == 0;
    for (size_t i = 0; i < BD_ARRAY_LEN(remote_commands) && !submit; i++)
        if (strcmp(cmd, remote_commands[i].name) == 0)
            return run_remote(&g, remote_commands[i].fn, cargc, cargv);
    if (submit)
        return run_remote(&g, NULL, cargc, cargv);
    fprintf(stderr, "batchctl: unknown command \"%s\"\n%s", cmd, usage_text);
    return CTL_EXIT_USAGE;
}
