#include "strategies/data.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "runtime/status.h"
#include "strategies/rng.h"

void tm_data_images(tm_data *d, const tm_dataset *images)
{
    *d = (tm_data){.kind = TM_DATA_IMAGES, .n = images->n, .rows = 1, .width = images->dim,
                   .n_classes = images->n_classes, .images = images};
}

int tm_data_text(tm_data *d, const uint8_t *text, size_t len, int T, const char *what)
{
    memset(d, 0, sizeof *d);
    if (T < 1 || len < (size_t)T + 1)
        return tm_error(TM_EINVAL, "the %s has %zu bytes, fewer than one window of --context %d "
                        "+ 1", what, len, T);
    size_t n = (len - 1) / (size_t)T;
    if (n > (size_t)INT32_MAX) n = INT32_MAX;
    *d = (tm_data){.kind = TM_DATA_TEXT, .n = (int)n, .rows = T, .width = 1, .n_classes = 256,
                   .text = text, .text_len = len};
    return TM_OK;
}

tm_data tm_data_head(const tm_data *d, int n)
{
    tm_data h = *d;
    if (n < h.n) h.n = n;
    return h;
}

void tm_data_input(const tm_data *d, int i, void *dst)
{
    if (d->kind == TM_DATA_IMAGES) {
        size_t dim = (size_t)d->width;
        memcpy(dst, d->images->images + (size_t)i * dim, dim * sizeof(float));
        return;
    }
    const uint8_t *w = d->text + (size_t)i * (size_t)d->rows;
    int32_t *x = dst;
    for (int t = 0; t < d->rows; t++) x[t] = w[t];
}

void tm_data_targets(const tm_data *d, int i, int *dst)
{
    if (d->kind == TM_DATA_IMAGES) {
        dst[0] = d->images->labels[i];
        return;
    }
    const uint8_t *w = d->text + (size_t)i * (size_t)d->rows + 1;
    for (int t = 0; t < d->rows; t++) dst[t] = w[t];
}

/* ---- corpora ------------------------------------------------------------ */

