/* cfgref: the reference-counted config shared with validations on the thread pool. */
#include "batchd.h"

#include "batchd/util.h"

#include <stdlib.h>

cfgref *cfgref_new(void)
{
    cfgref *r = xcalloc(1, sizeof *r);
    r->refs = 1;
    return r;
}

cfgref *cfgref_get(cfgref *r)
{
    r->refs++;
    return r;
}

void cfgref_put(cfgref *r)
{
    if (r && --r->refs == 0) {
        config_free(&r->c);
        free(r);
    }
}
