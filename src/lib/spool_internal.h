/* spool_internal: what spool_watch.c needs from spool.c, nothing else. */
#ifndef BATCHD_SPOOL_INTERNAL_H
#define BATCHD_SPOOL_INTERNAL_H

#include "batchd/spool.h"

/* The open fd of incoming/, or -1 before spool_open. */
int spool_incoming_fd(const spool *s);

#endif