static uint64_t fnv1a(const uint8_t *p, size_t n)
{
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* The default corpus's file list: "dir/name" for each regular file. */
static int default_files(char ***out, int *n_out)
{
    DIR *dir = opendir(TM_CORPUS_DEFAULT_DIR);
    if (dir == NULL)
        return tm_error(TM_EIO, "cannot read the default corpus %s: %s (install Debian's "
                        "fortunes package, or give --text)", TM_CORPUS_DEFAULT_DIR,
                        strerror(errno));
    char **names = NULL;
    int n = 0, st = TM_OK;
    for (struct dirent *e; st == TM_OK && (e = readdir(dir)) != NULL;) {
        if (e->d_name[0] == '.' || ends_with(e->d_name, ".dat")) continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", TM_CORPUS_DEFAULT_DIR, e->d_name);
        struct stat sb;
        if (lstat(path, &sb) != 0 || !S_ISREG(sb.st_mode)) continue;
        char **grown = realloc(names, sizeof *names * (size_t)(n + 1));
        char *copy = strdup(path);
        if (grown == NULL || copy == NULL) {
            free(copy);
            names = grown ? grown : names;
            st = tm_error(TM_EHOSTMEM, "cannot list the corpus files");
            break;
        }
        names = grown;
        names[n++] = copy;
    }
    closedir(dir);
    if (st == TM_OK && n == 0)
        st = tm_error(TM_EINVAL, "the default corpus %s has no files", TM_CORPUS_DEFAULT_DIR);
    if (st != TM_OK) {
        for (int i = 0; i < n; i++) free(names[i]);
        free(names);
        return st;
    }
    qsort(names, (size_t)n, sizeof *names, by_name);
    *out = names;
    *n_out = n;
    return TM_OK;
}

/* The comma-separated list in spec, split in place into paths. */
static int listed_files(char *spec, char ***out, int *n_out)
{
    int n = 1;
    for (const char *p = spec; *p; p++) n += *p == ',';
    char **names = calloc((size_t)n, sizeof *names);
    if (names == NULL) return tm_error(TM_EHOSTMEM, "cannot list the corpus files");
    int k = 0;
    for (char *p = spec, *save = NULL, *tok; (tok = strtok_r(p, ",", &save)) != NULL; p = NULL)
        names[k++] = tok;
    if (k == 0) {
        free(names);
        return tm_error(TM_EINVAL, "--text names no file");
    }
    *out = names;
    *n_out = k;
    return TM_OK;
}

/* Appends path's bytes to c (growing c->bytes), its base name to c->files. */
static int append_file(tm_corpus *c, size_t *cap, const char *path)
{
    struct stat sb;
    if (stat(path, &sb) != 0)
        return tm_error(TM_EIO, "cannot read text file %s: %s", path, strerror(errno));
    if (!S_ISREG(sb.st_mode))
        return tm_error(TM_EIO, "text file %s is not a regular file", path);
    if ((size_t)sb.st_size > TM_CORPUS_MAX_BYTES - c->len)
        return tm_error(TM_EINVAL, "the corpus passes %zu bytes at %s", TM_CORPUS_MAX_BYTES, path);
    FILE *f = fopen(path, "rb");
    if (f == NULL) return tm_error(TM_EIO, "cannot read text file %s: %s", path, strerror(errno));
    size_t want = c->len + (size_t)sb.st_size;
    if (want > *cap) {
        size_t grow = *cap * 2 > want ? *cap * 2 : want;
        uint8_t *b = realloc(c->bytes, grow ? grow : 1);
        if (b == NULL) {
            fclose(f);
            return tm_error(TM_EHOSTMEM, "cannot hold the corpus (%zu bytes)", want);
        }
        c->bytes = b;
        *cap = grow;
    }
    size_t got = fread(c->bytes + c->len, 1, (size_t)sb.st_size, f);
    int err = ferror(f);
    fclose(f);
    if (err || got != (size_t)sb.st_size)
        return tm_error(TM_EIO, "cannot read text file %s: short read", path);
    c->len += got;
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    size_t have = c->files ? strlen(c->files) : 0, add = strlen(base) + 2;
    char *names = realloc(c->files, have + add);
    if (names == NULL) return tm_error(TM_EHOSTMEM, "cannot list the corpus files");
    snprintf(names + have, add, "%s%s", have ? "," : "", base);
    c->files = names;
    return TM_OK;
}

int tm_corpus_load(tm_corpus *c, const char *spec)
{
    memset(c, 0, sizeof *c);
    char **paths = NULL, *copy = NULL;
    int n = 0, st;
    if (spec == NULL) {
        st = default_files(&paths, &n);
    } else {
        copy = strdup(spec);
        st = copy ? listed_files(copy, &paths, &n) : tm_error(TM_EHOSTMEM, "out of memory");
    }
    size_t cap = 0;
    for (int i = 0; st == TM_OK && i < n; i++) st = append_file(c, &cap, paths[i]);
    if (st == TM_OK && c->len == 0)
        st = tm_error(TM_EINVAL, "the text %s is empty", spec ? spec : TM_CORPUS_DEFAULT_DIR);
    if (spec == NULL)
        for (int i = 0; i < n; i++) free(paths[i]);
    free(paths);
    free(copy);
    if (st != TM_OK) {
        tm_corpus_free(c);
        return st;
    }
    c->hash = fnv1a(c->bytes, c->len);
    return TM_OK;
}

int tm_corpus_synthetic(tm_corpus *c, size_t len, uint64_t seed, int split)
{
    memset(c, 0, sizeof *c);
    enum { SUCC = 4 };
    c->bytes = malloc(len ? len : 1);
    c->files = malloc(64);
    if (c->bytes == NULL || c->files == NULL) {
        tm_corpus_free(c);
        return tm_error(TM_EHOSTMEM, "cannot allocate %zu bytes of synthetic text", len);
    }
    /* The source, shared by both splits: byte s is followed by one of its
     * SUCC successors nine times in ten, by any byte otherwise. */
    uint8_t succ[256][SUCC];
    tm_rng rs = tm_rng_seed(seed, 2999u);
    for (int s = 0; s < 256; s++)
        for (int k = 0; k < SUCC; k++) succ[s][k] = (uint8_t)tm_rng_below(&rs, 256);
    tm_rng r = tm_rng_seed(seed, 3000u + (uint64_t)split);
    uint8_t prev = (uint8_t)tm_rng_below(&r, 256);
    for (size_t i = 0; i < len; i++) {
        uint32_t u = tm_rng_below(&r, 10 * SUCC);
        prev = u < 9 * SUCC ? succ[prev][u % SUCC] : (uint8_t)tm_rng_below(&r, 256);
        c->bytes[i] = prev;
    }
    c->len = len;
    snprintf(c->files, 64, "synthetic:%llu", (unsigned long long)seed);
    c->hash = fnv1a(c->bytes, c->len);
    return TM_OK;
}

void tm_corpus_free(tm_corpus *c)
{
    free(c->bytes);
    free(c->files);
    memset(c, 0, sizeof *c);
}
