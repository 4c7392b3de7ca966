#include "runtime/cli.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "runtime/arena.h"
#include "runtime/outfile.h"
#include "runtime/status.h"

static const char *program = "tinymesh";

void tm_cli_program(const char *name) { program = name; }

void tm_cli_die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", program);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (see --help)\n");
    va_end(ap);
    exit(2);
}

long tm_cli_long(const char *flag, const char *v, long min, long max)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (*v == '\0' || *end != '\0' || errno != 0 || x < min || x > max)
        tm_cli_die("%s wants an integer in %ld..%ld, not \"%s\"", flag, min, max, v);
    return x;
}

double tm_cli_double(const char *flag, const char *v, double min, int strict)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (*v == '\0' || *end != '\0' || errno != 0 || !isfinite(x) || x < min ||
        (strict && x <= min))
        tm_cli_die("%s wants a finite number %s %g, not \"%s\"", flag, strict ? ">" : ">=", min,
                   v);
    return x;
}

size_t tm_cli_size(const char *flag, const char *v)
{
    size_t x;
    if (tm_parse_size(v, &x) != 0 || x == 0)
        tm_cli_die("%s wants a size like 64M or 1G, not \"%s\"", flag, v);
    return x;
}

void tm_cli_output(const char *flag, const char *path)
{
    if (path == NULL || tm_outfile_check(path) == TM_OK) return;
    fprintf(stderr, "%s: %s: %s\n", program, flag, tm_error_message());
    exit(2);
}
