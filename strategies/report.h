/* Text tables of a finished training run (strategies/trainer.h): memory by
 * tag, modeled time, traffic against the formulas, links, and the measured
 * pipeline timeline. Thread-safety: plain functions of their arguments. */
#ifndef TM_REPORT_H
#define TM_REPORT_H

#include <stdio.h>

#include "strategies/trainer.h"

/* Peak memory of every device by tag, and the bytes it sent. */
void tm_report_memory(FILE *f, const tm_train_result *r, size_t cap);
/* ZeRO's accounts (README, "ZeRO"): every device's parameters, gradients
 * and optimizer state against the paper's formula for the run's stage, the
 * comm bytes against the layer in flight, the peak against the formulas'
 * sum with the activations; and the data-parallel bytes of the recorded
 * step against what plain data parallelism's all-reduce sends. */
void tm_report_zero(FILE *f, const tm_train_result *r, const tm_train_config *cfg);
/* Optimizer offload's accounts (README, "Optimizer offload"): every
 * device's host arena against the optimizer state's bytes, its parameters,
 * gradients and optimizer state against the formula without the state, its
 * peak against the formulas' sum, and the recorded step's host traffic
 * against 8 bytes per updated parameter with its modeled time. */
void tm_report_offload(FILE *f, const tm_train_result *r, const tm_train_config *cfg);
/* Modeled against wall throughput, and each device's modeled step split
 * into compute, communication and idle. */
void tm_report_modeled(FILE *f, const tm_train_result *r, const tm_train_config *cfg);
/* The first recorded step's bytes per device and mesh dimension against the
 * formulas, then the links: each one when every_link or when there are at
 * most 8, else their sums by mesh dimension. */
void tm_report_traffic(FILE *f, const tm_train_result *r, const tm_train_config *cfg,
                       int every_link);
/* The first recorded step's forward and backward passes per stage (modeled
 * microseconds) with the measured bubble beside the theory. */
void tm_report_timeline(FILE *f, const tm_train_result *r, const tm_train_config *cfg);

/* "1.50 MiB" style. */
void tm_report_bytes(double bytes, char *buf, size_t n);

#endif
