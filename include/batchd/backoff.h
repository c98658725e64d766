/* backoff: retry and poll timing, pure: no clock reads, the caller passes the time and a
 * random value, so every schedule is reproducible in tests. Also parses Retry-After. */
#ifndef BATCHD_BACKOFF_H
#define BATCHD_BACKOFF_H

#include <stdbool.h>
#include <stdint.h>

/* Full jitter (AWS architecture blog): uniform in [0, min(cap_ms, base_ms * multiplier^attempt)].
 * attempt starts at 0. rnd is a uniformly random 64-bit value from the caller: rnd = 0 gives 0,
 * rnd = UINT64_MAX the upper bound. A multiplier below 1 (or NaN) counts as 1; huge attempts
 * saturate at cap_ms. */
int64_t backoff_full_jitter(unsigned attempt, int64_t base_ms, int64_t cap_ms, double multiplier,
                            uint64_t rnd);
/* Poll interval n (0-based): min(max_ms, initial_ms * multiplier^n), then jittered uniformly within
 * ±jitter_frac (e.g. 0.1) of that, never below 1 ms and never above max_ms*(1+jitter_frac). */
int64_t backoff_poll_interval(unsigned n, int64_t initial_ms, int64_t max_ms, double multiplier,
                              double jitter_frac, uint64_t rnd);
/* Retry-After (RFC 9110): delay-seconds or an HTTP-date, relative to now_ms. Returns 0 and the
 * delay (clamped to >= 0) or -EINVAL for anything else (negative, garbage, overflow). Surrounding
 * whitespace is ignored. The value is not capped: callers bound it. */
int backoff_parse_retry_after(const char *value, int64_t now_ms, int64_t *delay_ms);

/* The wait before retrying a failed call, attempt >= 1 being the failures so far: full jitter
 * from base_ms doubling per attempt up to cap_ms; or, when retry_after (a header value, may be
 * NULL) parses, that delay cut to ra_max_ms plus a jitter of up to base_ms, so that a herd
 * told the same time does not arrive together, and never before the server said. At least
 * 1 ms. *honoured (may be NULL) says whether Retry-After was used. */
int64_t backoff_retry_delay(unsigned attempt, int64_t base_ms, int64_t cap_ms,
                            const char *retry_after, int64_t ra_max_ms, int64_t now_ms,
                            uint64_t rnd, bool *honoured);

#endif
