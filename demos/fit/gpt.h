/* build/fit --model gpt: the memory chapter told on a GPT (demos/fit/gpt.c). */
#ifndef TM_DEMOS_FIT_GPT_H
#define TM_DEMOS_FIT_GPT_H

/* The whole program for --model gpt: parses argv itself. Exit status. */
int tm_fit_gpt(int argc, char **argv);

#endif
