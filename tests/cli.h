/* For the suites that run the programs from the outside: a fresh directory
 * per test, a program run through the shell with its output captured, and
 * line counting. The programs are found in $TM_BIN_DIR (set by the test
 * runner), else in build/. */
#ifndef TM_TESTS_CLI_H
#define TM_TESTS_CLI_H

#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* The test's directory and the files a run's stdout and stderr go to. */
static char cli_dir[64], cli_out[128], cli_err[128];

/* .init of a test: makes the directory (readable by everyone, so that a run
 * as an unprivileged user can reach what the test puts there). */
static inline void cli_setup(void)
{
    snprintf(cli_dir, sizeof cli_dir, "/tmp/tm_cli_XXXXXX");
    cr_assert_not_null(mkdtemp(cli_dir));
    chmod(cli_dir, 0755);
    snprintf(cli_out, sizeof cli_out, "%s/stdout", cli_dir);
    snprintf(cli_err, sizeof cli_err, "%s/stderr", cli_dir);
}

/* .fini of a test: removes the directory and everything in it. */
static inline void cli_teardown(void)
{
    char cmd[192];
    snprintf(cmd, sizeof cmd, "chmod -R u+w %s 2>/dev/null; rm -rf %s", cli_dir, cli_dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", cli_dir);
}

/* name inside the test's directory, into buf. */
static inline char *cli_path(char *buf, size_t n, const char *name)
{
    snprintf(buf, n, "%s/%s", cli_dir, name);
    return buf;
}

/* "build/train" or "$TM_BIN_DIR/train". */
static inline void cli_program(char *buf, size_t n, const char *prog)
{
    const char *dir = getenv("TM_BIN_DIR");
    snprintf(buf, n, "%s/%s", dir ? dir : "build", prog);
}

/* Runs `prog args` with stdout and stderr into cli_out and cli_err;
 * returns its exit status (128 + N when signal N ended it). */
static inline int cli_run(const char *prog, const char *args)
{
    char bin[256], cmd[4096];
    cli_program(bin, sizeof bin, prog);
    snprintf(cmd, sizeof cmd, "exec %s %s >%s 2>%s", bin, args, cli_out, cli_err);
    int st = system(cmd);
    cr_assert(st != -1 && WIFEXITED(st), "%s did not run: %s", prog, cmd);
    return WEXITSTATUS(st);
}

/* Lines of path holding needle (all lines for NULL), the first of them
 * copied into first; -1 when the file cannot be read. */
static inline int cli_lines(const char *path, const char *needle, char *first, size_t n)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) return -1;
    static char line[1 << 20]; /* a summary line of 256 devices and their links */
    int lines = 0;
    first[0] = '\0';
    while (fgets(line, sizeof line, f) != NULL) {
        if (needle == NULL || strstr(line, needle) != NULL) {
            if (lines == 0) snprintf(first, n, "%.*s", (int)(n - 1), line);
            lines++;
        }
    }
    fclose(f);
    return lines;
}

static inline int cli_exists(const char *p) { return access(p, F_OK) == 0; }

/* The start of a file (at most n - 1 bytes) into buf; "" when it cannot be
 * read. */
static inline void cli_slurp(const char *path, char *buf, size_t n)
{
    buf[0] = '\0';
    FILE *f = fopen(path, "r");
    if (f == NULL) return;
    size_t got = fread(buf, 1, n - 1, f);
    buf[got] = '\0';
    fclose(f);
}

/* Files in the test's directory whose name holds ".tmp.": what an output
 * left unfinished would leave behind. */
static inline int cli_temps_left(void)
{
    DIR *d = opendir(cli_dir);
    cr_assert_not_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) n += strstr(e->d_name, ".tmp.") != NULL;
    closedir(d);
    return n;
}

/* A thread that reads a FIFO from one open to its end of file. */
typedef struct {
    char path[128];
    char got[1 << 16]; /* what it read, NUL-terminated */
    size_t len;
    int opened;        /* it got the FIFO open */
} cli_reader;

static inline void *cli_read_fifo(void *arg)
{
    cli_reader *r = arg;
    int fd = open(r->path, O_RDONLY);
    if (fd < 0) return NULL;
    r->opened = 1;
    for (ssize_t k; r->len < sizeof r->got - 1 &&
                    (k = read(fd, r->got + r->len, sizeof r->got - 1 - r->len)) > 0;)
        r->len += (size_t)k;
    r->got[r->len] = '\0';
    close(fd);
    return NULL;
}

#endif
