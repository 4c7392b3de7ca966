/* A strict well-formedness check of the reports' HTML and SVG: the files
 * must parse as XML (every element closed and properly nested, attributes
 * quoted and not repeated, only XML's five named entities and numeric
 * ones, one root element) and read the same to an HTML parser (outside
 * <svg>, only HTML's void elements are self-closed, and those always).
 * Used by the report suite; no library needed. */
#ifndef TM_TESTS_WELLFORMED_H
#define TM_TESTS_WELLFORMED_H

#include <ctype.h>
#include <stdio.h>
#include <string.h>

enum { WF_DEPTH = 256, WF_NAME = 64, WF_ATTRS = 64 };

typedef struct {
    const char *s, *p, *end;
    char why[256];
} wf_doc;

static int wf_fail(wf_doc *d, const char *what)
{
    snprintf(d->why, sizeof d->why, "byte %ld: %s", (long)(d->p - d->s), what);
    return -1;
}

static int wf_name_char(int c, int first)
{
    return isalpha(c) || c == '_' || c == ':' || (!first && (isdigit(c) || c == '-' || c == '.'));
}

/* A name at d->p into out. */
static int wf_name(wf_doc *d, char *out)
{
    size_t n = 0;
    if (d->p >= d->end || !wf_name_char((unsigned char)*d->p, 1)) return wf_fail(d, "bad name");
    while (d->p < d->end && wf_name_char((unsigned char)*d->p, 0)) {
        if (n + 1 == WF_NAME) return wf_fail(d, "name too long");
        out[n++] = *d->p++;
    }
    out[n] = '\0';
    return 0;
}

/* An entity or character reference at d->p ('&'). */
static int wf_entity(wf_doc *d)
{
    static const char *named[] = {"amp;", "lt;", "gt;", "quot;", "apos;"};
    const char *q = d->p + 1;
    for (size_t i = 0; i < 5; i++)
        if ((size_t)(d->end - q) >= strlen(named[i]) &&
            strncmp(q, named[i], strlen(named[i])) == 0) {
            d->p = q + strlen(named[i]);
            return 0;
        }
    if (q < d->end && *q == '#') {
        q++;
        int hex = q < d->end && *q == 'x', digits = 0;
        if (hex) q++;
        while (q < d->end && (hex ? isxdigit((unsigned char)*q) : isdigit((unsigned char)*q)))
            q++, digits++;
        if (digits > 0 && q < d->end && *q == ';') {
            d->p = q + 1;
            return 0;
        }
    }
    return wf_fail(d, "& that starts no XML entity");
}

static void wf_space(wf_doc *d)
{
    while (d->p < d->end && isspace((unsigned char)*d->p)) d->p++;
}

static int wf_skip_to(wf_doc *d, const char *token, const char *what)
{
    const char *q = strstr(d->p, token);
    if (q == NULL || q >= d->end) return wf_fail(d, what);
    d->p = q + strlen(token);
    return 0;
}

static int wf_void(const char *name)
{
    static const char *v[] = {"meta", "br", "hr", "img", "input", "link", "col", "wbr"};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
        if (strcmp(name, v[i]) == 0) return 1;
    return 0;
}

