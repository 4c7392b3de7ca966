/* Between the run report's files only: the sections that draw the devices
 * (report_html_devices.c) and what they share with the page
 * (report_html.c). */
#ifndef TM_REPORT_HTML_INTERNAL_H
#define TM_REPORT_HTML_INTERNAL_H

#include "strategies/report_html.h"

/* "device 3 (0,1,1)": a device's label in every figure. */
void tm__html_device_label(const tm_device_report *d, char *buf, size_t n);

/* Every device's recorded step as lanes: forward, backward, optimizer,
 * other compute, communication, idle. TM_OK or TM_EHOSTMEM. */
int tm__html_timeline(FILE *f, const tm_run_report *run);
/* Peak memory per device by tag, the cap and the formula's figure. */
int tm__html_memory(FILE *f, const tm_run_report *run);
/* Bytes between devices per mesh dimension, and the recorded step's bytes
 * against the formulas. */
int tm__html_traffic(FILE *f, const tm_run_report *run);

#endif
