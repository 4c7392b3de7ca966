#include "strategies/json.h"

#include "runtime/status.h"
#include "runtime/utf8.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Nodes come from a chain of fixed blocks so their addresses stay stable while
 * the tree grows (a realloc'd array would move nodes under their parents). */
#define NODES_PER_BLOCK 256

typedef struct block {
    struct block *next; /* older block */
    size_t used;        /* nodes handed out from this block */
    tm_json nodes[NODES_PER_BLOCK];
} block;

struct tm_json_doc {
    block *blocks; /* newest first */
    char *strings; /* every decoded string and key, NUL-terminated */
    size_t strings_used;
    const tm_json *root;
};

typedef struct {
    const unsigned char *start; /* first byte of the text, for error offsets */
    const unsigned char *p;     /* next byte to read */
    const unsigned char *end;   /* one past the last byte */
    tm_json_doc *doc;
    int status; /* first error, TM_OK while parsing goes well */
} parser;

static tm_json *fail(parser *ps, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static tm_json *fail(parser *ps, const char *fmt, ...)
{
    /* Only the first error is recorded: later ones are consequences of it. */
    if (ps->status != TM_OK) return NULL;
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    ps->status = tm_error(TM_EFORMAT, "byte %zu: %s", (size_t)(ps->p - ps->start), what);
    return NULL;
}

static tm_json *new_node(parser *ps, tm_json_type type)
{
    block *b = ps->doc->blocks;
    if (b == NULL || b->used == NODES_PER_BLOCK) {
        b = malloc(sizeof *b);
        if (b == NULL) {
            if (ps->status == TM_OK)
                ps->status = tm_error(TM_EHOSTMEM, "out of host memory parsing JSON");
            return NULL;
        }
        b->next = ps->doc->blocks;
        b->used = 0;
        ps->doc->blocks = b;
    }
    tm_json *n = &b->nodes[b->used++];
    memset(n, 0, sizeof *n);
    n->type = type;
    return n;
}

static void skip_ws(parser *ps)
{
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

bool tm_json_utf8_valid(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        size_t k = tm_utf8_seq(u + i, n - i);
        if (k == 0) return false;
        i += k;
    }
    return true;
}

static int hex4(parser *ps, unsigned *out)
{
    if (ps->end - ps->p < 4) return 0;
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned c = ps->p[i], d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return 0;
        v = v * 16 + d;
    }
    ps->p += 4;
    *out = v;
    return 1;
}

static char *put_utf8(char *o, unsigned cp)
{
    if (cp < 0x80) {
        *o++ = (char)cp;
    } else if (cp < 0x800) {
        *o++ = (char)(0xC0 | cp >> 6);
        *o++ = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        *o++ = (char)(0xE0 | cp >> 12);
        *o++ = (char)(0x80 | (cp >> 6 & 0x3F));
        *o++ = (char)(0x80 | (cp & 0x3F));
    } else {
        *o++ = (char)(0xF0 | cp >> 18);
        *o++ = (char)(0x80 | (cp >> 12 & 0x3F));
        *o++ = (char)(0x80 | (cp >> 6 & 0x3F));
        *o++ = (char)(0x80 | (cp & 0x3F));
    }
    return o;
}

/* Decodes the string at ps->p (on its opening quote) into the document's
 * string area. A decoded string plus its NUL never outgrows its quoted source,
 * so an area as long as the text always has room. */
static bool parse_string(parser *ps, const char **out, size_t *out_len)
{
    char *o0 = ps->doc->strings + ps->doc->strings_used, *o = o0;
    ps->p++; /* opening quote */
    for (;;) {
        if (ps->p == ps->end) {
            fail(ps, "unterminated string");
            return false;
        }
        unsigned c = *ps->p;
        if (c == '"') break;
        if (c < 0x20) {
            fail(ps, "unescaped control character 0x%02x in string", c);
            return false;
        }
        if (c != '\\') {
            size_t k = tm_utf8_seq(ps->p, (size_t)(ps->end - ps->p));
            if (k == 0) {
                fail(ps, "invalid UTF-8 in string");
                return false;
            }
            memcpy(o, ps->p, k);
            o += k;
            ps->p += k;
            continue;
        }
        ps->p++;
        if (ps->p == ps->end) {
            fail(ps, "unterminated string");
            return false;
        }
        c = *ps->p++;
        switch (c) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '/': *o++ = '/'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case 'u': {
            unsigned cp, lo;
            if (!hex4(ps, &cp)) {
                fail(ps, "\\u must be followed by 4 hex digits");
                return false;
            }
            if (cp >= 0xDC00 && cp <= 0xDFFF) {
                fail(ps, "lone low surrogate \\u%04X in string", cp);
                return false;
            }
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                /* UTF-16 pairs are the only way JSON spells code points past
                 * U+FFFF in escapes; half a pair is not a character. */
                if (ps->end - ps->p < 2 || ps->p[0] != '\\' || ps->p[1] != 'u') {
                    fail(ps, "high surrogate \\u%04X not followed by a low one", cp);
                    return false;
                }
                ps->p += 2;
                if (!hex4(ps, &lo)) {
                    fail(ps, "\\u must be followed by 4 hex digits");
                    return false;
                }
                if (lo < 0xDC00 || lo > 0xDFFF) {
                    fail(ps, "high surrogate \\u%04X not followed by a low one", cp);
                    return false;
                }
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            o = put_utf8(o, cp);
            break;
        }
        default:
            ps->p--;
            fail(ps, "invalid escape '\\%c' in string", (c >= 0x20 && c < 0x7F) ? (char)c : '?');
            return false;
        }
    }
    ps->p++; /* closing quote */
    *o = '\0';
    *out = o0;
    *out_len = (size_t)(o - o0);
    ps->doc->strings_used += (size_t)(o - o0) + 1;
    return true;
}

