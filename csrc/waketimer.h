/* A wake-up timer for the event loop that never needs the GIL.
 * See waketimer.c for why it exists and how it works. */
#ifndef WHEELSCHED_WAKETIMER_H
#define WHEELSCHED_WAKETIMER_H

#include <stdint.h>

/* "No target": the thread sleeps without a timeout. */
#define WT_NONE INT64_MAX
/* Returned by the non-blocking calls when the mutex is taken. */
#define WT_BUSY 1

typedef struct wt_timer wt_timer;

/* Make the eventfd and start the thread; NULL with errno set on failure. */
wt_timer *wt_new(void);
/* The eventfd: readable once the target (wall-clock µs) has passed. */
int wt_fd(const wt_timer *t);
/* Set the absolute target in wall-clock µs (CLOCK_REALTIME), or WT_NONE.
 * With block == 0, returns WT_BUSY instead of waiting for the mutex. */
int wt_set_target(wt_timer *t, int64_t us, int block);
/* Read the eventfd empty (never blocks). */
void wt_drain(wt_timer *t);
/* Allow the next wake: call after wt_drain, once the wake was handled.
 * With block == 0, returns WT_BUSY instead of waiting for the mutex. */
int wt_rearm(wt_timer *t, int block);
/* Stop and join the thread, close the eventfd, free. */
void wt_free(wt_timer *t);

#endif
