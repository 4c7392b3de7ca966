/* The command-line programs' flag parsing (demos/, bench/): a bad value is
 * bad usage, one line on stderr ("program: what is wrong (see --help)") and
 * exit status 2, the same words in every program.
 *
 * Thread-safety: for a program's main thread, before it starts a world. */
#ifndef TM_CLI_H
#define TM_CLI_H

#include <stddef.h>

/* The name the messages start with ("train"). */
void tm_cli_program(const char *name);

/* printf-style message, then exit(2). */
__attribute__((noreturn, format(printf, 1, 2))) void tm_cli_die(const char *fmt, ...);

/* An integer flag in min..max; the message names the real range. */
long tm_cli_long(const char *flag, const char *v, long min, long max);
/* A finite number >= min (> min when strict). */
double tm_cli_double(const char *flag, const char *v, double min, int strict);
/* A positive size like 64M or 1G (runtime/arena.h's tm_parse_size). */
size_t tm_cli_size(const char *flag, const char *v);
/* A path an output flag names, checked before anything starts
 * (runtime/outfile.h): one that cannot be written is bad usage too. */
void tm_cli_output(const char *flag, const char *path);

#endif
