#include "runtime/status.h"

#include <stdarg.h>
#include <stdio.h>

static _Thread_local char last_message[1024];

const char *tm_strerror(int status)
{
    switch (status) {
#define TM__STATUS_STR(name, value, desc) case value: return desc;
        TM_STATUS_MAP(TM__STATUS_STR)
#undef TM__STATUS_STR
    }
    return "unknown status";
}

const char *tm_err_name(int status)
{
    switch (status) {
#define TM__STATUS_NAME(name, value, desc) case value: return "TM_" #name;
        TM_STATUS_MAP(TM__STATUS_NAME)
#undef TM__STATUS_NAME
    }
    return "TM_UNKNOWN";
}

int tm_error(int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_message, sizeof last_message, fmt, ap);
    va_end(ap);
    return status;
}

const char *tm_error_message(void) { return last_message; }

void tm_error_clear(void) { last_message[0] = '\0'; }
