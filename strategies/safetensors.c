#include "strategies/safetensors.h"

#include "runtime/status.h"
#include "strategies/json.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Tensor bytes go to and from disk as they are in memory, which is right only
 * because the format's byte order is the host's. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "safetensors data is little-endian; this host is not");

static const struct {
    const char *name;
    int bits;
} dtypes[TM_ST_DTYPE_COUNT] = {
#define TM__ST_DTYPE_ROW(name, bits) {#name, bits},
    TM_ST_DTYPE_MAP(TM__ST_DTYPE_ROW)
#undef TM__ST_DTYPE_ROW
};

const char *tm_st_dtype_name(tm_st_dtype dtype)
{
    return (unsigned)dtype < TM_ST_DTYPE_COUNT ? dtypes[dtype].name : "?";
}

int tm_st_dtype_bits(tm_st_dtype dtype)
{
    return (unsigned)dtype < TM_ST_DTYPE_COUNT ? dtypes[dtype].bits : 0;
}

/* Bytes held by a tensor of this dtype and shape, or -1 if the count
 * overflows or is not a whole number of bytes (sub-byte dtypes). */
static int64_t tensor_bytes(tm_st_dtype dtype, int ndim, const uint64_t *shape)
{
    uint64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] != 0 && n > UINT64_MAX / shape[i]) return -1;
        n *= shape[i];
    }
    uint64_t bits = (uint64_t)tm_st_dtype_bits(dtype);
    if (n > (uint64_t)INT64_MAX / bits || n * bits % 8 != 0) return -1;
    return (int64_t)(n * bits / 8);
}

/* "[128, 256]" into buf, cut short with "..." if it does not fit. */
static const char *shape_str(char *buf, size_t size, int ndim, const uint64_t *shape)
{
    size_t k = (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < ndim && k < size; i++)
        k += (size_t)snprintf(buf + k, size - k, "%s%" PRIu64, i ? ", " : "", shape[i]);
    if (k < size)
        snprintf(buf + k, size - k, "]");
    else if (size > 4)
        strcpy(buf + size - 4, "...");
    return buf;
}

/* ---- writer ----------------------------------------------------------- */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The first name that occurs twice among n, or NULL. */
static const char *duplicate_name(const char **names, int n)
{
    qsort(names, (size_t)n, sizeof *names, cmp_str);
    for (int i = 1; i < n; i++)
        if (strcmp(names[i - 1], names[i]) == 0) return names[i];
    return NULL;
}

static int check_args(const char *path, const tm_st_tensor *t, int n, const tm_st_meta *m,
                      int n_meta, int64_t *nbytes /* (n,) */)
{
    if (path == NULL || path[0] == '\0' || n < 0 || n_meta < 0 || (n > 0 && t == NULL) ||
        (n_meta > 0 && m == NULL))
        return tm_error(TM_EINVAL, "safetensors write: bad arguments");
    for (int i = 0; i < n; i++) {
        const char *name = t[i].name;
        if (name == NULL || !tm_json_utf8_valid(name, strlen(name)) ||
            !strcmp(name, "__metadata__"))
            return tm_error(TM_EINVAL, "%s: tensor %d: name is NULL, not UTF-8 or reserved", path,
                            i);
        if ((unsigned)t[i].dtype >= TM_ST_DTYPE_COUNT || t[i].ndim < 0 ||
            (t[i].ndim > 0 && t[i].shape == NULL))
            return tm_error(TM_EINVAL, "%s: %s: bad dtype, ndim or shape", path, name);
        nbytes[i] = tensor_bytes(t[i].dtype, t[i].ndim, t[i].shape);
        if (nbytes[i] < 0 || (nbytes[i] > 0 && t[i].data == NULL))
            return tm_error(TM_EINVAL,
                            "%s: %s: size overflows, is not whole bytes, or data is NULL", path,
                            name);
    }
    for (int i = 0; i < n_meta; i++)
        if (m[i].key == NULL || m[i].value == NULL ||
            !tm_json_utf8_valid(m[i].key, strlen(m[i].key)) ||
            !tm_json_utf8_valid(m[i].value, strlen(m[i].value)))
            return tm_error(TM_EINVAL, "%s: metadata %d: key or value is NULL or not UTF-8", path,
                            i);

    int most = n > n_meta ? n : n_meta;
    const char **names = malloc((size_t)(most ? most : 1) * sizeof *names);
    if (names == NULL) return tm_error(TM_EHOSTMEM, "%s: out of host memory", path);
    for (int i = 0; i < n; i++) names[i] = t[i].name;
    const char *dup = duplicate_name(names, n);
    for (int i = 0; dup == NULL && i < n_meta; i++) names[i] = m[i].key;
    if (dup == NULL) dup = duplicate_name(names, n_meta);
    int st = TM_OK;
    if (dup) st = tm_error(TM_EINVAL, "%s: name \"%s\" given twice", path, dup);
    free(names);
    return st;
}