/* A start tag at d->p ('<'): name, attributes, '>' or '/>'. */
static int wf_start(wf_doc *d, char *name, int *closed)
{
    char attr[WF_ATTRS][WF_NAME];
    int n = 0;
    d->p++;
    if (wf_name(d, name) != 0) return -1;
    for (;;) {
        const char *before = d->p;
        wf_space(d);
        if (d->p >= d->end) return wf_fail(d, "unterminated tag");
        if (*d->p == '>' || (*d->p == '/' && d->p + 1 < d->end && d->p[1] == '>')) break;
        if (d->p == before) return wf_fail(d, "attributes need space between them");
        if (n == WF_ATTRS) return wf_fail(d, "too many attributes");
        if (wf_name(d, attr[n]) != 0) return -1;
        for (int i = 0; i < n; i++)
            if (strcmp(attr[i], attr[n]) == 0) return wf_fail(d, "an attribute given twice");
        n++;
        wf_space(d);
        if (d->p >= d->end || *d->p != '=') return wf_fail(d, "attribute without a value");
        d->p++;
        wf_space(d);
        if (d->p >= d->end || (*d->p != '"' && *d->p != '\'')) return wf_fail(d, "unquoted value");
        char quote = *d->p++;
        while (d->p < d->end && *d->p != quote) {
            if (*d->p == '<') return wf_fail(d, "< in an attribute value");
            if (*d->p == '&') {
                if (wf_entity(d) != 0) return -1;
            } else {
                d->p++;
            }
        }
        if (d->p >= d->end) return wf_fail(d, "unterminated attribute value");
        d->p++;
    }
    *closed = *d->p == '/';
    d->p += *closed ? 2 : 1;
    return 0;
}

/* 0 when s[0, n) is well-formed; else -1 with the reason in why. */
static int wellformed(const char *s, size_t n, char *why, size_t why_n)
{
    wf_doc d = {s, s, s + n, ""};
    char stack[WF_DEPTH][WF_NAME];
    int depth = 0, roots = 0, in_svg = 0, rc = 0;
    if (strncmp(d.p, "<?xml ", 6) == 0) rc = wf_skip_to(&d, "?>", "unterminated declaration");
    wf_space(&d);
    if (rc == 0 && strncmp(d.p, "<!DOCTYPE html>", 15) == 0) d.p += 15;
    while (rc == 0 && d.p < d.end) {
        char c = *d.p;
        if (c != '<') {
            if (depth == 0 && !isspace((unsigned char)c)) rc = wf_fail(&d, "text outside the root");
            else if (c == '&') rc = wf_entity(&d);
            else if (c == '>' && d.p - d.s >= 2 && d.p[-1] == ']' && d.p[-2] == ']')
                rc = wf_fail(&d, "]]> in text");
            else d.p++;
        } else if (strncmp(d.p, "<!--", 4) == 0) {
            const char *q = strstr(d.p + 4, "--");
            if (q == NULL || q[2] != '>') rc = wf_fail(&d, "-- inside a comment");
            else d.p = q + 3;
        } else if (strncmp(d.p, "<![CDATA[", 9) == 0) {
            rc = depth ? wf_skip_to(&d, "]]>", "unterminated CDATA")
                       : wf_fail(&d, "CDATA outside the root");
        } else if (d.p + 1 < d.end && d.p[1] == '/') {
            char name[WF_NAME];
            d.p += 2;
            if (wf_name(&d, name) != 0) {
                rc = -1;
                break;
            }
            wf_space(&d);
            if (depth == 0 || strcmp(name, stack[depth - 1]) != 0)
                rc = wf_fail(&d, "an end tag that closes no open element");
            else if (d.p >= d.end || *d.p != '>')
                rc = wf_fail(&d, "unterminated end tag");
            else {
                d.p++;
                if (strcmp(name, "svg") == 0) in_svg--;
                depth--;
            }
        } else {
            char name[WF_NAME];
            int closed;
            if (depth == 0 && roots++ > 0) rc = wf_fail(&d, "a second root element");
            else if (wf_start(&d, name, &closed) != 0) rc = -1;
            else if (!in_svg && strcmp(name, "svg") != 0 && closed != wf_void(name))
                rc = wf_fail(&d, closed ? "a self-closed element HTML leaves open"
                                        : "an HTML void element not self-closed");
            else if (!closed) {
                if (depth == WF_DEPTH) rc = wf_fail(&d, "nested too deep");
                else {
                    snprintf(stack[depth++], WF_NAME, "%s", name);
                    if (strcmp(name, "svg") == 0) in_svg++;
                }
            }
        }
    }
    if (rc == 0 && depth != 0) rc = wf_fail(&d, "elements left open at the end");
    if (rc == 0 && roots != 1) rc = wf_fail(&d, "no root element");
    snprintf(why, why_n, "%s", d.why);
    return rc;
}

#endif