static bool is_digit(const parser *ps) { return ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9'; }

static tm_json *parse_number(parser *ps)
{
    tm_json *n = new_node(ps, TM_JSON_NUMBER);
    if (n == NULL) return NULL;
    bool negative = false, fraction = false, overflow = false;
    uint64_t v = 0;
    if (*ps->p == '-') negative = true, ps->p++;
    if (!is_digit(ps)) return fail(ps, "expected a digit");
    if (*ps->p == '0') {
        ps->p++;
        if (is_digit(ps)) return fail(ps, "leading zero in number");
    } else {
        while (is_digit(ps)) {
            unsigned d = *ps->p++ - '0';
            if (v > (UINT64_MAX - d) / 10)
                overflow = true;
            else
                v = v * 10 + d;
        }
    }
    if (ps->p < ps->end && *ps->p == '.') {
        ps->p++;
        if (!is_digit(ps)) return fail(ps, "expected a digit after '.'");
        while (is_digit(ps)) ps->p++;
        fraction = true;
    }
    if (ps->p < ps->end && (*ps->p == 'e' || *ps->p == 'E')) {
        ps->p++;
        if (ps->p < ps->end && (*ps->p == '+' || *ps->p == '-')) ps->p++;
        if (!is_digit(ps)) return fail(ps, "expected a digit in exponent");
        while (is_digit(ps)) ps->p++;
        fraction = true;
    }
    n->is_uint = !negative && !fraction && !overflow;
    n->uint = n->is_uint ? v : 0;
    return n;
}

static tm_json *parse_value(parser *ps, int depth);

/* Parses the members of an object or the elements of an array after its
 * opening bracket, linking them as children of n. */
static tm_json *parse_container(parser *ps, tm_json *n, int depth)
{
    const bool object = n->type == TM_JSON_OBJECT;
    const unsigned char close = object ? '}' : ']';
    tm_json *last = NULL;
    ps->p++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == close) {
        ps->p++;
        return n;
    }
    for (;;) {
        const char *key = NULL;
        size_t key_len = 0;
        if (object) {
            if (ps->p == ps->end || *ps->p != '"') return fail(ps, "expected a string key");
            if (!parse_string(ps, &key, &key_len)) return NULL;
            skip_ws(ps);
            if (ps->p == ps->end || *ps->p != ':') return fail(ps, "expected ':' after key");
            ps->p++;
            skip_ws(ps);
        }
        tm_json *v = parse_value(ps, depth + 1);
        if (v == NULL) return NULL;
        v->key = key;
        v->key_len = key_len;
        if (last)
            last->next = v;
        else
            n->child = v;
        last = v;
        n->count++;
        skip_ws(ps);
        if (ps->p == ps->end)
            return fail(ps, "unexpected end inside %s", object ? "object" : "array");
        if (*ps->p == close) {
            ps->p++;
            return n;
        }
        if (*ps->p != ',') return fail(ps, "expected ',' or '%c'", close);
        ps->p++;
        skip_ws(ps);
    }
}

/* Reports the byte at ps->p as unexpected, printable or in hex. */
static tm_json *unexpected(parser *ps, const char *where)
{
    unsigned c = *ps->p;
    if (c >= 0x20 && c < 0x7F) return fail(ps, "unexpected character '%c'%s", (char)c, where);
    return fail(ps, "unexpected byte 0x%02x%s", c, where);
}

static tm_json *parse_literal(parser *ps, const char *word, tm_json_type type, bool value)
{
    size_t n = strlen(word);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0) return unexpected(ps, "");
    ps->p += n;
    tm_json *v = new_node(ps, type);
    if (v) v->boolean = value;
    return v;
}