/* Writes the prepared header and the data into out's stream. */
static int write_file(tm_outfile *out, const tm_json_out *header, const tm_st_tensor *t,
                      const int *order, const int64_t *nbytes, int n)
{
    FILE *f = tm_outfile_stream(out);
    if (f == NULL) return TM_EIO;
    unsigned char len[8];
    for (int i = 0; i < 8; i++) len[i] = (unsigned char)((uint64_t)header->len >> (8 * i));
    fwrite(len, 1, 8, f);
    fwrite(header->data, 1, header->len, f);
    /* An empty tensor may have no data pointer at all: write nothing. */
    for (int i = 0; i < n; i++)
        if (nbytes[order[i]] > 0) fwrite(t[order[i]].data, 1, (size_t)nbytes[order[i]], f);
    return TM_OK;
}

int tm_safetensors_write(const char *path, const tm_st_tensor *t, int n, const tm_st_meta *m,
                         int n_meta)
{
    if (path == NULL) return tm_error(TM_EINVAL, "safetensors write: bad arguments");
    tm_outfile *out;
    TM_CHECK(tm_outfile_open(&out, path));
    int st = tm_safetensors_write_to(out, t, n, m, n_meta);
    if (st != TM_OK) {
        tm_outfile_abandon(out);
        return st;
    }
    return tm_outfile_commit(out);
}

