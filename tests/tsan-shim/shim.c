/* Runner for the Criterion stand-in (see criterion/criterion.h here). */
#include <criterion/criterion.h>

#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

static struct tm_shim_test *tests, **tail = &tests;
static atomic_int failures;
static jmp_buf escape;
static int skipped;

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
    fprintf(stderr, "[SKIP] ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
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

/* Runs one test: 1 passed, 0 failed, -1 skipped. */
static int run_one(struct tm_shim_test *t)
{
    int before = atomic_load(&failures);
    skipped = 0;
    alarm(t->extra.timeout > 0 ? (unsigned)t->extra.timeout : 0);
    if (setjmp(escape) == 0) {
        if (t->extra.init) t->extra.init();
        t->fn();
    }
    if (t->extra.fini) t->extra.fini();
    alarm(0);
    if (skipped) return -1;
    return atomic_load(&failures) == before;
}

/* Accepts and ignores Criterion's flags (--jobs=1, --short-filename). */
int main(void)
{
    int tested = 0, passing = 0, failing = 0;
    for (struct tm_shim_test *t = tests; t != NULL; t = t->next) {
        if (t->extra.disabled || t->extra.signal || t->extra.exit_code) continue;
        int ok = run_one(t);
        if (ok < 0) continue;
        tested++;
        passing += ok;
        failing += !ok;
        fprintf(stderr, "[%s] %s::%s\n", ok ? "PASS" : "FAIL", t->suite, t->name);
    }
    fprintf(stderr, "[====] Synthesis: Tested: %d | Passing: %d | Failing: %d | Crashing: 0\n",
            tested, passing, failing);
    return failing > 0;
}
