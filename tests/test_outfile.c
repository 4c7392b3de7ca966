/* runtime/outfile: regular files and symlinks' targets are replaced
 * atomically; device nodes and FIFOs are written in place, never replaced;
 * bad paths (empty, missing directory, a directory, a directory this process
 * cannot write) are refused with a message; no temporary file outlives an
 * outfile. Every case works in a fresh directory under /tmp (tests/cli.h). */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include "runtime/outfile.h"
#include "runtime/status.h"
#include "tests/cli.h"

static void put(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f, "%s: %s", path, strerror(errno));
    fputs(text, f);
    fclose(f);
}

static int write_text(const char *path, const char *text)
{
    tm_outfile *o;
    int st = tm_outfile_open(&o, path);
    if (st != TM_OK) return st;
    FILE *f = tm_outfile_stream(o);
    cr_assert_not_null(f, "%s", tm_error_message());
    fputs(text, f);
    return tm_outfile_commit(o);
}

Test(outfile, regular_file_is_replaced_whole_and_only_at_commit, .init = cli_setup,
     .fini = cli_teardown)
{
    char path[128], text[256];
    cli_path(path, sizeof path, "metrics.jsonl");
    put(path, "old\n");
    tm_outfile *o;
    cr_assert_eq(tm_outfile_open(&o, path), TM_OK, "%s", tm_error_message());
    FILE *f = tm_outfile_stream(o);
    cr_assert_not_null(f);
    fputs("new line 1\n", f);
    fflush(f);
    cli_slurp(path, text, sizeof text);
    cr_expect_str_eq(text, "old\n", "the target changed before the commit");
    cr_expect_eq(cli_temps_left(), 1, "the temporary file is beside the target");
    fputs("new line 2\n", f);
    cr_assert_eq(tm_outfile_commit(o), TM_OK, "%s", tm_error_message());
    cli_slurp(path, text, sizeof text);
    cr_expect_str_eq(text, "new line 1\nnew line 2\n");
    cr_expect_eq(cli_temps_left(), 0);
}

Test(outfile, abandoned_file_leaves_the_target_and_no_temporary, .init = cli_setup,
     .fini = cli_teardown)
{
    char path[128], fresh[128], text[64];
    cli_path(path, sizeof path, "ckpt");
    cli_path(fresh, sizeof fresh, "never");
    put(path, "kept");
    tm_outfile *o, *p;
    cr_assert_eq(tm_outfile_open(&o, path), TM_OK);
    cr_assert_eq(tm_outfile_open(&p, fresh), TM_OK);
    fputs("partial", tm_outfile_stream(o));
    fputs("partial", tm_outfile_stream(p));
    tm_outfile_abandon(o);
    tm_outfile_abandon(p);
    tm_outfile_abandon(NULL);
    cli_slurp(path, text, sizeof text);
    cr_expect_str_eq(text, "kept");
    cr_expect_eq(access(fresh, F_OK), -1, "an abandoned new file exists");
    cr_expect_eq(cli_temps_left(), 0);
}

Test(outfile, symlink_is_written_through_to_its_target, .init = cli_setup, .fini = cli_teardown)
{
    char real[128], link[128], chain[128], dangling[128], made[128], text[64];
    cli_path(real, sizeof real, "real.json");
    cli_path(link, sizeof link, "link.json");
    cli_path(chain, sizeof chain, "chain.json");
    cli_path(dangling, sizeof dangling, "dangling.json");
    cli_path(made, sizeof made, "made-by-link.json");
    put(real, "old");
    cr_assert_eq(symlink("real.json", link), 0); /* relative, resolved against dir */
    cr_assert_eq(symlink(link, chain), 0);       /* a link to a link */
    cr_assert_eq(symlink(made, dangling), 0);    /* points at nothing yet */
    cr_assert_eq(write_text(chain, "new"), TM_OK, "%s", tm_error_message());
    struct stat st;
    cr_assert_eq(lstat(link, &st), 0);
    cr_expect(S_ISLNK(st.st_mode), "the link was replaced by a file");
    cr_assert_eq(lstat(chain, &st), 0);
    cr_expect(S_ISLNK(st.st_mode), "the link to the link was replaced by a file");
    cli_slurp(real, text, sizeof text);
    cr_expect_str_eq(text, "new");
    cr_assert_eq(write_text(dangling, "created"), TM_OK, "%s", tm_error_message());
    cr_assert_eq(lstat(dangling, &st), 0);
    cr_expect(S_ISLNK(st.st_mode));
    cli_slurp(made, text, sizeof text);
    cr_expect_str_eq(text, "created");
    cr_expect_eq(cli_temps_left(), 0);
}