int tm_safetensors_write_to(tm_outfile *out, const tm_st_tensor *t, int n, const tm_st_meta *m,
                            int n_meta)
{
    const char *path = out != NULL ? tm_outfile_path(out) : NULL;
    int64_t *nbytes = malloc((size_t)(n > 0 ? n : 1) * sizeof *nbytes);
    int *order = malloc((size_t)(n > 0 ? n : 1) * sizeof *order);
    uint64_t *offset = malloc((size_t)(n > 0 ? n : 1) * sizeof *offset);
    tm_json_out h = {0};
    int st = TM_OK;
    if (nbytes == NULL || order == NULL || offset == NULL) {
        st = tm_error(TM_EHOSTMEM, "%s: out of host memory", path ? path : "safetensors");
        goto done;
    }
    st = check_args(path, t, n, m, n_meta, nbytes);
    if (st != TM_OK) goto done;

    /* Data by decreasing element size, ties in the caller's order. */
    int k = 0;
    for (int bits = 64; bits > 0; bits--)
        for (int i = 0; i < n; i++)
            if (tm_st_dtype_bits(t[i].dtype) == bits) order[k++] = i;
    uint64_t pos = 0;
    for (int i = 0; i < n; i++) {
        offset[order[i]] = pos;
        pos += (uint64_t)nbytes[order[i]];
    }

    tm_json_out_raw(&h, "{", 1);
    if (n_meta > 0) {
        tm_json_out_raw(&h, "\"__metadata__\":{", 16);
        for (int i = 0; i < n_meta; i++) {
            if (i) tm_json_out_raw(&h, ",", 1);
            tm_json_out_string(&h, m[i].key);
            tm_json_out_raw(&h, ":", 1);
            tm_json_out_string(&h, m[i].value);
        }
        tm_json_out_raw(&h, "}", 1);
    }
    for (int i = 0; i < n; i++) {
        if (i || n_meta > 0) tm_json_out_raw(&h, ",", 1);
        tm_json_out_string(&h, t[i].name);
        tm_json_out_raw(&h, ":{\"dtype\":", 10);
        tm_json_out_string(&h, tm_st_dtype_name(t[i].dtype));
        tm_json_out_raw(&h, ",\"shape\":[", 10);
        for (int d = 0; d < t[i].ndim; d++) {
            if (d) tm_json_out_raw(&h, ",", 1);
            tm_json_out_uint(&h, t[i].shape[d]);
        }
        tm_json_out_raw(&h, "],\"data_offsets\":[", 18);
        tm_json_out_uint(&h, offset[i]);
        tm_json_out_raw(&h, ",", 1);
        tm_json_out_uint(&h, offset[i] + (uint64_t)nbytes[i]);
        tm_json_out_raw(&h, "]}", 2);
    }
    tm_json_out_raw(&h, "}", 1);
    /* Spaces up to a multiple of 8 bytes start the data 8-byte aligned. */
    while (!h.failed && h.len % 8 != 0) tm_json_out_raw(&h, " ", 1);
    if (h.failed) {
        st = tm_error(TM_EHOSTMEM, "%s: out of host memory for the header", path);
        goto done;
    }
    if (h.len > TM_ST_MAX_HEADER) {
        st = tm_error(TM_EINVAL, "%s: header of %zu bytes exceeds the %u-byte limit", path, h.len,
                      TM_ST_MAX_HEADER);
        goto done;
    }
    st = write_file(out, &h, t, order, nbytes, n);
done:
    tm_json_out_free(&h);
    free(nbytes);
    free(order);
    free(offset);
    return st;
}

/* ---- reader ----------------------------------------------------------- */

struct tm_st_file {
    char *path;           /* as given, for messages */
    unsigned char *bytes; /* the whole file */
    size_t size;          /* bytes in the file */
    tm_json_doc *doc;     /* parsed header; names and metadata point into it */
    tm_st_info *tensors;  /* (n_tensors,) in header order */
    int n_tensors;
    const tm_st_info **by_name; /* (n_tensors,) sorted by name, for lookup */
    uint64_t *dims;             /* every tensor's shape, back to back */
    tm_st_meta *meta;           /* (n_meta,) */
    int n_meta;
};

