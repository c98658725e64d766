/* backoff: see include/batchd/backoff.h. */
#include "batchd/backoff.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "batchd/util.h"

/* base * multiplier^n capped at cap, computed in double so that a huge n saturates instead of
 * overflowing: pow() returns inf, which the comparison catches. */
static double grown(double base, double multiplier, unsigned n, double cap)
{
    if (!(multiplier >= 1.0)) /* also catches NaN */
        multiplier = 1.0;
    double v = base * pow(multiplier, (double)n);
    if (!(v <= cap)) /* inf, NaN or simply too big */
        return cap;
    return v;
}

/* Maps rnd uniformly onto [0, upper]: rnd = 0 gives 0 and rnd = UINT64_MAX gives upper. A
 * multiply-shift instead of a modulo keeps the mapping monotonic and unbiased enough. */
static int64_t scale_rnd(uint64_t rnd, int64_t upper)
{
    if (upper <= 0)
        return 0;
    unsigned __int128 span = (unsigned __int128)(uint64_t)upper + 1;
    return (int64_t)(((unsigned __int128)rnd * span) >> 64);
}

int64_t backoff_full_jitter(unsigned attempt, int64_t base_ms, int64_t cap_ms, double multiplier,
                            uint64_t rnd)
{
    if (base_ms <= 0 || cap_ms <= 0)
        return 0;
    double upper = grown((double)base_ms, multiplier, attempt, (double)cap_ms);
    int64_t upper_ms = upper >= (double)cap_ms ? cap_ms : (int64_t)upper;
    return scale_rnd(rnd, upper_ms);
}

/* rnd as a fraction in [0, 1], both ends reachable. */
static double unit_fraction(uint64_t rnd)
{
    return (double)(rnd >> 11) / (double)((UINT64_C(1) << 53) - 1);
}

int64_t backoff_poll_interval(unsigned n, int64_t initial_ms, int64_t max_ms, double multiplier,
                              double jitter_frac, uint64_t rnd)
{
    if (max_ms < 1)
        max_ms = 1;
    if (initial_ms < 1)
        initial_ms = 1;
    if (!(jitter_frac >= 0.0)) /* negative or NaN */
        jitter_frac = 0.0;
    if (jitter_frac > 1.0)
        jitter_frac = 1.0;
    double v = grown((double)initial_ms, multiplier, n, (double)max_ms);
    double lo = v * (1.0 - jitter_frac);
    double hi = v * (1.0 + jitter_frac);
    double out = lo + unit_fraction(rnd) * (hi - lo);
    double ceiling = (double)max_ms * (1.0 + jitter_frac);
    if (out > ceiling)
        out = ceiling;
    if (out < 1.0)
        out = 1.0;
    return llround(out);
}

/* RFC 9110 OWS: spaces and tabs. */
static int is_ows(char ch)
{
    return ch == ' ' || ch == '\t';
}

static int parse_delay_seconds(const char *s, size_t len, int64_t *delay_ms)
{
    int64_t secs = 0;
    for (size_t i = 0; i < len; i++) {
        if (!isdigit((unsigned char)s[i]))
            return -EINVAL;
        if (secs > (INT64_MAX / 1000 - 9) / 10)
            return -EINVAL;
        secs = secs * 10 + (s[i] - '0');
    }
    *delay_ms = secs * 1000;
    return 0;
}

int backoff_parse_retry_after(const char *value, int64_t now_ms, int64_t *delay_ms)
{
    if (!value || !delay_ms)
        return -EINVAL;
    while (is_ows(*value))
        value++;
    size_t len = strlen(value);
    while (len > 0 && is_ows(value[len - 1]))
        len--;
    if (len == 0 || len > 64)
        return -EINVAL;
    if (isdigit((unsigned char)value[0]))
        return parse_delay_seconds(value, len, delay_ms);
    char date[65];
    memcpy(date, value, len);
    date[len] = '\0';
    int64_t at_ms;
    if (time_parse_http_date(date, &at_ms) < 0)
        return -EINVAL;
    *delay_ms = at_ms > now_ms ? at_ms - now_ms : 0;
    return 0;
}

int64_t backoff_retry_delay(unsigned attempt, int64_t base_ms, int64_t cap_ms,
                            const char *retry_after, int64_t ra_max_ms, int64_t now_ms,
                            uint64_t rnd, bool *honoured)
{
    int64_t delay = backoff_full_jitter(attempt > 0 ? attempt - 1 : 0, base_ms, cap_ms, 2.0, rnd);
    int64_t ra;
    bool used = false;
    if (retry_after && backoff_parse_retry_after(retry_after, now_ms, &ra) == 0) {
        /* An absurd value is bounded, not trusted. */
        if (ra > ra_max_ms)
            ra = ra_max_ms;
        delay = ra + backoff_full_jitter(0, base_ms, base_ms, 2.0, rnd);
        used = true;
    }
    if (honoured)
        *honoured = used;
    return delay < 1 ? 1 : delay;
}
