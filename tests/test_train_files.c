/* build/train's output flags (--metrics, --save, --trace, --report) from
 * the outside: device nodes, FIFOs and symlinks are written, never
 * replaced; a path that cannot be written is bad usage (exit 2, one line)
 * before anything starts, whichever flag names it; no temporary file is
 * left behind. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/cli.h"

/* A run of a few seconds at most: synthetic data, a tiny model, 3 steps. */
#define SHORT "--dataset synthetic --samples 256 --model 16,16,4 --batch 32 --steps 3 "

/* A copy of /dev/null (minor 3) or /dev/full (minor 7) in the test's
 * directory, made with mknod; where that is not allowed (not root), the
 * system's own node, which such a process cannot replace anyway. */
static void device_node(char *path, size_t n, unsigned minor)
{
    cli_path(path, n, minor == 3 ? "null" : "full");
    if (mknod(path, S_IFCHR | 0666, makedev(1, minor)) == 0) return;
    cr_assert_eq(errno, EPERM, "mknod %s: %s", path, strerror(errno));
    snprintf(path, n, "/dev/%s", minor == 3 ? "null" : "full");
}

static void expect_device(const char *path, unsigned minor)
{
    struct stat st;
    cr_assert_eq(lstat(path, &st), 0, "%s: %s", path, strerror(errno));
    cr_expect(S_ISCHR(st.st_mode) && st.st_rdev == makedev(1, minor),
              "%s is no longer the device node (1, %u)", path, minor);
}

Test(train_files, device_node_is_written_never_replaced, .init = cli_setup,
     .fini = cli_teardown, .timeout = 120)
{
    char null[128], args[1024], first[1024];
    device_node(null, sizeof null, 3);
    snprintf(args, sizeof args, SHORT "--metrics %s --save %s --trace %s", null, null, null);
    int st = cli_run("train", args);
    cr_expect_eq(st, 0, "exit %d", st);
    cr_expect_eq(cli_lines(cli_err, NULL, first, sizeof first), 0, "stderr: %s", first);
    expect_device(null, 3);
    cr_expect_eq(cli_temps_left(), 0);
}

Test(train_files, a_full_device_fails_the_run_and_stays_a_device, .init = cli_setup,
     .fini = cli_teardown, .timeout = 120)
{
    char full[128], ckpt[128], args[1024], first[1024];
    device_node(full, sizeof full, 7);
    cli_path(ckpt, sizeof ckpt, "ckpt.safetensors");
    snprintf(args, sizeof args, SHORT "--save %s --trace %s", ckpt, full);
    int st = cli_run("train", args);
    cr_expect_eq(st, 1, "exit %d", st);
    cr_expect_eq(cli_lines(cli_err, NULL, first, sizeof first), 1);
    cr_expect(strstr(first, "No space left on device") != NULL, "%s", first);
    expect_device(full, 7);
    /* The checkpoint is written before the trace, so it is not lost. */
    cr_expect(cli_exists(ckpt), "the checkpoint was lost with the trace");
    cr_expect_eq(cli_temps_left(), 0);
}

Test(train_files, symlinks_are_written_through, .init = cli_setup, .fini = cli_teardown,
     .timeout = 120)
{
    char real[128], link[128], ckpt_real[128], ckpt_link[128], args[1024], first[1024];
    cli_path(real, sizeof real, "real.jsonl");
    cli_path(link, sizeof link, "link.jsonl");
    cli_path(ckpt_real, sizeof ckpt_real, "real.safetensors");
    cli_path(ckpt_link, sizeof ckpt_link, "link.safetensors");
    cr_assert_eq(symlink("real.jsonl", link), 0);
    cr_assert_eq(symlink(ckpt_real, ckpt_link), 0); /* dangling until the run */
    snprintf(args, sizeof args, SHORT "--metrics %s --save %s", link, ckpt_link);
    cr_assert_eq(cli_run("train", args), 0);
    struct stat st;
    cr_expect(lstat(link, &st) == 0 && S_ISLNK(st.st_mode), "--metrics replaced the link");
    cr_expect(lstat(ckpt_link, &st) == 0 && S_ISLNK(st.st_mode), "--save replaced the link");
    cr_expect_eq(cli_lines(real, "\"type\":\"step\"", first, sizeof first), 3);
    cr_expect(lstat(ckpt_real, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0,
              "the link's target holds no checkpoint");
    cr_expect_eq(cli_temps_left(), 0);
}

Test(train_files, fifos_with_readers_get_everything_in_order, .init = cli_setup,
     .fini = cli_teardown, .timeout = 120)
{
    static cli_reader m, c;
    memset(&m, 0, sizeof m);
    memset(&c, 0, sizeof c);
    cli_path(m.path, sizeof m.path, "metrics.fifo");
    cli_path(c.path, sizeof c.path, "ckpt.fifo");
    cr_assert_eq(mkfifo(m.path, 0666), 0);
    cr_assert_eq(mkfifo(c.path, 0666), 0);
    pthread_t tm, tc;
    cr_assert_eq(pthread_create(&tm, NULL, cli_read_fifo, &m), 0);
    cr_assert_eq(pthread_create(&tc, NULL, cli_read_fifo, &c), 0);
    char args[1024];
    snprintf(args, sizeof args, SHORT "--metrics %s --save %s", m.path, c.path);
    int st = cli_run("train", args);
    pthread_join(tm, NULL);
    pthread_join(tc, NULL);
    cr_expect_eq(st, 0, "exit %d", st);
    /* One open each: the readers saw one end of file, after everything. */
    const char *want[] = {"\"step\":1,", "\"step\":2,", "\"step\":3,", "\"type\":\"summary\""};
    const char *at = m.got;
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const char *hit = strstr(at, want[i]);
        cr_expect_not_null(hit, "the metrics reader lacks %s (in order):\n%s", want[i], m.got);
        if (hit) at = hit;
    }
    cr_expect(c.len > 8 && strstr(c.got + 8, "\"__metadata__\"") != NULL,
              "the checkpoint reader got %zu bytes", c.len);
    struct stat sb;
    cr_expect(lstat(m.path, &sb) == 0 && S_ISFIFO(sb.st_mode), "--metrics replaced the FIFO");
    cr_expect(lstat(c.path, &sb) == 0 && S_ISFIFO(sb.st_mode), "--save replaced the FIFO");
    cr_expect_eq(cli_temps_left(), 0);
}

