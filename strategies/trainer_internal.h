/* Between trainer.c and trainer_observe.c only. */
#ifndef TM_TRAINER_INTERNAL_H
#define TM_TRAINER_INTERNAL_H

#include "runtime/world.h"
#include "strategies/trainer.h"

/* After a successful run, from the world's recorded events: res->timeline,
 * res->recorded and each device's measured step traffic. TM_OK or
 * TM_EHOSTMEM. */
int tm__train_observe(const tm_world *w, const tm_train_config *cfg, tm_train_result *res);

#endif
