/* ratelimit: a token bucket, pure (the caller passes the time). The HTTP client keeps one for
 * all API requests so that every job together stays under [api] max_rate; a reload changes
 * the rate in place without losing the tokens already spent. */
#ifndef BATCHD_RATELIMIT_H
#define BATCHD_RATELIMIT_H

#include <stdint.h>

typedef struct ratelimit {
    double rate_per_s; /* tokens added per second; <= 0 (or NaN): unlimited */
    double burst;      /* bucket size, >= 1 */
    double tokens;     /* tokens available at last_ms */
    int64_t last_ms;   /* time of the last refill */
} ratelimit;

/* A full bucket. burst <= 0 means max(1, rate_per_s); a burst below 1 is raised to 1 so that a
 * token can always be taken eventually. */
void ratelimit_init(ratelimit *rl, double rate_per_s, double burst, int64_t now_ms);
/* Takes one token: returns 0 when one was taken, else the milliseconds (>= 1) until one is
 * available, taking nothing. Unlimited buckets always return 0. */
int64_t ratelimit_take(ratelimit *rl, int64_t now_ms);
/* Changes rate and burst (config reload): tokens earned at the old rate up to now_ms are kept
 * (capped to the new burst); coming from unlimited starts with a full bucket. */
void ratelimit_set_rate(ratelimit *rl, double rate_per_s, double burst, int64_t now_ms);

#endif