Test(train_files, bad_output_paths_are_usage_errors_before_anything_starts,
     .init = cli_setup, .fini = cli_teardown, .timeout = 120)
{
    char sub[128], missing[128];
    cli_path(sub, sizeof sub, "a-directory");
    cli_path(missing, sizeof missing, "no-such-dir/out");
    cr_assert_eq(mkdir(sub, 0755), 0);
    const char *flags[] = {"--metrics", "--save", "--trace", "--report"};
    const char *paths[] = {"''", missing, sub};
    const char *why[] = {"empty name", "no-such-dir does not exist", "is a directory"};
    for (size_t f = 0; f < 4; f++)
        for (size_t p = 0; p < 3; p++) {
            char args[1024], first[1024], prefix[64];
            snprintf(args, sizeof args, SHORT "%s %s", flags[f], paths[p]);
            int st = cli_run("train", args);
            cr_expect_eq(st, 2, "%s %s: exit %d", flags[f], paths[p], st);
            cr_expect_eq(cli_lines(cli_err, NULL, first, sizeof first), 1, "%s %s", flags[f],
                         paths[p]);
            snprintf(prefix, sizeof prefix, "train: %s: cannot write", flags[f]);
            cr_expect(strncmp(first, prefix, strlen(prefix)) == 0, "%s", first);
            cr_expect(strstr(first, why[p]) != NULL, "%s", first);
            cr_expect_eq(cli_lines(cli_out, NULL, first, sizeof first), 0,
                         "%s %s: something started: %s", flags[f], paths[p], first);
        }
    cr_expect_eq(cli_temps_left(), 0);
}

/* Runs build/train as the unprivileged user nobody (65534) when this is
 * root: a directory without write permission is still writable for root,
 * so only a process that lacks the privilege shows the refusal honestly.
 * Returns the exit status; stdout and stderr go to cli_out and cli_err. */
static int train_unprivileged(const char *args)
{
    char bin[256], cmd[2048];
    cli_program(bin, sizeof bin, "train");
    snprintf(cmd, sizeof cmd, "exec %s %s", bin, args);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        int out = open(cli_out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int err = open(cli_err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (out < 0 || err < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0) _exit(126);
        if (geteuid() == 0 && (setgroups(0, NULL) != 0 || setgid(65534) != 0 || setuid(65534) != 0))
            _exit(126);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    int status;
    cr_assert(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status));
    return WEXITSTATUS(status);
}

Test(train_files, read_only_directory_is_refused_before_anything_starts, .init = cli_setup,
     .fini = cli_teardown, .timeout = 120)
{
    char ro[128], args[1024], first[1024];
    cli_path(ro, sizeof ro, "ro");
    cr_assert_eq(mkdir(ro, 0555), 0);
    chmod(ro, 0555);
    snprintf(args, sizeof args, SHORT "--save %s/x.safetensors", ro);
    int st = train_unprivileged(args);
    cr_expect_eq(st, 2, "exit %d", st);
    cr_expect_eq(cli_lines(cli_err, NULL, first, sizeof first), 1);
    cr_expect(strstr(first, "train: --save: cannot write") != NULL &&
                  strstr(first, "Permission denied") != NULL, "%s", first);
    cr_expect_eq(cli_lines(cli_out, NULL, first, sizeof first), 0, "it started: %s", first);
}
