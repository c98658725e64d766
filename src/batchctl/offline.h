/* batchctl's offline commands: submit (enqueue a data file or job directory into the spool
 * maildir-style: copy into tmp/, fsync, rename into incoming/) and validate (the daemon's
 * own local checks, run in place without writing anything). Neither needs the daemon. */
#ifndef BATCHCTL_OFFLINE_H
#define BATCHCTL_OFFLINE_H

#include <stdbool.h>

#include "batchctl.h"

#define BATCHCTL_NAME_MAX 200

/* argv[0] is the command name ("submit"/"validate"); returns the process exit code
 * (sysexits: 0, 64 usage, 65 invalid data, 66 cannot read, 73 cannot create, 74 I/O,
 * 78 configuration). config_path NULL means the default ($BATCHD_CONFIG, then
 * /etc/batchd/batchd.conf); when that default file does not exist the built-in defaults are
 * used. An explicitly named file that does not exist is an error (78). Messages go to
 * stderr; results (job name, problems) to stdout. */
/* submit: x (NULL when no socket could be named) reaches the daemon, if it runs, to report
 * the claimed job (batchctl(1), submit). */
int batchctl_submit(const char *config_path, const ctl_ctx *x, bool json, int argc, char **argv);
int batchctl_validate(const char *config_path, bool json, int argc, char **argv);

/* Checks a job name: not empty, no '/', not starting with '.', no control characters, at
 * most BATCHCTL_NAME_MAX bytes, valid UTF-8. Returns NULL when fine, else why not. */
const char *batchctl_name_problem(const char *name);

#endif