static tm_json *parse_value(parser *ps, int depth)
{
    if (depth > TM_JSON_MAX_DEPTH)
        return fail(ps, "nesting deeper than %d levels", TM_JSON_MAX_DEPTH);
    if (ps->p == ps->end) return fail(ps, "unexpected end, expected a value");
    tm_json *n;
    switch (*ps->p) {
    case '{':
    case '[':
        n = new_node(ps, *ps->p == '{' ? TM_JSON_OBJECT : TM_JSON_ARRAY);
        return n ? parse_container(ps, n, depth) : NULL;
    case '"':
        n = new_node(ps, TM_JSON_STRING);
        if (n == NULL || !parse_string(ps, &n->str, &n->str_len)) return NULL;
        return n;
    case 't': return parse_literal(ps, "true", TM_JSON_BOOL, true);
    case 'f': return parse_literal(ps, "false", TM_JSON_BOOL, false);
    case 'n': return parse_literal(ps, "null", TM_JSON_NULL, false);
    default:
        if (*ps->p == '-' || (*ps->p >= '0' && *ps->p <= '9')) return parse_number(ps);
        return unexpected(ps, "");
    }
}

int tm_json_parse(tm_json_doc **out, const char *text, size_t len)
{
    *out = NULL;
    tm_json_doc *doc = calloc(1, sizeof *doc);
    char *strings = malloc(len + 1);
    if (doc == NULL || strings == NULL) {
        free(doc);
        free(strings);
        return tm_error(TM_EHOSTMEM, "out of host memory for a %zu-byte JSON text", len);
    }
    doc->strings = strings;
    parser ps = {(const unsigned char *)text, (const unsigned char *)text,
                 (const unsigned char *)text + len, doc, TM_OK};
    skip_ws(&ps);
    doc->root = parse_value(&ps, 1);
    if (doc->root) {
        skip_ws(&ps);
        if (ps.p != ps.end) unexpected(&ps, " after the JSON value");
    }
    if (ps.status != TM_OK) {
        tm_json_free(doc);
        return ps.status;
    }
    *out = doc;
    return TM_OK;
}

const tm_json *tm_json_root(const tm_json_doc *doc) { return doc->root; }

void tm_json_free(tm_json_doc *doc)
{
    if (doc == NULL) return;
    while (doc->blocks) {
        block *b = doc->blocks;
        doc->blocks = b->next;
        free(b);
    }
    free(doc->strings);
    free(doc);
}

const tm_json *tm_json_get(const tm_json *obj, const char *key)
{
    size_t n = strlen(key);
    for (const tm_json *m = obj->child; m; m = m->next)
        if (m->key_len == n && memcmp(m->key, key, n) == 0) return m;
    return NULL;
}

static int cmp_key(const void *a, const void *b)
{
    const tm_json *x = *(const tm_json *const *)a, *y = *(const tm_json *const *)b;
    size_t n = x->key_len < y->key_len ? x->key_len : y->key_len;
    int c = memcmp(x->key, y->key, n);
    if (c != 0) return c;
    return (x->key_len > y->key_len) - (x->key_len < y->key_len);
}

const tm_json *tm_json_duplicate_key(const tm_json *obj, int *status)
{
    *status = TM_OK;
    if (obj->count < 2) return NULL;
    const tm_json **m = malloc(obj->count * sizeof *m);
    if (m == NULL) {
        *status = tm_error(TM_EHOSTMEM, "out of host memory checking %zu keys", obj->count);
        return NULL;
    }
    size_t i = 0;
    for (const tm_json *c = obj->child; c; c = c->next) m[i++] = c;
    qsort(m, obj->count, sizeof *m, cmp_key);
    const tm_json *dup = NULL;
    for (i = 1; i < obj->count && dup == NULL; i++)
        if (cmp_key(&m[i - 1], &m[i]) == 0) dup = m[i];
    free(m);
    return dup;
}

void tm_json_out_raw(tm_json_out *o, const char *s, size_t n)
{
    if (o->failed) return;
    if (o->cap - o->len < n) {
        size_t cap = o->cap ? o->cap : 256;
        while (cap - o->len < n) {
            if (cap > SIZE_MAX / 2) {
                o->failed = true;
                return;
            }
            cap *= 2;
        }
        char *d = realloc(o->data, cap);
        if (d == NULL) {
            o->failed = true;
            return;
        }
        o->data = d;
        o->cap = cap;
    }
    memcpy(o->data + o->len, s, n);
    o->len += n;
}

void tm_json_out_string(tm_json_out *o, const char *s)
{
    tm_json_out_raw(o, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*p;
            tm_json_out_raw(o, esc, 2);
        } else if (*p < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", *p);
            tm_json_out_raw(o, esc, 6);
        } else {
            tm_json_out_raw(o, (const char *)p, 1);
        }
    }
    tm_json_out_raw(o, "\"", 1);
}

void tm_json_out_uint(tm_json_out *o, uint64_t v)
{
    char buf[24];
    int n = snprintf(buf, sizeof buf, "%" PRIu64, v);
    tm_json_out_raw(o, buf, (size_t)n);
}

void tm_json_out_free(tm_json_out *o)
{
    free(o->data);
    *o = (tm_json_out){0};
}
