/* Output files a user names (metrics, checkpoints, traces): a regular file,
 * a name not taken yet, or a symlink to either, is written to a temporary file
 * beside its (resolved) target, flushed and renamed over it, so the target
 * holds its old content or the whole new one, never a part; anything else (a
 * device node, a FIFO, a terminal) is opened once, when the outfile is opened,
 * and written directly and in order, never replaced.
 * Thread-safety: an outfile is used by one thread at a time; different
 * outfiles may be used from different threads. tm_outfile_discard_temps is
 * async-signal-safe. */
#ifndef TM_OUTFILE_H
#define TM_OUTFILE_H

#include <stdio.h>

typedef struct tm_outfile tm_outfile;

/* Checks, without leaving anything behind and without opening a non-regular
 * target (opening and closing a FIFO would hand its reader an early end of
 * file), that `path` can be written: the name is not empty, it is not a
 * directory, a regular or new target's directory exists and takes a new
 * file (tried for real: a file is created there and removed), an existing
 * target is writable by this process. TM_OK, or TM_EIO (TM_EINVAL for an
 * empty name) with a message "cannot write PATH: reason". */
int tm_outfile_check(const char *path);

/* Opens `path` for writing after the checks of tm_outfile_check: a
 * non-regular target is opened now (a FIFO waits here for its reader); a
 * regular one gets its temporary file at the first tm_outfile_stream. TM_OK,
 * TM_EIO / TM_EINVAL as above, TM_EHOSTMEM. */
int tm_outfile_open(tm_outfile **out, const char *path);

/* The stream to write into (creating the temporary file on the first call),
 * or NULL with a message recorded. */
FILE *tm_outfile_stream(tm_outfile *o);

/* The path as given to tm_outfile_open, for messages. */
const char *tm_outfile_path(const tm_outfile *o);

/* Finishes and frees o: a regular target's temporary file is flushed to
 * disk and renamed over the target (an outfile never streamed leaves the
 * target as it was); a direct one is flushed and closed. TM_OK, or TM_EIO
 * with a message (a write error on the stream included), the temporary
 * file removed. */
int tm_outfile_commit(tm_outfile *o);

/* Frees o without finishing it: its temporary file is removed and the
 * target is left as it was (a direct target keeps what was written to it).
 * NULL is a no-op. */
void tm_outfile_abandon(tm_outfile *o);

/* Removes the temporary file of every outfile not yet committed or
 * abandoned; for a signal handler that ends the process at once. Only
 * calls unlink(2), so it is async-signal-safe. */
void tm_outfile_discard_temps(void);

#endif
