/* Suite `text`: text corpora and their windows (strategies/data.h): files
 * concatenated in the order given, the default corpus (Debian's fortunes:
 * regular files, no .dat index, no symlinks, sorted bytewise), bad input
 * refused naming the file, the corpus hash, windows of T + 1 bytes at
 * stride T, and the seeded synthetic source a model can learn. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/status.h"
#include "strategies/data.h"

static char dir[64];

static void make_dir(void)
{
    snprintf(dir, sizeof dir, "/tmp/tm_text_XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void remove_dir(void)
{
    DIR *d = opendir(dir);
    if (d == NULL) return;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (e->d_name[0] == '.') continue;
        char p[512];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (rmdir(p) != 0) unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

TestSuite(text, .init = make_dir, .fini = remove_dir);

/* dir/name holding n bytes; returns the path (static storage per call). */
static const char *put_file(const char *name, const void *bytes, size_t n)
{
    static char paths[8][512];
    static int next;
    char *p = paths[next++ % 8];
    snprintf(p, 512, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    cr_assert_not_null(f, "cannot write %s", p);
    cr_assert_eq(fwrite(bytes, 1, n, f), n);
    fclose(f);
    return p;
}

/* ---- tm_corpus_load --------------------------------------------------- */

Test(text, listed_files_are_concatenated_in_order)
{
    const uint8_t binary[] = {0, 255, '\n', 0x80, 'x', 0};
    const char *a = put_file("a.txt", "hello\n", 6);
    const char *b = put_file("b.bin", binary, sizeof binary);
    const char *c = put_file("zz", "last", 4);
    char spec[1600];
    snprintf(spec, sizeof spec, "%s,%s,%s", c, a, b);
    tm_corpus corpus;
    cr_assert_eq(tm_corpus_load(&corpus, spec), TM_OK, "%s", tm_error_message());
    uint8_t want[4 + 6 + sizeof binary];
    memcpy(want, "last", 4);
    memcpy(want + 4, "hello\n", 6);
    memcpy(want + 10, binary, sizeof binary);
    cr_assert_eq(corpus.len, sizeof want);
    cr_expect(memcmp(corpus.bytes, want, sizeof want) == 0, "bytes out of order");
    cr_expect_str_eq(corpus.files, "zz,a.txt,b.bin", "the files by base name, as given");
    /* The hash is the bytes': one file of the same bytes has it, one byte
     * fewer changes it. */
    tm_corpus whole, shorter;
    cr_assert_eq(tm_corpus_load(&whole, put_file("whole", want, sizeof want)), TM_OK);
    cr_assert_eq(tm_corpus_load(&shorter, put_file("shorter", want, sizeof want - 1)), TM_OK);
    cr_expect_eq(corpus.hash, whole.hash);
    cr_expect_neq(corpus.hash, shorter.hash);
    tm_corpus_free(&whole);
    tm_corpus_free(&shorter);
    tm_corpus_free(&corpus);
    cr_expect_null(corpus.bytes);
    /* One file on its own. */
    cr_assert_eq(tm_corpus_load(&corpus, a), TM_OK);
    cr_expect(corpus.len == 6 && memcmp(corpus.bytes, "hello\n", 6) == 0);
    cr_expect_str_eq(corpus.files, "a.txt");
    tm_corpus_free(&corpus);
}

/* FNV-1a, 64 bits, as its authors define it: offset basis
 * 14695981039346656037, prime 2^40 + 2^8 + 0xb3. */
static uint64_t fnv1a(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325u;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3u;
    }
    return h;
}

