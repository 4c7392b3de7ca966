/* Chrome Trace Event JSON from the devices' recorded events. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/clock_internal.h"
#include "runtime/outfile.h"
#include "runtime/status.h"
#include "runtime/utf8.h"
#include "runtime/world.h"

/* Tracks: one per engine; receives get one per sending peer, after them. */
static const char *engine_name[TM_ENGINE_RECV] = {"compute", "collectives", "send"};

static int tid_of(const tm_event *e)
{
    return e->engine == TM_ENGINE_RECV ? TM_ENGINE_RECV + 1 + e->peer : e->engine;
}

static const char *phase_arg(char phase)
{
    switch (phase) {
    case 'F': return "F";
    case 'B': return "B";
    case 'W': return "W";
    case 'O': return "opt";
    case 'E': return "eval";
    default: return "";
    }
}

/* Writes a JSON string body: quotes, backslashes and control characters
 * escaped, and a byte that does not start well-formed UTF-8 (a name cut
 * inside a character) as U+FFFD, so the file always parses. */
static void json_str(FILE *f, const char *str)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t left = strlen(str);
    while (*s) {
        size_t n = tm_utf8_seq(s, left);
        if (n == 0) {
            fputs("\\ufffd", f);
            n = 1;
        } else if (*s == '"' || *s == '\\') {
            fprintf(f, "\\%c", *s);
        } else if (*s < 0x20) {
            fprintf(f, "\\u%04x", *s);
        } else {
            fwrite(s, 1, n, f);
        }
        s += n;
        left -= n;
    }
}

/* Names device d's tracks: the engines', then one per peer it received
 * from (seen: n + 1 flags, [0] the host). */
static void thread_names(FILE *f, int d, const tm_vclock *c, int n, char *seen)
{
    for (int e = 0; e < TM_ENGINE_RECV; e++)
        fprintf(f, ",\n{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":%d,\"tid\":%d,"
                   "\"args\":{\"name\":\"%s\"}}", d, e, engine_name[e]);
    memset(seen, 0, (size_t)n + 1);
    for (size_t i = 0; i < c->n_events; i++)
        if (c->events[i].engine == TM_ENGINE_RECV) seen[c->events[i].peer + 1] = 1;
    for (int p = -1; p < n; p++) {
        if (!seen[p + 1]) continue;
        fprintf(f, ",\n{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":%d,\"tid\":%d,"
                   "\"args\":{\"name\":\"", d, TM_ENGINE_RECV + 1 + p);
        if (p < 0)
            fputs("recv from host\"}}", f);
        else
            fprintf(f, "recv from device %d\"}}", p);
    }
}

/* Seconds as ticks of 0.1 ns, the trace's resolution (microseconds with
 * four decimals). Each span's end is rounded once, like its start, and its
 * duration is their difference, so a span that ends where the next begins
 * has ts + dur equal to the next one's ts, never past it (rounding ts and
 * dur apart made such spans overlap by a tick, which viewers flag). */
static long long ticks(double seconds) { return llround(seconds * 1e10); }

static void write_events(FILE *f, const tm_world *w, int wall, char *seen)
{
    int n = tm_world_size(w), first = 1;
    fputs("{\"traceEvents\":[\n", f);
    for (int d = 0; d < n; d++) {
        const tm_vclock *c = tm__world_clock(w, d);
        fprintf(f, "%s{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":%d,\"args\":{\"name\":\"",
                first ? "" : ",\n", d);
        json_str(f, c->name);
        fputs("\"}}", f);
        fprintf(f, ",\n{\"name\":\"process_sort_index\",\"ph\":\"M\",\"pid\":%d,"
                   "\"args\":{\"sort_index\":%d}}", d, d);
        first = 0;
        thread_names(f, d, c, n, seen);
        for (size_t i = 0; i < c->n_events; i++) {
            const tm_event *ev = &c->events[i];
            long long t0 = ticks(wall ? ev->wall_start : ev->start);
            long long t1 = ticks(wall ? ev->wall_end : ev->end);
            fprintf(f, ",\n{\"name\":\"%s\",\"cat\":\"%s\",\"ph\":\"X\",\"pid\":%d,\"tid\":%d,"
                       "\"ts\":%lld.%04lld,\"dur\":%lld.%04lld,\"args\":{",
                    ev->name, ev->engine == TM_ENGINE_COMPUTE ? "compute" : "comm", d,
                    tid_of(ev), t0 / 10000, t0 % 10000, (t1 - t0) / 10000, (t1 - t0) % 10000);
            if (ev->engine == TM_ENGINE_COMPUTE) {
                fprintf(f, "\"stage\":%d,\"mb\":%d,\"phase\":\"%s\"}}", ev->stage, ev->mb,
                        phase_arg(ev->phase));
            } else {
                fputs("\"comm\":\"", f);
                json_str(f, ev->comm);
                fprintf(f, "\",\"bytes\":%llu,\"sent\":%llu}}", (unsigned long long)ev->bytes,
                        (unsigned long long)ev->sent);
            }
        }
    }
    fprintf(f, "\n],\"displayTimeUnit\":\"ns\",\"otherData\":{\"clock\":\"%s\"}}\n",
            wall ? "wall" : "modeled");
}

int tm_world_trace_write(const tm_world *w, tm_outfile *out, int wall)
{
    for (int d = 0; d < tm_world_size(w); d++)
        if (tm__world_clock(w, d)->dropped > 0)
            return tm_error(TM_EHOSTMEM, "trace incomplete: device %d lost %zu events for want "
                            "of host memory", d, tm__world_clock(w, d)->dropped);
    char *seen = malloc((size_t)tm_world_size(w) + 1);
    if (seen == NULL) return tm_error(TM_EHOSTMEM, "cannot allocate the trace's track table");
    FILE *f = tm_outfile_stream(out);
    if (f != NULL) write_events(f, w, wall, seen);
    free(seen);
    return f != NULL ? TM_OK : TM_EIO;
}
