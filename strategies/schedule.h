/* Pipeline-parallel schedules as data: per stage, an ordered list of forward,
 * backward and send/recv actions, a generator, a validator, an event-driven
 * simulator and a terminal timeline drawer. Thread-safe: no shared state; a
 * schedule is read-only after tm_schedule_make, so threads may share it. */
#ifndef TM_SCHEDULE_H
#define TM_SCHEDULE_H

#include <stddef.h>
#include <stdio.h>

/* Notation: p = pp stages (stage s runs on device s), m micro-batches, and
 * F / B the time of one forward / backward of one micro-batch on a stage.
 *
 * One action of one stage. Activations flow up (stage s -> s+1), gradients
 * down (s+1 -> s):
 *   FWD(i)       forward of micro-batch i;
 *   BWD(i)       backward of micro-batch i (on the last stage it follows
 *                FWD(i) without a message: the loss is computed there);
 *   SEND_ACT(i)  send i's output activation to s+1, which RECV_ACTs it
 *                before its FWD(i);
 *   SEND_GRAD(i) send the gradient of i's input to s-1, which RECV_GRADs it
 *                before its BWD(i).
 * The first stage neither RECV_ACTs nor SEND_GRADs, the last neither
 * SEND_ACTs nor RECV_GRADs. The two combined kinds are one blocking exchange
 * with one neighbour whose halves progress together (tm_sendrecv), like
 * Megatron's send_forward_recv_backward / send_backward_recv_forward:
 *   SEND_ACT_RECV_GRAD(i, j)  send act i to s+1 and receive grad j from s+1;
 *   SEND_GRAD_RECV_ACT(i, j)  send grad i to s-1 and receive act j from s-1.
 * 1F1B's steady state needs them: there a stage sends its activation up while
 * the stage above sends its gradient down, and two blocking sends towards
 * each other would wait for ever.
 *
 * A zero-bubble schedule (tm_schedule_splits_backward) splits each backward
 * in two, as Qi et al. do: BWD(i) is then only B, the input gradient (the
 * critical path: what the stage below waits for), and
 *   WGT(i)       W, the weight gradients of micro-batch i, after its BWD;
 * the layer kinds that cannot split do all their backward in B.
 *
 * Virtual stages (below) close the pipeline into a ring, where every device
 * may send to the next at once, and there an exchange involves both
 * neighbours: a message action may be joined to the next one (with_next),
 * and a run of joined actions is one exchange whose halves all progress
 * together, like Megatron's batched send_forward_backward_recv_forward_
 * backward (at most TM_SCHED_MAX_JOINED actions; compute actions are never
 * joined). */
typedef enum {
    TM_SCHED_FWD,
    TM_SCHED_BWD,
    TM_SCHED_SEND_ACT,
    TM_SCHED_RECV_ACT,
    TM_SCHED_SEND_GRAD,
    TM_SCHED_RECV_GRAD,
    TM_SCHED_SEND_ACT_RECV_GRAD,
    TM_SCHED_SEND_GRAD_RECV_ACT,
    TM_SCHED_WGT,
} tm_sched_kind;

typedef struct {
    tm_sched_kind kind;
    int mb;  /* micro-batch; for a combined kind, the send half's */
    int mb2; /* combined kinds only: the receive half's micro-batch */
    int chunk;     /* the device's chunk (virtual stage) of the pass or the
                      message (both halves of a combined kind); 0 unless the
                      schedule has v > 1 */
    int with_next; /* 1: one exchange with the next action (see above) */
} tm_sched_action;

#define TM_SCHED_MAX_JOINED 4

/* Virtual stages (INTERLEAVED_1F1B with v > 1): device p holds v chunks of
 * layers, chunk c being model stage g = c * pp + p of pp * v. An action's
 * chunk says which; its messages go to or come from model stage g + 1
 * (activations out, gradients in) or g - 1 (the other two), which lives on
 * device (g +- 1) mod pp: the last device sends chunk c's activations to
 * the first device's chunk c + 1, and the first device sends chunk c + 1's
 * input gradients back to the last device's chunk c. With v = 1 every chunk
 * is 0 and model stage g is device g, as above. */

