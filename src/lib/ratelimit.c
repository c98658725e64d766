/* ratelimit: see include/batchd/ratelimit.h. */
#include "batchd/ratelimit.h"

#include <math.h>

/* Floating error in the refill must not make a waiter wake up one millisecond too early and
 * find 0.9999999 tokens. */
#define TOKEN_EPSILON 1e-9

static int unlimited(double rate_per_s)
{
    return !(rate_per_s > 0.0); /* also NaN */
}

static double effective_burst(double rate_per_s, double burst)
{
    if (!(burst > 0.0)) /* <= 0 or NaN */
        burst = unlimited(rate_per_s) ? 1.0 : fmax(1.0, rate_per_s);
    return fmax(1.0, burst);
}

static void refill(ratelimit *rl, int64_t now_ms)
{
    if (now_ms <= rl->last_ms)
        return; /* a clock that went backwards earns nothing */
    if (!unlimited(rl->rate_per_s)) {
        double earned = (double)(now_ms - rl->last_ms) * rl->rate_per_s / 1000.0;
        rl->tokens = fmin(rl->burst, rl->tokens + earned);
    }
    rl->last_ms = now_ms;
}

void ratelimit_init(ratelimit *rl, double rate_per_s, double burst, int64_t now_ms)
{
    rl->rate_per_s = rate_per_s;
    rl->burst = effective_burst(rate_per_s, burst);
    rl->tokens = rl->burst;
    rl->last_ms = now_ms;
}

int64_t ratelimit_take(ratelimit *rl, int64_t now_ms)
{
    if (unlimited(rl->rate_per_s))
        return 0;
    refill(rl, now_ms);
    if (rl->tokens >= 1.0 - TOKEN_EPSILON) {
        rl->tokens = fmax(0.0, rl->tokens - 1.0);
        return 0;
    }
    double wait = ceil((1.0 - rl->tokens) * 1000.0 / rl->rate_per_s);
    if (wait < 1.0)
        return 1;
    if (wait > 1e15) /* absurdly small rates: still a finite, representable wait */
        return (int64_t)1e15;
    return (int64_t)wait;
}

void ratelimit_set_rate(ratelimit *rl, double rate_per_s, double burst, int64_t now_ms)
{
    int was_unlimited = unlimited(rl->rate_per_s);
    refill(rl, now_ms);
    if (now_ms > rl->last_ms)
        rl->last_ms = now_ms;
    rl->rate_per_s = rate_per_s;
    rl->burst = effective_burst(rate_per_s, burst);
    if (was_unlimited)
        rl->tokens = rl->burst;
    else
        rl->tokens = fmin(rl->tokens, rl->burst);
}
