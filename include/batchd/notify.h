/* notify: the daemon's side of systemd's notify protocol (sd_notify(3)): READY=1, a one-line
 * STATUS=, RELOADING=1 with MONOTONIC_USEC, STOPPING=1, EXTEND_TIMEOUT_USEC= and the watchdog
 * ping. The ping comes from a timer on the daemon's own event loop, so a stuck loop stops
 * pinging and systemd restarts the service. Without NOTIFY_SOCKET every call is a no-op. */
#ifndef BATCHD_NOTIFY_H
#define BATCHD_NOTIFY_H

#include <stdint.h>

#include <uv.h>

/* Reads NOTIFY_SOCKET/WATCHDOG_USEC (sd_watchdog_enabled); when the watchdog is on, starts a
 * uv_timer on loop pinging WATCHDOG=1 every half interval — from the loop, so a stuck loop
 * stops the pings. The timer is unreferenced: it never keeps the loop alive by itself.
 * Returns 0; -EALREADY when the timer of an earlier notify_init is still open; or a negative
 * errno from sd_watchdog_enabled (e.g. a malformed WATCHDOG_USEC) or libuv. */
int notify_init(uv_loop_t *loop);

/* READY=1: start-up (state recovered, control socket listening) or a reload is complete. */
void notify_ready(void);

/* STATUS=<one line>: sent only when it differs from the last one sent. Line breaks become
 * spaces, so a status can never smuggle in another assignment. */
void notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* RELOADING=1 + MONOTONIC_USEC=<CLOCK_MONOTONIC usec>; follow with notify_ready(). */
void notify_reloading(void);

/* STOPPING=1 */
void notify_stopping(void);

/* EXTEND_TIMEOUT_USEC=<usec>: asks for that much more time from now (draining on stop). */
void notify_extend_timeout(uint64_t usec);

/* Stops the watchdog timer (async close: the loop must run once more to finish it) and
 * forgets the last status. Safe to call when notify_init was never called. */
void notify_close(void);

#endif