/* The schedules. Each is described by its ramp-up / main / ramp-down phases
 * and its activation-memory bound: the most micro-batches whose FWD has run
 * and whose BWD has not, on stage s (tm_schedule_in_flight_bound). Except
 * grouped, zb-h2 and interleaved-1f1b with v > 1, every schedule sends
 * each message as soon as the pass producing it ends and receives it just
 * before the pass needing it; a send followed by a receive from the same
 * neighbour becomes one combined action. The bubbles quoted are for equal
 * stages and free messages, as the simulator measures them (the tests
 * check each).
 *
 * SEQUENTIAL — one micro-batch in the whole pipeline at a time: every stage
 *   runs F0 B0 F1 B1 ..., and F(i+1) on the first stage waits for B(i) to
 *   come all the way back. Each micro-batch is its own ramp-up (the forward
 *   wave) and ramp-down (the backward wave); there is no main phase. The
 *   debugging schedule, as Graphcore's PipelineSchedule.Sequential ("the same
 *   way as a sharded model"). Bound 1. Bubble with equal stages (p-1)/p.
 *
 * GPIPE — all forwards, then all backwards (Huang et al., GPipe, 2019; the
 *   backwards in micro-batch order, as PyTorch's ScheduleGPipe). Ramp-up:
 *   the forward wave reaches stage s after s forwards; main: every stage
 *   forwards; the backward wave starts on the last stage after its last
 *   forward and ramps down to stage 0. Bound m on every stage. Bubble with
 *   equal stages (p-1)/(m+p-1), for any ratio of B to F.
 *
 * 1F1B — PipeDream-Flush (Narayanan et al., "Memory-Efficient Pipeline-
 *   Parallel DNN Training", 2021), as Megatron-LM's
 *   forward_backward_pipelining_without_interleaving. Stage s: warm-up
 *   (ramp-up) of w = min(p-1-s, m) forwards; main (steady) phase of m-w
 *   pairs "one forward, one backward"; cool-down (ramp-down) of the last w
 *   backwards. Bound min(p-s, m): the first stage holds at most p
 *   micro-batches however large m is. Bubble as GPipe's, (p-1)/(m+p-1).
 *
 * The next two are from Graphcore's IPU pipelining documentation (technical
 * note "Model Parallelism on the IPU with TensorFlow: Sharding and
 * Pipelining", section Pipeline scheduling, and the TensorFlow 1 pipelining
 * tutorial), where the IPUs run in lock-step time steps. The step tables
 * below follow Graphcore's TensorFlow pipeline visitor: grouped runs every
 * rotation of the stage list in every step, interleaved only the rotations
 * that put one pass on each IPU. They agree with the tutorial's account of
 * its 4-stage diagrams: micro-batch 0 finishes its last backward at time
 * step 11 under grouped (drawn one column per forward-only step, then a
 * forward and a backward column per step) and 8 under interleaved,
 * counting from 1.
 *
 * GROUPED (Graphcore's default) — in step k, stage s runs F(k-s) and then
 *   B(k-2p+2+s), each when that micro-batch exists; all IPUs run their
 *   forwards together, then their backwards together. A micro-batch's
 *   backward starts on the last stage in the step of its forward. Ramp-up:
 *   steps 0 .. 2p-3 (stage s starts backwards at step 2p-2-s); main: steps
 *   2p-2 .. m-1, where every stage does one forward and one backward per
 *   step (when m >= 2p-1); ramp-down: steps m .. m+2p-3. As a list, stage s
 *   does a warm-up of min(2(p-1-s), m) forwards, then forward/backward
 *   pairs, then the rest of the backwards. Messages move as on the IPU: what
 *   a step produces is exchanged at the step's end (one exchange with the
 *   stage above, then one with the stage below) and used in the next step.
 *   Bound min(2(p-s)-1, m): the first stage holds 2p-1, nearly twice 1F1B's
 *   p ("memory requirements may go up ... to cover an increase in in-flight
 *   mini-batches"). Its bubble here is 1F1B's, (p-1)/(m+p-1): its gain on
 *   the IPU, that every lock-step step is balanced (F+B on every IPU), is no
 *   gain when stages run freely, so here it only costs memory.
 *
 * INTERLEAVED — in time step t each stage runs one pass: stage s runs F(j)
 *   at t = 2j+s and B(j) at t = 2j+2p-1-s. Forwards fall on steps of s's
 *   parity and backwards on the others, so once the pipe is full half the
 *   stages run forwards and half backwards. Ramp-up: steps 0 .. 2p-3; main:
 *   steps 2p-2 .. 2m-1 (when m >= p); ramp-down: the last 2p-2 of 2m+2p-2.
 *   Bound min(p-s, m). Sorted by time, stage s's passes are exactly 1F1B's
 *   order (a warm-up of p-1-s forwards, then alternating), so the lists equal
 *   1F1B's. What makes it slower on an IPU is the lock-step: a step lasts as
 *   long as its slowest pass, max(F, B), while an executor whose stages run
 *   freely (like tinymesh's) runs it exactly as 1F1B. Not to be confused
 *   with Megatron's "interleaved" schedule, which gives each device several
 *   virtual stages: INTERLEAVED_1F1B below.
 *
 * ZB-H1 — the handcrafted zero-bubble schedule H1 of Qi et al., "Zero
 *   Bubble Pipeline Parallelism" (2023), with F, B and W the times of a
 *   forward, an input gradient and a weight gradient. 1F1B over F and B,
 *   each W(i) after its B(i): W, which nothing downstream waits for, is
 *   deferred so that the gradients run down the pipeline at B's pace
 *   rather than B+W's. Stage s: 1F1B's warm-up of min(p-1-s, m) forwards;
 *   then forward/backward pairs, the k-th backward followed by W(k-s)
 *   (stage s defers its W's by s micro-batches); the cool-down's backwards,
 *   each with the next W; the s deferred W's last, filling the wait for the
 *   stage below's last backward. A W between a send and a receive from the
 *   same neighbour goes before the pair's combined exchange (splitting them
 *   could make two neighbours wait in their sends). Ramp-up: 1F1B's;
 *   main: F, B, W per micro-batch; ramp-down: backwards with W's, then the
 *   deferred W's. The bound counts micro-batches whose FWD has run and
 *   whose WGT has not (their activations stay until W): min(p, m) on every
 *   stage, 1F1B's peak (its first stage's). With m >= p each stage idles
 *   (p-1) max(F, B, F+B-W) (tm_schedule_zb_h1_bubble): the last stage
 *   waits (p-1) F for its first activation, the last gradient comes down
 *   at B a stage, and the deferred W's fill all but F+B-W of each wait.
 *   With F = B = W the bubble is (p-1)/(3m+p-1): (p-1) F of idle per
 *   stage against 1F1B's (p-1)(F+B+W), a third, and the least any schedule
 *   reaches when the optimizer step waits for every W (the last stage
 *   starts after (p-1) F). With m < p the waves of the last micro-batch set
 *   the makespan, 2(m+p-1)+1 F, and the bubble is 1-3m/(2(m+p-1)+1).
 *
 * ZB-H2 — the paper's handcrafted H2: more forwards in the warm-up, W's
 *   filling what would be idle. Stage s: a warm-up of min(2(p-1-s)+1, m)
 *   forwards, then B(i) followed by F(w+i) while there are forwards; the
 *   W's (each after its B, in micro-batch order) go wherever the next F
 *   or B could not start, found by running every stage with F = B = W and
 *   free messages in unit time steps, and wherever a forward would hold
 *   more than min(2p-1, m) micro-batches. Bound min(2p-1, m) on every
 *   stage (forward run, W not): the paper's 2p M_B. Its warm-up runs
 *   ahead of the stage above, so with rendezvous messages a send made as
 *   its pass ends would wait for the stage above; instead each message
 *   goes at the time step its receiver's pass starts, on both stages (at
 *   each step the exchange with the stage above, then the one with the
 *   stage below, then the pass), so the lists run in that lock-step order
 *   whatever the times. With F = B = W its makespan is ZB-H1's, (3m+p-1)
 *   F for m >= p (2(m+p-1)+1 F below): the least any schedule reaches
 *   when the optimizer waits for every W, as the last stage waits (p-1) F
 *   for its first activation. The paper's H2 goes below it, to nearly no
 *   bubble, only with its post-validation, overlapping the optimizer step
 *   with the next step's ramp-up, which tinymesh's synchronous step does
 *   not do. With unequal F, B and W its unit-time order, fixed in the
 *   lists, idles more than ZB-H1 (build/schedule shows it).
 *
 * INTERLEAVED_1F1B — Megatron-LM's interleaved schedule (Narayanan et al.,
 *   "Efficient Large-Scale Language Model Training on GPU Clusters Using
 *   Megatron-LM", 2021; forward_backward_pipelining_with_interleaving) with
 *   v virtual stages (chunks) per device. Each micro-batch passes through
 *   the devices v times. A device's m * v passes of each direction run in
 *   Megatron's order: micro-batches in groups of p, each group through
 *   chunk 0, then chunk 1, ..., chunk v-1; the backwards in the same order
 *   with the chunks reversed (v-1 first). Like Megatron, v > 1 needs m to
 *   be a multiple of p (a short last group of Megatron's order deadlocks
 *   the ring). Messages go in steps, as Megatron sends them: after each
 *   warm-up forward, each steady forward-and-backward pair and each
 *   cool-down backward, one exchange (joined actions) sends what the step
 *   produced and receives what the next step needs. Device s: warm-up
 *   (ramp-up) of w =
 *   min(2(p-1-s) + (v-1)p, m v) forwards — Megatron's count —, main phase of
 *   m v - w "one forward, one backward" pairs, cool-down of the last w
 *   backwards. Bound min(w + 1, m v) chunk passes in flight (chunk-micro-
 *   batches, each holding its chunk's activations). With F and B a whole
 *   device's pass (each chunk F/v, B/v), the bubble for equal stages is
 *   (p-1)/(v m + p-1) (Megatron quotes the bubble-to-compute ratio
 *   (p-1)/(v m)); the pipeline sends v times the messages. v = 1 is
 *   exactly 1F1B (warm-up p-1-s, the lists equal). v > 1 needs p >= 2. */