Test(text, hash_is_fnv1a_64)
{
    /* The published test vectors of FNV-1a 64 (data.h promises that
     * hash), then a corpus of two files. */
    struct { const char *text; uint64_t hash; } cases[] = {
        {"a", 0xaf63dc4c8601ec8cu},
        {"foobar", 0x85944171f73967e8u},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tm_corpus c;
        cr_assert_eq(tm_corpus_load(&c, put_file("v", cases[i].text, strlen(cases[i].text))),
                     TM_OK);
        cr_expect_eq(c.hash, cases[i].hash, "\"%s\": %016llx, FNV-1a is %016llx", cases[i].text,
                     (unsigned long long)c.hash, (unsigned long long)cases[i].hash);
        tm_corpus_free(&c);
    }
    char spec[1200];
    snprintf(spec, sizeof spec, "%s,", put_file("one", "first\n", 6));
    snprintf(spec + strlen(spec), sizeof spec - strlen(spec), "%s", put_file("two", "second", 6));
    tm_corpus c;
    cr_assert_eq(tm_corpus_load(&c, spec), TM_OK, "%s", tm_error_message());
    cr_expect_eq(c.hash, fnv1a((const uint8_t *)"first\nsecond", 12));
    tm_corpus_free(&c);
    tm_corpus synth;
    cr_assert_eq(tm_corpus_synthetic(&synth, 1000, 1, 0), TM_OK);
    cr_expect_eq(synth.hash, fnv1a(synth.bytes, synth.len));
    tm_corpus_free(&synth);
}

static int by_bytes(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

Test(text, default_corpus_is_the_fortunes_files_sorted_bytewise, .timeout = 60)
{
    /* CI installs Debian's fortunes package (scripts/deps.sh): a missing
     * directory is a broken setup, not a reason to skip. */
    DIR *d = opendir(TM_CORPUS_DEFAULT_DIR);
    cr_assert_not_null(d, "%s is missing: apt-get install fortunes", TM_CORPUS_DEFAULT_DIR);
    char *names[512];
    int n = 0, skipped_links = 0, skipped_dat = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        char p[600];
        snprintf(p, sizeof p, "%s/%s", TM_CORPUS_DEFAULT_DIR, e->d_name);
        struct stat sb;
        cr_assert_eq(lstat(p, &sb), 0);
        size_t len = strlen(e->d_name);
        if (S_ISLNK(sb.st_mode)) skipped_links++;
        else if (len > 4 && strcmp(e->d_name + len - 4, ".dat") == 0) skipped_dat++;
        else if (S_ISREG(sb.st_mode) && e->d_name[0] != '.' && n < 512) names[n++] = strdup(p);
    }
    closedir(d);
    cr_assert_gt(n, 0);
    qsort(names, (size_t)n, sizeof *names, by_bytes);

    tm_corpus c;
    cr_assert_eq(tm_corpus_load(&c, NULL), TM_OK, "%s", tm_error_message());
    size_t off = 0, flen = 0;
    char *files = calloc(1, 64 * 1024);
    for (int i = 0; i < n; i++) {
        FILE *f = fopen(names[i], "rb");
        cr_assert_not_null(f);
        uint8_t buf[65536];
        size_t got;
        int same = 1;
        while ((got = fread(buf, 1, sizeof buf, f)) > 0) {
            same = same && off + got <= c.len && memcmp(c.bytes + off, buf, got) == 0;
            off += got;
        }
        fclose(f);
        cr_expect(same, "%s is not where the sorted order puts it", names[i]);
        flen += (size_t)snprintf(files + flen, 64 * 1024 - flen, "%s%s", i ? "," : "",
                                 strrchr(names[i], '/') + 1);
        free(names[i]);
    }
    cr_expect_eq(c.len, off, "%zu bytes, the files hold %zu", c.len, off);
    cr_expect_str_eq(c.files, files);
    cr_expect(c.len > 2000000 && c.len < 4000000, "%zu bytes: about 2.6 MB of English", c.len);
    printf("text: default corpus: %d files, %zu bytes (%d symlinks, %d .dat skipped)\n", n, c.len,
           skipped_links, skipped_dat);
    free(files);
    tm_corpus_free(&c);
}

