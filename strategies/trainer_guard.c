/* The divergence check after every step (strategies/trainer_internal.h). */
#include <math.h>
#include <stdio.h>

#include "strategies/trainer_internal.h"

void tm__train_guard(tm_stop *stop, long step, int has_loss, double loss, const float *grads,
                     size_t n, int device)
{
    char why[128];
    if (has_loss && !isfinite(loss)) {
        snprintf(why, sizeof why, "the loss is %s", isnan(loss) ? "nan" : "inf");
        tm_stop_fail(stop, step, why);
        return;
    }
    /* The squares of this device's gradients, summed in double (no float can
     * overflow it): non-finite exactly when some gradient is, which is when
     * the whole gradient's norm is, so no device needs another's part. The
     * check is the emulator's, made on the host's side of the device: it
     * charges no modeled time and moves no byte. */
    double sum[4] = {0, 0, 0, 0};
    size_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int k = 0; k < 4; k++) sum[k] += (double)grads[i + k] * grads[i + k];
    for (; i < n; i++) sum[0] += (double)grads[i] * grads[i];
    double norm2 = sum[0] + sum[1] + sum[2] + sum[3];
    if (isfinite(norm2)) return;
    snprintf(why, sizeof why, "the gradient norm is %s (device %d's part)",
             isnan(norm2) ? "nan" : "inf", device);
    tm_stop_fail(stop, step, why);
}