typedef enum {
    TM_SCHED_SEQUENTIAL,
    TM_SCHED_GPIPE,
    TM_SCHED_1F1B,
    TM_SCHED_GROUPED,
    TM_SCHED_INTERLEAVED,
    TM_SCHED_ZB_H1,
    TM_SCHED_INTERLEAVED_1F1B,
    TM_SCHED_ZB_H2,
} tm_schedule_kind;

#define TM_SCHEDULE_KINDS 8
/* Limits that keep every list small and every count in an int. */
#define TM_SCHEDULE_MAX_PP 1024
#define TM_SCHEDULE_MAX_MB 65536
#define TM_SCHEDULE_MAX_WORK (1 << 18) /* pp * m * v */
#define TM_SCHEDULE_MAX_VIRTUAL 26     /* v: a chunk is drawn as a letter */

/* "sequential", "gpipe", "1f1b", "grouped", "interleaved", "zb-h1",
 * "interleaved-1f1b", "zb-h2"; "?" otherwise. */
const char *tm_schedule_kind_name(tm_schedule_kind kind);
/* Parses one of those names into *out. Returns TM_EINVAL naming the input
 * and the valid names otherwise. */
int tm_schedule_kind_parse(const char *name, tm_schedule_kind *out);
/* Whether the schedule splits each backward into BWD (B) and WGT (W):
 * zb-h1 and zb-h2. */
