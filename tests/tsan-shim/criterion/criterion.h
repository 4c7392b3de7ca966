/* A stand-in for Criterion's assertion and registration macros, used only by
 * the ThreadSanitizer build: Criterion's sandbox maps its shared arena at
 * fixed addresses inside TSan's shadow memory and aborts at start-up
 * ("Could not initialize inheritable arena", upstream issue #274). The same
 * test sources compile against this header; tests run in-process, one after
 * another, and the binary exits non-zero if any check failed. A test that
 * would end the process (.signal, .exit_code) is reported as skipped with
 * the reason; a test past its .timeout fails, and the summary line is
 * printed before the process exits.
 * Thread-safety: checks may fail from any thread (the counters are atomic);
 * fatal asserts must be called from the test's own thread. */
#ifndef TM_TSAN_SHIM_CRITERION_H
#define TM_TSAN_SHIM_CRITERION_H

#include <setjmp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct criterion_test_extra_data {
    int timeout;        /* seconds; enforced with alarm() */
    int disabled;       /* reported as skipped */
    const char *description;
    void (*init)(void);
    void (*fini)(void);
    int signal;         /* unsupported here: the test is reported as skipped */
    int exit_code;      /* unsupported here likewise */
};

struct tm_shim_test {
    const char *suite, *name;
    void (*fn)(void);
    struct criterion_test_extra_data extra;
    struct tm_shim_test *next;
};

void tm_shim_register(struct tm_shim_test *t);
void tm_shim_check(int ok, int fatal, const char *file, int line, const char *expr,
                   const char *fmt, ...);
void tm_shim_skip(const char *fmt, ...);
void tm_shim_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#define Test(suite, name, ...)                                                 \
    static void suite##_##name##_fn(void);                                     \
    static struct tm_shim_test suite##_##name##_test = {                       \
        #suite, #name, suite##_##name##_fn, {__VA_ARGS__}, NULL};              \
    __attribute__((constructor)) static void suite##_##name##_reg(void)        \
    {                                                                          \
        tm_shim_register(&suite##_##name##_test);                              \
    }                                                                          \
    static void suite##_##name##_fn(void)

/* The message is optional, so its format may be the empty literal: no
 * printf-format attribute on the checks. */
#define TM_SHIM_CHECK(fatal, cond, expr, ...)                                  \
    tm_shim_check(!!(cond), fatal, __FILE__, __LINE__, expr, "" __VA_ARGS__)

#define cr_assert(c, ...) TM_SHIM_CHECK(1, c, #c, __VA_ARGS__)
#define cr_expect(c, ...) TM_SHIM_CHECK(0, c, #c, __VA_ARGS__)
#define cr_assert_not(c, ...) TM_SHIM_CHECK(1, !(c), "!(" #c ")", __VA_ARGS__)
#define cr_expect_not(c, ...) TM_SHIM_CHECK(0, !(c), "!(" #c ")", __VA_ARGS__)
#define TM_SHIM_CMP(f, a, op, b, ...) TM_SHIM_CHECK(f, (a)op(b), #a " " #op " " #b, __VA_ARGS__)
#define cr_assert_eq(a, b, ...) TM_SHIM_CMP(1, a, ==, b, __VA_ARGS__)
#define cr_expect_eq(a, b, ...) TM_SHIM_CMP(0, a, ==, b, __VA_ARGS__)
#define cr_assert_neq(a, b, ...) TM_SHIM_CMP(1, a, !=, b, __VA_ARGS__)
#define cr_expect_neq(a, b, ...) TM_SHIM_CMP(0, a, !=, b, __VA_ARGS__)
#define cr_assert_lt(a, b, ...) TM_SHIM_CMP(1, a, <, b, __VA_ARGS__)
#define cr_expect_lt(a, b, ...) TM_SHIM_CMP(0, a, <, b, __VA_ARGS__)
#define cr_assert_leq(a, b, ...) TM_SHIM_CMP(1, a, <=, b, __VA_ARGS__)
#define cr_expect_leq(a, b, ...) TM_SHIM_CMP(0, a, <=, b, __VA_ARGS__)
#define cr_assert_gt(a, b, ...) TM_SHIM_CMP(1, a, >, b, __VA_ARGS__)
#define cr_expect_gt(a, b, ...) TM_SHIM_CMP(0, a, >, b, __VA_ARGS__)
#define cr_assert_geq(a, b, ...) TM_SHIM_CMP(1, a, >=, b, __VA_ARGS__)
#define cr_expect_geq(a, b, ...) TM_SHIM_CMP(0, a, >=, b, __VA_ARGS__)
#define cr_assert_null(p, ...) TM_SHIM_CHECK(1, (p) == NULL, #p " == NULL", __VA_ARGS__)
#define cr_expect_null(p, ...) TM_SHIM_CHECK(0, (p) == NULL, #p " == NULL", __VA_ARGS__)
#define cr_assert_not_null(p, ...) TM_SHIM_CHECK(1, (p) != NULL, #p " != NULL", __VA_ARGS__)
#define cr_expect_not_null(p, ...) TM_SHIM_CHECK(0, (p) != NULL, #p " != NULL", __VA_ARGS__)
#define cr_assert_str_eq(a, b, ...) TM_SHIM_CHECK(1, strcmp(a, b) == 0, #a " == " #b, __VA_ARGS__)
#define cr_expect_str_eq(a, b, ...) TM_SHIM_CHECK(0, strcmp(a, b) == 0, #a " == " #b, __VA_ARGS__)
#define cr_assert_str_neq(a, b, ...) TM_SHIM_CHECK(1, strcmp(a, b) != 0, #a " != " #b, __VA_ARGS__)
#define cr_expect_str_neq(a, b, ...) TM_SHIM_CHECK(0, strcmp(a, b) != 0, #a " != " #b, __VA_ARGS__)
#define cr_assert_str_empty(s, ...) TM_SHIM_CHECK(1, (s)[0] == '\0', #s " is empty", __VA_ARGS__)
#define cr_expect_str_empty(s, ...) TM_SHIM_CHECK(0, (s)[0] == '\0', #s " is empty", __VA_ARGS__)
#define cr_assert_str_not_empty(s, ...) TM_SHIM_CHECK(1, (s)[0] != '\0', #s " not empty", __VA_ARGS__)
#define cr_expect_str_not_empty(s, ...) TM_SHIM_CHECK(0, (s)[0] != '\0', #s " not empty", __VA_ARGS__)
#define cr_assert_fail(...) TM_SHIM_CHECK(1, 0, "fail", __VA_ARGS__)
#define cr_expect_fail(...) TM_SHIM_CHECK(0, 0, "fail", __VA_ARGS__)
#define cr_fail(...) TM_SHIM_CHECK(0, 0, "fail", __VA_ARGS__)
#define cr_skip_test(...) tm_shim_skip("" __VA_ARGS__)
#define cr_log_info(...) tm_shim_log(__VA_ARGS__)
#define cr_log_warn(...) tm_shim_log(__VA_ARGS__)

#endif