/* Records "<path>: <what>" as a TM_EFORMAT error. */
static int bad(const tm_st_file *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int bad(const tm_st_file *f, const char *fmt, ...)
{
    char what[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return tm_error(TM_EFORMAT, "%s: %s", f->path, what);
}

static int read_whole(tm_st_file *f)
{
    int fd = open(f->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return tm_error(TM_EIO, "%s: cannot open: %s", f->path, strerror(errno));
    struct stat sb;
    int st = TM_OK;
    if (fstat(fd, &sb) != 0)
        st = tm_error(TM_EIO, "%s: cannot stat: %s", f->path, strerror(errno));
    else if (!S_ISREG(sb.st_mode))
        st = tm_error(TM_EIO, "%s: not a regular file", f->path);
    else if ((f->bytes = malloc((size_t)sb.st_size + 1)) == NULL)
        st = tm_error(TM_EHOSTMEM, "%s: out of host memory for %jd bytes", f->path,
                      (intmax_t)sb.st_size);
    f->size = 0;
    while (st == TM_OK && f->size < (size_t)sb.st_size) {
        ssize_t k = read(fd, f->bytes + f->size, (size_t)sb.st_size - f->size);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0)
            st = tm_error(TM_EIO, "%s: read failed: %s", f->path, strerror(errno));
        else if (k == 0)
            st = tm_error(TM_EIO, "%s: file shrank while being read", f->path);
        else
            f->size += (size_t)k;
    }
    close(fd);
    return st;
}

static bool uint_array(const tm_json *v)
{
    if (v == NULL || v->type != TM_JSON_ARRAY) return false;
    for (const tm_json *e = v->child; e; e = e->next)
        if (e->type != TM_JSON_NUMBER || !e->is_uint) return false;
    return true;
}

/* Fills ti from the header entry e, checking everything that concerns this
 * tensor alone; dims has room for its shape. */
static int parse_tensor(tm_st_file *f, const tm_json *e, tm_st_info *ti, uint64_t *dims,
                        const unsigned char *data, uint64_t data_size)
{
    const char *name = e->key;
    if (e->key_len != strlen(name))
        return bad(f, "tensor name \"%s...\" contains a NUL character", name);
    if (e->type != TM_JSON_OBJECT) return bad(f, "tensor \"%s\": entry is not a JSON object", name);
    int st;
    const tm_json *dup = tm_json_duplicate_key(e, &st);
    if (st != TM_OK) return st;
    if (dup) return bad(f, "tensor \"%s\": key \"%s\" appears twice", name, dup->key);
    const tm_json *dt = tm_json_get(e, "dtype"), *sh = tm_json_get(e, "shape"),
                  *off = tm_json_get(e, "data_offsets");
    if (dt == NULL || sh == NULL || off == NULL)
        return bad(f, "tensor \"%s\": missing \"%s\"", name,
                   dt == NULL   ? "dtype"
                   : sh == NULL ? "shape"
                                : "data_offsets");
    if (dt->type != TM_JSON_STRING) return bad(f, "tensor \"%s\": dtype is not a string", name);
    int d = 0;
    while (d < TM_ST_DTYPE_COUNT && strcmp(dtypes[d].name, dt->str) != 0) d++;
    if (d == TM_ST_DTYPE_COUNT || dt->str_len != strlen(dt->str))
        return bad(f, "tensor \"%s\": unknown dtype \"%s\"", name, dt->str);
    if (!uint_array(sh))
        return bad(f, "tensor \"%s\": shape is not an array of non-negative integers", name);
    if (!uint_array(off) || off->count != 2)
        return bad(f, "tensor \"%s\": data_offsets is not [begin, end] in integers", name);
    ti->name = name;
    ti->dtype = (tm_st_dtype)d;
    ti->ndim = (int)sh->count;
    ti->shape = dims;
    for (const tm_json *x = sh->child; x; x = x->next) *dims++ = x->uint;
    uint64_t begin = off->child->uint, end = off->child->next->uint;
    char s[128];
    int64_t need = tensor_bytes(ti->dtype, ti->ndim, ti->shape);
    if (need < 0)
        return bad(f, "tensor \"%s\": shape %s of %s overflows or is not whole bytes", name,
                   shape_str(s, sizeof s, ti->ndim, ti->shape), dt->str);
    if (end < begin)
        return bad(f,
                   "tensor \"%s\": data_offsets [%" PRIu64 ", %" PRIu64 "] end before they begin",
                   name, begin, end);
    if (end - begin != (uint64_t)need)
        return bad(f,
                   "tensor \"%s\": data_offsets [%" PRIu64 ", %" PRIu64 "] hold %" PRIu64
                   " bytes but shape %s of %s needs %" PRId64,
                   name, begin, end, end - begin, shape_str(s, sizeof s, ti->ndim, ti->shape),
                   dt->str, need);
    if (end > data_size)
        return bad(f,
                   "truncated: tensor \"%s\" ends at byte %" PRIu64
                   " of the data, which has only %" PRIu64 " bytes",
                   name, end, data_size);
    ti->data = data + begin;
    ti->nbytes = (size_t)need;
    return TM_OK;
}

/* Whether header entry e is __metadata__ (compared in full: a key may hold
 * a NUL, and "__metadata__\u0000x" is a badly named tensor, not metadata). */
static bool is_metadata(const tm_json *e)
{
    return e->key_len == 12 && memcmp(e->key, "__metadata__", 12) == 0;
}

static int parse_metadata(tm_st_file *f, const tm_json *md)
{
    /* The reference reads null as "no metadata". */
    if (md->type == TM_JSON_NULL) return TM_OK;
    if (md->type != TM_JSON_OBJECT) return bad(f, "__metadata__ is not a JSON object");
    int st;
    const tm_json *dup = tm_json_duplicate_key(md, &st);
    if (st != TM_OK) return st;
    if (dup) return bad(f, "__metadata__ key \"%s\" appears twice", dup->key);
    f->meta = malloc((md->count ? md->count : 1) * sizeof *f->meta);
    if (f->meta == NULL) return tm_error(TM_EHOSTMEM, "%s: out of host memory", f->path);
    for (const tm_json *e = md->child; e; e = e->next) {
        if (e->type != TM_JSON_STRING) return bad(f, "__metadata__ \"%s\" is not a string", e->key);
        if (e->key_len != strlen(e->key) || e->str_len != strlen(e->str))
            return bad(f, "__metadata__ \"%s\" contains a NUL character", e->key);
        f->meta[f->n_meta++] = (tm_st_meta){e->key, e->str};
    }
    return TM_OK;
}

/* Sort orders for the two indexes: by data position, and by name. */
static int cmp_offset(const void *a, const void *b)
{
    const tm_st_info *x = *(const tm_st_info *const *)a, *y = *(const tm_st_info *const *)b;
    const unsigned char *px = x->data, *py = y->data;
    if (px != py) return px < py ? -1 : 1;
    return (x->nbytes > y->nbytes) - (x->nbytes < y->nbytes);
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp((*(const tm_st_info *const *)a)->name, (*(const tm_st_info *const *)b)->name);
}

/* The format requires the tensors to tile the data section exactly: sorted by
 * position, each starts where the previous one ended and the last ends at the
 * end of the file. No gap can hide other content, no two tensors share bytes. */
static int check_tiling(tm_st_file *f, const unsigned char *data, uint64_t data_size)
{
    qsort(f->by_name, (size_t)f->n_tensors, sizeof *f->by_name, cmp_offset);
    uint64_t pos = 0;
    for (int i = 0; i < f->n_tensors; i++) {
        const tm_st_info *t = f->by_name[i];
        uint64_t begin = (uint64_t)((const unsigned char *)t->data - data);
        if (begin < pos)
            return bad(f, "tensors \"%s\" and \"%s\" overlap", f->by_name[i - 1]->name, t->name);
        if (begin > pos)
            return bad(f, "%" PRIu64 " bytes before tensor \"%s\" belong to no tensor", begin - pos,
                       t->name);
        pos = begin + t->nbytes;
    }
    if (pos != data_size)
        return bad(f, "%" PRIu64 " trailing bytes after the last tensor's data", data_size - pos);
    return TM_OK;
}

static int parse_header(tm_st_file *f)
{
    if (f->size < 8) return bad(f, "%zu bytes is too short for the 8-byte header length", f->size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | f->bytes[i];
    if (n > TM_ST_MAX_HEADER)
        return bad(f, "header length %" PRIu64 " exceeds the %u-byte limit", n, TM_ST_MAX_HEADER);
    if (n > f->size - 8)
        return bad(f, "header length %" PRIu64 " exceeds the %zu bytes after the length field", n,
                   f->size - 8);
    const char *text = (const char *)f->bytes + 8;
    if (n == 0 || text[0] != '{')
        return bad(f, "header is not a JSON object (must start with '{')");
    int st = tm_json_parse(&f->doc, text, (size_t)n);
    if (st == TM_EFORMAT) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", tm_error_message());
        return bad(f, "invalid JSON header at %s", msg);
    }
    if (st != TM_OK) return st;
    const tm_json *root = tm_json_root(f->doc);
    const tm_json *dup = tm_json_duplicate_key(root, &st);
    if (st != TM_OK) return st;
    if (dup) return bad(f, "\"%s\" appears twice in the header", dup->key);

    size_t n_dims = 0;
    for (const tm_json *e = root->child; e; e = e->next) {
        if (is_metadata(e)) continue;
        const tm_json *sh = e->type == TM_JSON_OBJECT ? tm_json_get(e, "shape") : NULL;
        n_dims += sh && sh->type == TM_JSON_ARRAY ? sh->count : 0;
    }
    f->tensors = calloc(root->count ? root->count : 1, sizeof *f->tensors);
    f->by_name = malloc((root->count ? root->count : 1) * sizeof *f->by_name);
    f->dims = malloc((n_dims ? n_dims : 1) * sizeof *f->dims);
    if (f->tensors == NULL || f->by_name == NULL || f->dims == NULL)
        return tm_error(TM_EHOSTMEM, "%s: out of host memory", f->path);

    const unsigned char *data = f->bytes + 8 + n;
    uint64_t data_size = f->size - 8 - n;
    uint64_t *dims = f->dims;
    for (const tm_json *e = root->child; e; e = e->next) {
        if (is_metadata(e)) {
            TM_CHECK(parse_metadata(f, e));
            continue;
        }
        tm_st_info *ti = &f->tensors[f->n_tensors];
        TM_CHECK(parse_tensor(f, e, ti, dims, data, data_size));
        dims += ti->ndim;
        f->by_name[f->n_tensors++] = ti;
    }
    TM_CHECK(check_tiling(f, data, data_size));
    qsort(f->by_name, (size_t)f->n_tensors, sizeof *f->by_name, cmp_name);
    return TM_OK;
}

int tm_safetensors_open(tm_st_file **out, const char *path)
{
    if (out == NULL || path == NULL) return tm_error(TM_EINVAL, "safetensors open: NULL argument");
    *out = NULL;
    tm_st_file *f = calloc(1, sizeof *f);
    if (f == NULL || (f->path = strdup(path)) == NULL) {
        free(f);
        return tm_error(TM_EHOSTMEM, "%s: out of host memory", path);
    }
    int st = read_whole(f);
    if (st == TM_OK) st = parse_header(f);
    if (st != TM_OK) {
        tm_safetensors_close(f);
        return st;
    }
    *out = f;
    return TM_OK;
}

void tm_safetensors_close(tm_st_file *f)
{
    if (f == NULL) return;
    tm_json_free(f->doc);
    free(f->bytes);
    free(f->tensors);
    free(f->by_name);
    free(f->dims);
    free(f->meta);
    free(f->path);
    free(f);
}

int tm_st_count(const tm_st_file *f) { return f->n_tensors; }

const tm_st_info *tm_st_at(const tm_st_file *f, int i)
{
    return i >= 0 && i < f->n_tensors ? &f->tensors[i] : NULL;
}

const tm_st_info *tm_st_find(const tm_st_file *f, const char *name)
{
    tm_st_info key = {.name = name};
    const tm_st_info *kp = &key;
    const tm_st_info **hit =
        bsearch(&kp, f->by_name, (size_t)f->n_tensors, sizeof *f->by_name, cmp_name);
    return hit ? *hit : NULL;
}

int tm_st_meta_count(const tm_st_file *f) { return f->n_meta; }

tm_st_meta tm_st_meta_at(const tm_st_file *f, int i)
{
    return i >= 0 && i < f->n_meta ? f->meta[i] : (tm_st_meta){NULL, NULL};
}

const char *tm_st_meta_get(const tm_st_file *f, const char *key)
{
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta[i].key, key) == 0) return f->meta[i].value;
    return NULL;
}

int tm_st_read_f32(const tm_st_file *f, const char *name, float *dst, int ndim,
                   const uint64_t *shape)
{
    const tm_st_info *t = tm_st_find(f, name);
    if (t == NULL) return bad(f, "no tensor named \"%s\"", name);
    if (t->dtype != TM_ST_F32)
        return bad(f, "%s: dtype %s in file, expected F32", name, tm_st_dtype_name(t->dtype));
    bool same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    if (!same) {
        char a[128], b[128];
        return bad(f, "%s: shape %s in file, model expects %s", name,
                   shape_str(a, sizeof a, t->ndim, t->shape), shape_str(b, sizeof b, ndim, shape));
    }
    memcpy(dst, t->data, t->nbytes);
    return TM_OK;
}