int tm_schedule_splits_backward(tm_schedule_kind kind);
/* "FWD", "SEND_ACT_RECV_GRAD", ...; "?" for a value outside the enum. */
const char *tm_sched_kind_name(tm_sched_kind kind);
/* Writes "FWD(3)" or "SEND_ACT_RECV_GRAD(3,1)" into buf (always terminated
 * when n > 0) and returns what snprintf returns. An action with a chunk
 * other than 0 names it, "FWD(3c1)"; one joined to the next ends in '+'. */
int tm_sched_action_format(char *buf, size_t n, tm_sched_action a);

typedef struct {
    tm_schedule_kind kind;
    int pp;                    /* stages */
    int m;                     /* micro-batches */
    int *len;                  /* (pp,) actions per stage */
    tm_sched_action **actions; /* (pp,) each (len[s],) in execution order */
    int v;                     /* chunks (virtual stages) per device; 0 (a
                                  schedule built by hand) counts as 1 */
} tm_schedule;

/* Builds the schedule `kind` for pp stages and m micro-batches. Returns
 * TM_EINVAL for an unknown kind or pp, m outside 1 .. TM_SCHEDULE_MAX_PP /
 * TM_SCHEDULE_MAX_MB or pp * m above TM_SCHEDULE_MAX_WORK, TM_EHOSTMEM. Every
 * schedule accepts every such pp and m. On error *out is left empty. */
