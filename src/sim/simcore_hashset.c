/* simcore_hashset: the sorted set of 64-bit hashes an import keeps of its task groups
 * (see sim_hashset in simcore_internal.h), and the FNV-1a hash that fills it. */
#include <stdlib.h>
#include <string.h>

#include "batchd/util.h"
#include "simcore_internal.h"

uint64_t sim_hash(const void *data, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a */
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static size_t hashset_lower(const sim_hashset *s, uint64_t h)
{
    size_t lo = 0, hi = s->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->v[mid] < h)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

void sim_hashset_add(sim_hashset *s, uint64_t h)
{
    size_t at = hashset_lower(s, h);
    if (at < s->n && s->v[at] == h)
        return;
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 16;
        s->v = xrealloc(s->v, s->cap * sizeof *s->v);
    }
    memmove(s->v + at + 1, s->v + at, (s->n - at) * sizeof *s->v);
    s->v[at] = h;
    s->n++;
}

bool sim_hashset_has(const sim_hashset *s, uint64_t h)
{
    size_t at = hashset_lower(s, h);
    return at < s->n && s->v[at] == h;
}

void sim_hashset_merge(sim_hashset *dst, const sim_hashset *src)
{
    for (size_t i = 0; i < src->n; i++)
        sim_hashset_add(dst, src->v[i]);
}

void sim_hashset_free(sim_hashset *s)
{
    free(s->v);
    s->v = NULL;
    s->n = s->cap = 0;
}