/* A character device node in dir: a copy of /dev/null (1, 3) or /dev/full
 * (1, 7) made with mknod; without the privilege for that (not root), the
 * system's own node. */
static void device_node(char *path, size_t n, const char *name, unsigned minor)
{
    cli_path(path, n, name);
    if (mknod(path, S_IFCHR | 0666, makedev(1, minor)) == 0) return;
    cr_assert_eq(errno, EPERM, "mknod %s: %s", path, strerror(errno));
    snprintf(path, n, "/dev/%s", minor == 3 ? "null" : "full");
}

Test(outfile, device_node_is_written_in_place_never_replaced, .init = cli_setup,
     .fini = cli_teardown)
{
    char null[128], full[128];
    device_node(null, sizeof null, "null", 3);
    device_node(full, sizeof full, "full", 7);
    cr_expect_eq(tm_outfile_check(null), TM_OK, "%s", tm_error_message());
    cr_expect_eq(write_text(null, "into the void\n"), TM_OK, "%s", tm_error_message());
    struct stat st;
    cr_assert_eq(lstat(null, &st), 0);
    cr_expect(S_ISCHR(st.st_mode), "%s is no longer a device node", null);
    cr_expect_eq(st.st_rdev, makedev(1, 3));
    /* /dev/full refuses every write: the error is reported, and the node
     * stays what it was. */
    int rc = write_text(full, "no room\n");
    cr_expect_eq(rc, TM_EIO);
    cr_expect(strstr(tm_error_message(), "No space left on device") != NULL, "%s",
              tm_error_message());
    cr_assert_eq(lstat(full, &st), 0);
    cr_expect(S_ISCHR(st.st_mode), "%s is no longer a device node", full);
    cr_expect_eq(cli_temps_left(), 0);
}

Test(outfile, fifo_gets_every_line_in_order_through_one_open, .init = cli_setup,
     .fini = cli_teardown, .timeout = 60)
{
    char fifo[128];
    cli_path(fifo, sizeof fifo, "pipe");
    cr_assert_eq(mkfifo(fifo, 0666), 0);
    /* Checking opens nothing: with no reader an open for writing would
     * block here, and the timeout would fail the test. */
    cr_expect_eq(tm_outfile_check(fifo), TM_OK, "%s", tm_error_message());
    static cli_reader r;
    memset(&r, 0, sizeof r);
    snprintf(r.path, sizeof r.path, "%s", fifo);
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, cli_read_fifo, &r), 0);
    tm_outfile *o;
    cr_assert_eq(tm_outfile_open(&o, fifo), TM_OK, "%s", tm_error_message());
    FILE *f = tm_outfile_stream(o);
    for (int i = 0; i < 2000; i++) {
        fprintf(f, "line %d\n", i);
        if (i % 500 == 0) fflush(f); /* the reader sees the lines as they come */
    }
    cr_assert_eq(tm_outfile_commit(o), TM_OK, "%s", tm_error_message());
    pthread_join(t, NULL);
    cr_expect(r.opened);
    int expect = 0, ok = 1;
    for (char *line = r.got; *line; line = strchr(line, '\n') + 1, expect++) {
        int k;
        if (sscanf(line, "line %d", &k) != 1 || k != expect) {
            ok = 0;
            break;
        }
    }
    cr_expect(ok && expect == 2000, "the reader got %d lines in order of 2000", expect);
    struct stat st;
    cr_assert_eq(lstat(fifo, &st), 0);
    cr_expect(S_ISFIFO(st.st_mode), "the FIFO was replaced");
    cr_expect_eq(cli_temps_left(), 0);
}