int tm_schedule_make(tm_schedule *out, tm_schedule_kind kind, int pp, int m);
/* The same with v chunks per device: v = 1 is tm_schedule_make; v > 1 only
 * for INTERLEAVED_1F1B with pp >= 2, m a multiple of pp and v <=
 * TM_SCHEDULE_MAX_VIRTUAL, pp * m * v at most TM_SCHEDULE_MAX_WORK (TM_EINVAL
 * naming the constraint). */
int tm_schedule_make_virtual(tm_schedule *out, tm_schedule_kind kind, int pp, int m, int v);
/* Frees the lists and empties s; an empty or NULL schedule is fine. */
void tm_schedule_free(tm_schedule *s);

/* Checks s (made here or by hand) and returns TM_OK, TM_EHOSTMEM, or
 * TM_EINVAL with a message naming the stage, the action index and the
 * problem, e.g. "stage 2 action 5: BWD(3) before RECV_GRAD(3)". In order:
 * well-formed actions (known kind, micro-batch in [0, m), chunk in [0, v),
 * no message past either end of the pipeline); FWD(i) and BWD(i) exactly
 * once per stage (and chunk) for every i, and WGT(i) exactly once, after
 * BWD(i), when the kind splits the backward (none otherwise); the
 * activations stage s sends are, in order, those s+1 receives, and
 * likewise the gradients, each micro-batch's exactly once (with chunks:
 * each model stage's, to the chunk that follows it); every link (device to
 * device) carries what it carries in the order both ends agree on,
 * whatever the kinds; per stage
 * RECV_ACT(i) < FWD(i) < SEND_ACT(i), FWD(i) < BWD(i) and RECV_GRAD(i) <
 * BWD(i) < SEND_GRAD(i); and no deadlock when every stage runs its list with
 * rendezvous messages (a send completes only together with its receive —
 * the strictest model, so a schedule valid here is valid with any
 * buffering), the halves of a combined action progressing independently.
 * A deadlock names the cycle: "deadlock: stage 0 waits in SEND_ACT(1) for
 * stage 1, which waits in SEND_GRAD(0) for stage 0". */
int tm_schedule_validate(const tm_schedule *s);

/* The most micro-batches whose FWD has run and whose BWD (WGT when the
 * kind splits the backward) has not, over stage's list: the activations
 * the executor will hold at once there.
 * Returns TM_EINVAL (negative) for a stage outside [0, pp). */
int tm_schedule_max_in_flight(const tm_schedule *s, int stage);
/* The documented bound for that (see each schedule above): sequential 1,
 * gpipe m, 1f1b and interleaved min(p-s, m), grouped min(2(p-s)-1, m),
 * zb-h1 min(p, m), zb-h2 min(2p-1, m), interleaved-1f1b with v chunks min(w + 1, m v) chunk
 * passes (v = 1: as 1f1b). Returns TM_EINVAL (negative) for bad arguments. */
int tm_schedule_in_flight_bound(tm_schedule_kind kind, int pp, int m, int stage);
int tm_schedule_in_flight_bound_virtual(tm_schedule_kind kind, int pp, int m, int v, int stage);

/* One interval of a stage's timeline. kind is FWD, BWD, WGT or one of the four
 * plain message kinds: a combined action yields one event per half. A
 * message event spans its transfer, from the moment both sides are ready;
 * waiting before it is idle time. */
typedef struct {
    int stage;
    tm_sched_kind kind;
    int mb;
    double start, end;
    int chunk; /* the chunk of the pass or message half on this stage */
} tm_sched_event;

