/* Chrome Trace Event JSON from the devices' recorded events. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "runtime/clock_internal.h"
#include "runtime/status.h"
#include "runtime/world.h"

static const char *engine_name[TM_ENGINES] = {"compute", "collectives", "send", "recv"};

static const char *phase_arg(char phase)
{
    switch (phase) {
    case 'F': return "F";
    case 'B': return "B";
    case 'O': return "opt";
    case 'E': return "eval";
    default: return "";
    }
}

/* Writes a JSON string body (the names are ours, but a user's path or
 * communicator name could hold a quote). */
static void json_str(FILE *f, const char *s)
{
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
}

static void write_events(FILE *f, const tm_world *w, int wall)
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
        for (int e = 0; e < TM_ENGINES; e++)
            fprintf(f, ",\n{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":%d,\"tid\":%d,"
                       "\"args\":{\"name\":\"%s\"}}", d, e, engine_name[e]);
        for (size_t i = 0; i < c->n_events; i++) {
            const tm_event *ev = &c->events[i];
            double t0 = wall ? ev->wall_start : ev->start, t1 = wall ? ev->wall_end : ev->end;
            fprintf(f, ",\n{\"name\":\"%s\",\"cat\":\"%s\",\"ph\":\"X\",\"pid\":%d,\"tid\":%d,"
                       "\"ts\":%.4f,\"dur\":%.4f,\"args\":{",
                    ev->name, ev->engine == TM_ENGINE_COMPUTE ? "compute" : "comm", d,
                    ev->engine, t0 * 1e6, (t1 - t0) * 1e6);
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

int tm_world_trace_write(const tm_world *w, const char *path, int wall)
{
    for (int d = 0; d < tm_world_size(w); d++)
        if (tm__world_clock(w, d)->dropped > 0)
            return tm_error(TM_EHOSTMEM, "trace incomplete: device %d lost %zu events for want "
                            "of host memory", d, tm__world_clock(w, d)->dropped);
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return tm_error(TM_EIO, "trace path too long: %s", path);
    FILE *f = fopen(tmp, "w");
    if (f == NULL) return tm_error(TM_EIO, "cannot write trace %s: %s", path, strerror(errno));
    errno = 0;
    write_events(f, w, wall);
    int bad = ferror(f);
    bad |= fflush(f) != 0 || fsync(fileno(f)) != 0;
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path) != 0) {
        /* A stream error need not leave errno set: say EIO then. */
        int err = errno != 0 ? errno : EIO;
        unlink(tmp);
        return tm_error(TM_EIO, "cannot write trace %s: %s", path, strerror(err));
    }
    return TM_OK;
}