Test(text, bad_input_is_refused_naming_the_file)
{
    const char *good = put_file("good", "some text", 9);
    const char *empty = put_file("empty", "", 0);
    const char *empty2 = put_file("empty2", "", 0);
    char sub[128], missing[128], spec[1600];
    snprintf(sub, sizeof sub, "%s/subdir", dir);
    cr_assert_eq(mkdir(sub, 0700), 0);
    snprintf(missing, sizeof missing, "%s/no-such-file", dir);
    struct { const char *spec; int status; const char *names; } cases[] = {
        {missing, TM_EIO, missing},
        {sub, TM_EIO, sub},
        {empty, TM_EINVAL, empty},
        {NULL, TM_EIO, missing}, /* good, then missing */
        {NULL, TM_EINVAL, empty2}, /* two empty files */
        {",", TM_EINVAL, "--text"},
    };
    snprintf(spec, sizeof spec, "%s,%s", good, missing);
    cases[3].spec = strdup(spec);
    snprintf(spec, sizeof spec, "%s,%s", empty, empty2);
    cases[4].spec = strdup(spec);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tm_corpus c;
        memset(&c, 0xff, sizeof c);
        int st = tm_corpus_load(&c, cases[i].spec);
        cr_expect_eq(st, cases[i].status, "case %zu (%s): status %d", i, cases[i].spec, st);
        const char *msg = tm_error_message();
        cr_expect(strstr(msg, cases[i].names) != NULL && strchr(msg, '\n') == NULL,
                  "case %zu: the message must name %s in one line: %s", i, cases[i].names, msg);
        cr_expect(c.bytes == NULL && c.files == NULL && c.len == 0, "case %zu: corpus left set",
                  i);
    }
    free((char *)cases[3].spec);
    free((char *)cases[4].spec);
    /* An empty file among others is no error. */
    snprintf(spec, sizeof spec, "%s,%s", empty, good);
    tm_corpus c;
    cr_expect_eq(tm_corpus_load(&c, spec), TM_OK, "%s", tm_error_message());
    cr_expect_eq(c.len, 9);
    tm_corpus_free(&c);
}

/* ---- windows ---------------------------------------------------------------- */

Test(text, windows_are_t_plus_one_bytes_at_stride_t)
{
    uint8_t text[200];
    for (int i = 0; i < 200; i++) text[i] = (uint8_t)(i * 7 + 3);
    const struct { size_t len; int T; int n; } cases[] = {
        {6, 5, 1}, {10, 5, 1}, {11, 5, 2}, {200, 7, 28}, {200, 1, 199}, {199, 99, 2}, {200, 199, 1},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        int T = cases[k].T;
        tm_data d;
        cr_assert_eq(tm_data_text(&d, text, cases[k].len, T, "text"), TM_OK, "%s",
                     tm_error_message());
        cr_expect_eq(d.n, cases[k].n, "len %zu T %d: %d windows", cases[k].len, T, d.n);
        cr_expect(d.kind == TM_DATA_TEXT && d.rows == T && d.width == 1 && d.n_classes == 256);
        int32_t *in = malloc(sizeof(int32_t) * (size_t)T);
        int *tg = malloc(sizeof(int) * (size_t)T);
        for (int i = 0; i < d.n; i++) {
            tm_data_input(&d, i, in);
            tm_data_targets(&d, i, tg);
            for (int t = 0; t < T; t++) {
                size_t at = (size_t)i * T + t;
                cr_expect(in[t] == text[at] && tg[t] == text[at + 1],
                          "len %zu T %d window %d [%d]: in %d target %d, want %d %d",
                          cases[k].len, T, i, t, in[t], tg[t], text[at], text[at + 1]);
            }
        }
        free(in);
        free(tg);
    }
}