/* Simulates the validated schedule s: each stage one compute engine running
 * its list in order, FWD taking fwd_time[g] and BWD bwd_time[g] for the
 * action's model stage g = chunk * pp + stage (arrays of pp * v, each >= 0;
 * with v = 1, one per stage), every message comm_time (>= 0) once both sides
 * are at it (rendezvous), a combined action's halves in parallel. On success
 * *events is a malloc'ed array of *n_events events sorted by stage then start
 * (free() it) and *makespan the time the last stage finishes. The result is
 * exact (sums and maxima of the inputs) and deterministic. Returns what
 * tm_schedule_validate returns, TM_EINVAL for bad times, TM_EHOSTMEM; on
 * error *events is NULL. */
int tm_schedule_simulate(const tm_schedule *s, const double *fwd_time,
                         const double *bwd_time, double comm_time,
                         tm_sched_event **events, int *n_events, double *makespan);
/* The same with a W time: WGT taking wgt_time[stage] (NULL: 0); BWD is
 * then only B when the kind splits the backward. */
int tm_schedule_simulate_split(const tm_schedule *s, const double *fwd_time,
                               const double *bwd_time, const double *wgt_time, double comm_time,
                               tm_sched_event **events, int *n_events, double *makespan);

/* 1 - (sum of FWD, BWD and WGT time) / (pp * makespan): the fraction of
 * device time not spent computing, from any events (simulated or
 * measured); W counts as busy. 0 when makespan is not positive. */
double tm_schedule_bubble(const tm_sched_event *ev, int n, int pp, double makespan);
/* The bubble with equal stages and free messages, for any F and B:
 * (p-1)/(m+p-1) for gpipe and 1f1b — the textbook figure — and for grouped
 * and interleaved as tinymesh runs them, (p-1)/p for sequential; for zb-h1
 * and zb-h2 with F = B = W (the backward split in two equal halves),
 * (p-1)/(3m+p-1) when m >= p, else 1-3m/(2(m+p-1)+1); interleaved-1f1b is 1f1b's there
 * (v = 1); -1 for bad arguments. */
double tm_schedule_bubble_theory(tm_schedule_kind kind, int pp, int m);
/* With v chunks per device: interleaved-1f1b (p-1)/(v m + p-1) (the
 * devices' passes F and B split evenly over the chunks); -1 for bad
 * arguments (v > 1 with m not a multiple of p included); v = 1 is
 * tm_schedule_bubble_theory. */
double tm_schedule_bubble_theory_virtual(tm_schedule_kind kind, int pp, int m, int v);

/* zb-h1's bubble for equal stages, free messages, m >= p and any times F,
 * B, W of a forward, an input gradient and a weight gradient: each stage
 * idles (p-1) max(F, B, F+B-W), so the bubble is that over
 * m(F+B+W) + (p-1) max(F, B, F+B-W); -1 for m < p or bad arguments. */
double tm_schedule_zb_h1_bubble(int pp, int m, double f, double b, double w);

/* Draws the events as a timeline: one row per stage, time left to right over
 * `width` columns (<= 0: tm_schedule_draw_width), forwards and backwards as
 * cells labelled "F3" / "B3" (with chunks, "F3a" for chunk 0, "F3b" for
 * chunk 1, ...; cut short when narrow), idle as '.', messages
 * not drawn; then a time axis, a legend and the bubble (measured and, where
 * tm_schedule_bubble_theory has one, theory). s gives pp, m and the name;
 * the events may come from tm_schedule_simulate or from a measured run. */
void tm_schedule_draw(FILE *out, const tm_schedule *s, const tm_sched_event *ev,
                      int n, double makespan, int width);
/* The widest timeline drawn: lines of a few thousand columns still go
 * through a pipe or into a file whole. */
#define TM_SCHEDULE_DRAW_MAX_WIDTH 4096
/* The width that gives the shortest forward or backward room for its label
 * and a space, at most TM_SCHEDULE_DRAW_MAX_WIDTH columns. */
int tm_schedule_draw_width(const tm_sched_event *ev, int n, double makespan);

#endif
