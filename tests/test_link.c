/* The ring itself: two threads stream messages of every awkward size through
 * a small ring (wrap-around, messages longer than the ring, odd lengths) and
 * the bytes arrive intact; a blocked end wakes on abort; counters count. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "runtime/link.h"
#include "runtime/status.h"

#define CAP 256
#define MESSAGES 3000

static atomic_int abort_flag;

static size_t msg_len(int i) { return (size_t)((i * 37) % 700); }
static uint8_t msg_byte(int i, size_t k) { return (uint8_t)(i * 131 + k * 7); }

typedef struct {
    tm_link *link;
    tm_waiter w;
    int status;
    long wrong;
} end;

static void waiter_init(tm_waiter *w, int spin, int yields)
{
    memset(w, 0, sizeof *w);
    w->abort = &abort_flag;
    w->spin = spin;
    w->yields = yields;
}

static void *producer(void *arg)
{
    end *e = arg;
    for (int i = 0; i < MESSAGES && e->status == TM_OK; i++) {
        size_t len = msg_len(i);
        tm_msg_header h = {7, 1, len, (uint32_t)i, 0, 0.0};
        e->status = tm__link_send_header(e->link, &e->w, &h);
        for (size_t done = 0; e->status == TM_OK && done < len;) {
            uint8_t *p;
            size_t got;
            e->status = tm__link_write_acquire(e->link, &e->w, 1, len - done, &p, &got);
            if (e->status != TM_OK) break;
            for (size_t k = 0; k < got; k++) p[k] = msg_byte(i, done + k);
            tm__link_write_commit(e->link, got);
            done += got;
        }
        if (e->status == TM_OK) e->status = tm__link_send_pad(e->link, &e->w, len);
    }
    return NULL;
}

static void *consumer(void *arg)
{
    end *e = arg;
    for (int i = 0; i < MESSAGES && e->status == TM_OK; i++) {
        tm_msg_header h;
        e->status = tm__link_recv_header(e->link, &e->w, &h);
        if (e->status != TM_OK) break;
        size_t len = msg_len(i);
        if (h.kind != 7 || h.comm != 1 || h.bytes != len || h.seq != (uint32_t)i) e->wrong++;
        for (size_t done = 0; done < len;) {
            const uint8_t *p;
            size_t got;
            e->status = tm__link_read_acquire(e->link, &e->w, 1, len - done, &p, &got);
            if (e->status != TM_OK) break;
            for (size_t k = 0; k < got; k++) e->wrong += p[k] != msg_byte(i, done + k);
            tm__link_read_release(e->link, got);
            done += got;
        }
        if (e->status == TM_OK) e->status = tm__link_recv_pad(e->link, &e->w, len);
    }
    return NULL;
}

static void stream(int spin, int yields)
{
    tm_link *l;
    cr_assert_eq(tm__link_create(&l, CAP, 0, 1), TM_OK);
    end p = {.link = l}, c = {.link = l};
    waiter_init(&p.w, spin, yields);
    waiter_init(&c.w, spin, yields);
    pthread_t tp, tc;
    pthread_create(&tp, NULL, producer, &p);
    pthread_create(&tc, NULL, consumer, &c);
    pthread_join(tp, NULL);
    pthread_join(tc, NULL);
    cr_expect_eq(p.status, TM_OK);
    cr_expect_eq(c.status, TM_OK);
    cr_expect_eq(c.wrong, 0, "%ld wrong bytes or headers", c.wrong);
    uint64_t bytes = 0;
    for (int i = 0; i < MESSAGES; i++) bytes += msg_len(i);
    cr_expect_eq(tm__link_bytes(l), bytes);
    cr_expect_eq(tm__link_messages(l), MESSAGES);
    tm__link_destroy(l);
}

Test(link, stream_with_spinning, .timeout = 60) { stream(4000, 0); }
Test(link, stream_with_yield_then_sleep, .timeout = 60) { stream(0, 4); }
Test(link, stream_sleeping_only, .timeout = 60) { stream(0, 0); }

Test(link, bad_capacity_is_refused)
{
    tm_link *l = (tm_link *)1;
    cr_expect_eq(tm__link_create(&l, 1000, 0, 1), TM_EINVAL);
    cr_expect_null(l);
    cr_expect_eq(tm__link_create(&l, 64, 0, 1), TM_EINVAL);
    tm__link_destroy(NULL);
}

static void *blocked_reader(void *arg)
{
    end *e = arg;
    tm_msg_header h;
    e->status = tm__link_recv_header(e->link, &e->w, &h);
    return NULL;
}

Test(link, abort_wakes_a_sleeping_reader, .timeout = 10)
{
    tm_link *l;
    cr_assert_eq(tm__link_create(&l, CAP, 0, 1), TM_OK);
    end c = {.link = l};
    waiter_init(&c.w, 0, 0);
    pthread_t t;
    pthread_create(&t, NULL, blocked_reader, &c);
    /* Wait until the reader is asleep on the link, then abort. */
    while (atomic_load(&c.w.blocked_on) == NULL) {
        struct timespec d = {0, 1000000};
        nanosleep(&d, NULL);
    }
    atomic_store(&abort_flag, 1);
    tm__link_wake_all(l);
    pthread_join(t, NULL);
    atomic_store(&abort_flag, 0);
    cr_expect_eq(c.status, TM_EABORTED);
    cr_expect_null(atomic_load(&c.w.blocked_on));
    tm__link_destroy(l);
}