Test(text, a_split_shorter_than_a_window_is_refused)
{
    const uint8_t text[8] = "abcdefg";
    tm_data d;
    cr_expect_eq(tm_data_text(&d, text, 5, 5, "validation split"), TM_EINVAL);
    const char *msg = tm_error_message();
    cr_expect(strstr(msg, "validation split") && strstr(msg, "5 bytes") &&
                  strstr(msg, "--context 5"),
              "%s", msg);
    cr_expect_eq(tm_data_text(&d, text, 0, 1, "training split"), TM_EINVAL);
    cr_expect(strstr(tm_error_message(), "training split") != NULL);
    cr_expect_eq(tm_data_text(&d, text, 7, 0, "text"), TM_EINVAL);
    cr_expect_eq(tm_data_text(&d, text, 6, 5, "text"), TM_OK);
    cr_expect_eq(d.n, 1);
}

Test(text, data_head_takes_the_first_windows)
{
    uint8_t text[101];
    for (int i = 0; i < 101; i++) text[i] = (uint8_t)i;
    tm_data d, h;
    cr_assert_eq(tm_data_text(&d, text, 101, 10, "text"), TM_OK);
    h = tm_data_head(&d, 4);
    cr_expect(h.n == 4 && h.text == d.text && h.rows == 10);
    int32_t a[10], b[10];
    tm_data_input(&h, 3, a);
    tm_data_input(&d, 3, b);
    cr_expect(memcmp(a, b, sizeof a) == 0);
    cr_expect_eq(tm_data_head(&d, 1000).n, 10, "more than there are: all of them");
}

/* ---- the synthetic source ------------------------------------------------- */

Test(text, synthetic_text_is_seeded_and_predictable)
{
    enum { N = 200000 };
    tm_corpus a, b, other_split, other_seed;
    cr_assert_eq(tm_corpus_synthetic(&a, N, 42, 0), TM_OK);
    cr_assert_eq(tm_corpus_synthetic(&b, N, 42, 0), TM_OK);
    cr_assert_eq(tm_corpus_synthetic(&other_split, N, 42, 1), TM_OK);
    cr_assert_eq(tm_corpus_synthetic(&other_seed, N, 43, 0), TM_OK);
    cr_expect(a.len == N && memcmp(a.bytes, b.bytes, N) == 0 && a.hash == b.hash,
              "the same seed gave other bytes");
    cr_expect(memcmp(a.bytes, other_split.bytes, 1000) != 0, "the splits repeat each other");
    cr_expect(memcmp(a.bytes, other_seed.bytes, 1000) != 0, "seeds 42 and 43 agree");
    cr_expect_str_eq(a.files, "synthetic:42");
    cr_expect(a.hash != other_split.hash && a.hash != other_seed.hash, "other bytes, same hash");

    /* Bigram counts of split 0 (add-one smoothed) predict split 1 — the
     * same source — far better than a uniform guess (ln 256 = 5.55 nats)
     * or the byte frequencies alone. */
    static double pair[256][256], row[256], uni[256];
    for (int i = 0; i < 256; i++) {
        row[i] = 256;
        uni[i] = 1;
        for (int j = 0; j < 256; j++) pair[i][j] = 1;
    }
    for (size_t i = 1; i < N; i++) {
        pair[a.bytes[i - 1]][a.bytes[i]]++;
        row[a.bytes[i - 1]]++;
        uni[a.bytes[i]]++;
    }
    double h1 = 0, h0 = 0;
    for (size_t i = 1; i < N; i++) {
        uint8_t p = other_split.bytes[i - 1], x = other_split.bytes[i];
        h1 -= log(pair[p][x] / row[p]) / (N - 1);
        h0 -= log(uni[x] / (N + 256.0)) / (N - 1);
    }
    printf("text: synthetic source: %.3f nats/byte order-1, %.3f order-0, %.3f uniform\n", h1,
           h0, log(256));
    cr_expect_lt(h1, 3.0, "order-1 cross-entropy %.3f nats/byte", h1);
    cr_expect_lt(h1, h0 - 2, "order-1 %.3f against order-0 %.3f", h1, h0);
    tm_corpus_free(&a);
    tm_corpus_free(&b);
    tm_corpus_free(&other_split);
    tm_corpus_free(&other_seed);
}
