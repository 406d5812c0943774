/* A wake-up timer for the event loop that never needs the GIL.
 *
 * Why: the node's ticker used to be a Python thread sleeping on a
 * threading.Condition until the next due time, then calling
 * loop.call_soon_threadsafe(). Both steps need the GIL: coming back from
 * cond.wait() and making the call. When the loop thread is busy it holds the
 * GIL, so the ticker woke p50 150-400 µs after its target instead of the
 * ~60 µs a plain clock_nanosleep gets on the same machine.
 *
 * How: a native pthread that never touches Python waits on a mutex+condvar
 * until an absolute CLOCK_REALTIME target (the engine's due times are
 * wall-clock µs, and pthread_cond_timedwait's default clock is
 * CLOCK_REALTIME, so the target goes in as is), then writes 1 to an eventfd.
 * The loop watches the eventfd with add_reader, so the wake-up is a plain
 * epoll event: the kernel wakes the loop thread itself, with no Python thread
 * in between.
 *
 * Trade-offs:
 * - One wake per target, and at most one outstanding: firing clears the
 *   target and sets `fired`; the thread then sleeps (no timeout) until
 *   wt_rearm(), which the loop calls after reading the eventfd. A target set
 *   while a wake is unhandled is only stored (the loop's handler sets the
 *   next target anyway), so the eventfd never brings a second, stale wake.
 * - The eventfd is written and read outside the mutex, so the mutex is only
 *   ever held for a few instructions: the loop can take it with the GIL held
 *   (try-lock first) and never has to give the GIL away in the common case.
 * - Idle costs nothing: with no target the thread waits without a timeout.
 * - The thread blocks all signals, so Python's handlers keep running on the
 *   threads that expect them.
 * - Wall clock: a clock step moves the wake with it, as it does the due
 *   times themselves. Timer slack is left at the default (50 µs); lowering
 *   it (PR_SET_TIMERSLACK) would trade power for a little more precision.
 */
#define _GNU_SOURCE
#include "waketimer.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

struct wt_timer {
    pthread_mutex_t mu;
    pthread_cond_t cv;    /* the thread waits on it; signalled on a change */
    int64_t target;       /* µs since the epoch, or WT_NONE */
    int fired;            /* the eventfd was written and not rearmed yet */
    int stop;
    int fd;
    pthread_t thread;
};

static int64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void *run(void *arg) {
    wt_timer *t = arg;
    pthread_mutex_lock(&t->mu);
    while (!t->stop) {
        if (t->target == WT_NONE || t->fired) {
            pthread_cond_wait(&t->cv, &t->mu);
            continue;
        }
        int64_t target = t->target;
        if (now_us() < target) {
            struct timespec ts = {.tv_sec = (time_t)(target / 1000000),
                                  .tv_nsec = (long)(target % 1000000) * 1000};
            pthread_cond_timedwait(&t->cv, &t->mu, &ts);
            continue; /* look again: the target may have moved */
        }
        t->target = WT_NONE; /* one wake per target */
        t->fired = 1;
        pthread_mutex_unlock(&t->mu);
        uint64_t one = 1;
        while (write(t->fd, &one, sizeof one) < 0 && errno == EINTR) {
        }
        pthread_mutex_lock(&t->mu);
    }
    pthread_mutex_unlock(&t->mu);
    return NULL;
}

wt_timer *wt_new(void) {
    wt_timer *t = calloc(1, sizeof *t);
    if (t == NULL)
        return NULL;
    t->target = WT_NONE;
    t->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (t->fd < 0) {
        int e = errno;
        free(t);
        errno = e;
        return NULL;
    }
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->cv, NULL); /* default clock: CLOCK_REALTIME */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old); /* the thread inherits it */
    int rc = pthread_create(&t->thread, NULL, run, t);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        close(t->fd);
        pthread_cond_destroy(&t->cv);
        pthread_mutex_destroy(&t->mu);
        free(t);
        errno = rc;
        return NULL;
    }
    pthread_setname_np(t->thread, "wheelsched-wake");
    return t;
}

int wt_fd(const wt_timer *t) { return t->fd; }

static int lock(wt_timer *t, int block) {
    if (block)
        return pthread_mutex_lock(&t->mu) == 0 ? 0 : WT_BUSY;
    return pthread_mutex_trylock(&t->mu) == 0 ? 0 : WT_BUSY;
}

int wt_set_target(wt_timer *t, int64_t us, int block) {
    if (lock(t, block))
        return WT_BUSY;
    int64_t old = t->target;
    t->target = us;
    /* Later or none: the thread finds out when it wakes anyway. While a
     * wake is unhandled it waits for wt_rearm() instead. */
    if (us < old && !t->fired)
        pthread_cond_signal(&t->cv);
    pthread_mutex_unlock(&t->mu);
    return 0;
}

void wt_drain(wt_timer *t) {
    uint64_t n;
    while (read(t->fd, &n, sizeof n) < 0 && errno == EINTR) {
    } /* EAGAIN: nothing to read */
}

int wt_rearm(wt_timer *t, int block) {
    if (lock(t, block))
        return WT_BUSY;
    if (t->fired) {
        t->fired = 0;
        if (t->target != WT_NONE)
            pthread_cond_signal(&t->cv);
    }
    pthread_mutex_unlock(&t->mu);
    return 0;
}

void wt_free(wt_timer *t) {
    pthread_mutex_lock(&t->mu);
    t->stop = 1;
    pthread_cond_signal(&t->cv);
    pthread_mutex_unlock(&t->mu);
    pthread_join(t->thread, NULL);
    close(t->fd);
    pthread_cond_destroy(&t->cv);
    pthread_mutex_destroy(&t->mu);
    free(t);
}
