/* memory: keeps an idle batchd small. See memory.c for what makes up its resident set and
 * why each measure is safe. */
#ifndef BATCHD_MEMORY_H
#define BATCHD_MEMORY_H

#include <uv.h>

/* Watches the loop for idleness and, once it has been quiet for a second after work (and
 * once after start), gives back memory: free heap pages (malloc_trim) and the page-table
 * entries of clean, read-only library mappings. Adds no wake-up while idle and does not
 * keep the loop alive; its handles close themselves when the loop is about to end. Call
 * once, on the loop thread, before uv_run. */
void memory_idle_trim_start(uv_loop_t *loop);

#endif
