/* tinymesh status codes: one X-macro, one enum, tm_strerror(), plus a
 * per-thread "last error message" that library code records before returning
 * a status. Thread-safe: every function works on the calling thread's data. */
#ifndef TM_STATUS_H
#define TM_STATUS_H

/* X(name, value, description) */
#define TM_STATUS_MAP(X)                                                       \
    X(OK, 0, "success")                                                        \
    X(EINVAL, -1, "invalid argument")                                          \
    X(ENOMEM, -2, "out of device memory")                                      \
    X(EHOSTMEM, -3, "not enough host memory")                                  \
    X(EABORTED, -4, "aborted because another device failed")                   \
    X(EDEADLOCK, -5, "no progress on any link (deadlock)")                     \
    X(ESYS, -6, "system call failed")                                          \
    X(EIO, -7, "input/output error")                                           \
    X(EFORMAT, -8, "malformed or corrupt file")                                \
    X(EFAIL, -9, "device failed")                                             \
    X(ENONFINITE, -10, "a value became NaN or infinite")

typedef enum {
#define TM__STATUS_ENUM(name, value, desc) TM_##name = value,
    TM_STATUS_MAP(TM__STATUS_ENUM)
#undef TM__STATUS_ENUM
} tm_status;

/* Description of a status ("invalid argument"); "unknown status" otherwise. */
const char *tm_strerror(int status);
/* Symbolic name ("TM_EINVAL"); "TM_UNKNOWN" otherwise. */
const char *tm_err_name(int status);

/* Records a printf-style message for the calling thread and returns status,
 * so error paths read `return tm_error(TM_EINVAL, "bad size %zu", n);`. */
int tm_error(int status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* The calling thread's last recorded message ("" if none). */
const char *tm_error_message(void);
/* Forgets the calling thread's message. */
void tm_error_clear(void);

/* Propagate a failing status to the caller (NCCL's CHECK). */
#define TM_CHECK(call)                                                         \
    do {                                                                       \
        int tm__st = (call);                                                   \
        if (tm__st != TM_OK) return tm__st;                                    \
    } while (0)

#endif
