/* build/train's optimizer for a model, for the programs that train or plan
 * "as build/train would" (the planner, its benchmarks, the tests): what a
 * step's modeled time and memory depend on (the optimizer and its state,
 * clipping) is build/train's; the learning rate is not (a constant 1e-3,
 * where build/train's MLP starts at 0.05 on a cosine schedule).
 * Thread-safety: writes only the config it is given. */
#ifndef TM_RECIPE_H
#define TM_RECIPE_H

#include "strategies/trainer.h"

/* Sets c's optimizer and its hyper-parameters for the model (the MLP:
 * SGD, lr 1e-3, momentum 0.9, weight decay 5e-4;
 * the GPT: AdamW, lr 1e-3, betas 0.9 and 0.99, weight decay 0.1, clipping
 * at 1.0), a constant learning rate, seed 1, shuffled; leaves every other
 * field as it was. */
void tm_train_recipe(tm_train_config *c, int gpt);

#endif
