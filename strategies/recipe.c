/* build/train's optimizer for a model (strategies/recipe.h). */
#include "strategies/recipe.h"

void tm_train_recipe(tm_train_config *c, int gpt)
{
    c->optimizer = gpt ? TM_OPT_ADAMW : TM_OPT_SGD;
    c->lr = 1e-3;
    c->momentum = 0.9;
    c->beta1 = 0.9;
    c->beta2 = gpt ? 0.99 : 0.999;
    c->weight_decay = gpt ? 0.1 : 5e-4;
    c->clip_grad = gpt ? 1.0 : 0;
    c->lr_schedule = TM_LR_CONSTANT;
    c->seed = 1;
    c->shuffle = 1;
}
