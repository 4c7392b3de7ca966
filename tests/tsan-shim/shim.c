/* Runner for the Criterion stand-in (see criterion/criterion.h here). */
#include <criterion/criterion.h>

#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

static struct tm_shim_test *tests, **tail = &tests;
static atomic_int failures;
static jmp_buf escape;
static int skipped;
static char skip_reason[256];

/* What the timeout handler reports: the test running and the counts so
 * far. Atomics, because the handler may interrupt their update (lock-free
 * atomics are safe to read from a signal handler). */
static _Atomic(struct tm_shim_test *) current;
static atomic_int tested, passing, failing, skipped_tests;

void tm_shim_register(struct tm_shim_test *t)
{
    *tail = t;
    tail = &t->next;
}

void tm_shim_check(int ok, int fatal, const char *file, int line, const char *expr,
                   const char *fmt, ...)
{
    if (ok) return;
    atomic_fetch_add(&failures, 1);
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "[----] %s:%d: Assertion Failed: %s\n[----]   %s\n", file, line, expr, msg);
    if (fatal) longjmp(escape, 1);
}

void tm_shim_skip(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(skip_reason, sizeof skip_reason, fmt, ap);
    va_end(ap);
    skipped = 1;
    longjmp(escape, 1);
}

void tm_shim_log(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "[----] ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}

/* Async-signal-safe output for the timeout handler: write(2) only. */
static void put(const char *s)
{
    size_t n = 0;
    while (s[n] != '\0') n++;
    if (write(STDERR_FILENO, s, n) < 0) return;
}

static void put_int(int v)
{
    char buf[16];
    int i = (int)sizeof buf - 1;
    buf[i] = '\0';
    unsigned u = v < 0 ? 0u : (unsigned)v;
    do {
        buf[--i] = (char)('0' + u % 10);
        u /= 10;
    } while (u > 0 && i > 0);
    put(buf + i);
}

static void synthesis(void)
{
    put("[====] Synthesis: Tested: ");
    put_int(atomic_load(&tested));
    put(" | Passing: ");
    put_int(atomic_load(&passing));
    put(" | Failing: ");
    put_int(atomic_load(&failing));
    put(" | Crashing: 0 | Skipped: ");
    put_int(atomic_load(&skipped_tests));
    put("\n");
}

/* A test past its .timeout: the process cannot go on (its threads may hold
 * anything), so it reports the test as failed, prints the summary and
 * exits non-zero, from whichever thread the signal reached. */
static void timed_out(int sig)
{
    (void)sig;
    struct tm_shim_test *t = atomic_load(&current);
    put("[FAIL] ");
    if (t != NULL) {
        put(t->suite);
        put("::");
        put(t->name);
        put(": timed out after ");
        put_int(t->extra.timeout);
        put(" s");
    } else {
        put("timed out");
    }
    put("\n");
    atomic_fetch_add(&tested, 1);
    atomic_fetch_add(&failing, 1);
    synthesis();
    _exit(1);
}

/* Runs one test: 1 passed, 0 failed, -1 skipped. A test that failed a
 * check before it skipped has failed. */
static int run_one(struct tm_shim_test *t)
{
    int before = atomic_load(&failures);
    skipped = 0;
    atomic_store(&current, t);
    alarm(t->extra.timeout > 0 ? (unsigned)t->extra.timeout : 0);
    if (setjmp(escape) == 0) {
        if (t->extra.init) t->extra.init();
        t->fn();
    }
    if (t->extra.fini) t->extra.fini();
    alarm(0);
    atomic_store(&current, NULL);
    if (atomic_load(&failures) != before) return 0;
    return skipped ? -1 : 1;
}

static void skip_line(const struct tm_shim_test *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void skip_line(const struct tm_shim_test *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "[SKIP] %s::%s: ", t->suite, t->name);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    atomic_fetch_add(&skipped_tests, 1);
}

/* Accepts and ignores Criterion's flags (--jobs=1, --short-filename). */
int main(void)
{
    signal(SIGALRM, timed_out);
    for (struct tm_shim_test *t = tests; t != NULL; t = t->next) {
        /* Tests that end their process cannot run in this one. */
        if (t->extra.disabled) {
            skip_line(t, "disabled");
            continue;
        }
        if (t->extra.signal) {
            skip_line(t, "expects signal %d, which would end this in-process runner",
                      t->extra.signal);
            continue;
        }
        if (t->extra.exit_code) {
            skip_line(t, "expects exit code %d, which would end this in-process runner",
                      t->extra.exit_code);
            continue;
        }
        int ok = run_one(t);
        if (ok < 0) {
            skip_line(t, "%s", skip_reason);
            continue;
        }
        atomic_fetch_add(&tested, 1);
        atomic_fetch_add(ok ? &passing : &failing, 1);
        fprintf(stderr, "[%s] %s::%s\n", ok ? "PASS" : "FAIL", t->suite, t->name);
    }
    synthesis();
    return atomic_load(&failing) > 0;
}