Test(outfile, bad_paths_are_refused_with_a_message, .init = cli_setup, .fini = cli_teardown)
{
    char missing[128], sub[128];
    cli_path(missing, sizeof missing, "no-such-dir/x.json");
    cli_path(sub, sizeof sub, "sub");
    cr_assert_eq(mkdir(sub, 0755), 0);
    tm_outfile *o = (tm_outfile *)&o;
    cr_expect_eq(tm_outfile_check(""), TM_EINVAL);
    cr_expect(strstr(tm_error_message(), "empty name") != NULL, "%s", tm_error_message());
    cr_expect_eq(tm_outfile_open(&o, ""), TM_EINVAL);
    cr_expect_null(o);
    cr_expect_eq(tm_outfile_check(missing), TM_EIO);
    cr_expect(strstr(tm_error_message(), "no-such-dir does not exist") != NULL, "%s",
              tm_error_message());
    cr_expect_eq(tm_outfile_check(sub), TM_EIO);
    cr_expect(strstr(tm_error_message(), "is a directory") != NULL, "%s", tm_error_message());
    cr_expect_eq(tm_outfile_open(&o, sub), TM_EIO);
    cr_expect_eq(cli_temps_left(), 0);
}

/* Runs tm_outfile_check(path) in a child process without root's power to
 * write anywhere: as root the child becomes the unprivileged user nobody
 * (65534), because a read-only directory stays writable for root (which is
 * why a directory's mode alone cannot be trusted and the check creates a
 * file for real). Returns the child's status code (or -100 on trouble). */
static int check_unprivileged(const char *path)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        if (geteuid() == 0 && (setgroups(0, NULL) != 0 || setgid(65534) != 0 || setuid(65534) != 0))
            _exit(100);
        _exit(-tm_outfile_check(path));
    }
    int status;
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) return -100;
    return WEXITSTATUS(status) == 100 ? -100 : -WEXITSTATUS(status);
}

Test(outfile, read_only_directory_and_file_are_refused, .init = cli_setup, .fini = cli_teardown)
{
    char ro[128], in_ro[128], ro_file[128], ok[128];
    cli_path(ro, sizeof ro, "ro");
    cli_path(in_ro, sizeof in_ro, "ro/x.safetensors");
    cli_path(ro_file, sizeof ro_file, "read-only.json");
    cli_path(ok, sizeof ok, "writable");
    cr_assert_eq(mkdir(ro, 0555), 0);
    chmod(ro, 0555); /* whatever the umask */
    put(ro_file, "{}");
    chmod(ro_file, 0444);
    cr_assert_eq(mkdir(ok, 0777), 0);
    chmod(ok, 0777);
    cr_expect_eq(check_unprivileged(in_ro), TM_EIO, "a read-only directory was accepted");
    cr_expect_eq(check_unprivileged(ro_file), TM_EIO, "a read-only file was accepted");
    char in_ok[160];
    snprintf(in_ok, sizeof in_ok, "%s/x.json", ok);
    cr_expect_eq(check_unprivileged(in_ok), TM_OK, "a writable directory was refused");
    cr_expect_eq(cli_temps_left(), 0);
}

Test(outfile, discard_removes_every_live_temporary, .init = cli_setup, .fini = cli_teardown)
{
    char a[128], b[128];
    cli_path(a, sizeof a, "a.json");
    cli_path(b, sizeof b, "b.json");
    tm_outfile *oa, *ob;
    cr_assert_eq(tm_outfile_open(&oa, a), TM_OK);
    cr_assert_eq(tm_outfile_open(&ob, b), TM_OK);
    fputs("a", tm_outfile_stream(oa));
    fputs("b", tm_outfile_stream(ob));
    fflush(NULL);
    cr_expect_eq(cli_temps_left(), 2);
    tm_outfile_discard_temps();
    cr_expect_eq(cli_temps_left(), 0);
    tm_outfile_abandon(oa);
    tm_outfile_abandon(ob);
    cr_expect_eq(access(a, F_OK), -1);
}
