/* lmzip's portable deterministic inference engine (docs/engine.md).
 *
 * A llama-architecture model (Q4_1/Q8_0 weights) evaluated with logits that are
 * bit-identical on every CPU, compiler, SIMD width, thread count and batch grouping.
 * Plain C11 + pthreads, no Python.
 */
#ifndef LMZ_ENGINE_H
#define LMZ_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The numerics version: part of every file's fingerprint ("portable 1"). */
#define LMZ_ENGINE_NUMERICS 1
/* The weights file layout this engine reads. */
#define LMZ_ENGINE_FORMAT 1
/* Most tokens of one stream evaluated in one internal pass (bigger calls are split;
 * results do not depend on it). */
#define LMZ_MAX_STEP 32

typedef struct lmz_model lmz_model;
typedef struct lmz_stream lmz_stream;

/* Load an engine weights file (mmap).  threads >= 1.  isa: NULL or "" = best the CPU
 * has (or $LMZIP_ENGINE_ISA), else "scalar", "sse2", "ssse3", "avx2", "avx512" (x86-64) or
 * "scalar", "neon", "dotprod" (aarch64).  On error
 * returns NULL and writes a message into err (errlen bytes). */
lmz_model *lmz_load(const char *path, int threads, const char *isa, char *err, size_t errlen);
void lmz_free(lmz_model *m);
/* Check each SIMD f16 -> f32 conversion of this build that the CPU can run (x86-64: SSE2,
 * F16C, AVX-512; aarch64: NEON) against the portable C on every finite f16; writes a line
 * into report.  Returns the number of wrong values. */
long lmz_selfcheck(char *report, size_t len);
int lmz_n_vocab(const lmz_model *m);
int lmz_bos(const lmz_model *m);
const char *lmz_isa(const lmz_model *m);
int lmz_threads(const lmz_model *m);

/* A stream with an empty context and a window of `context` tokens (16..65536). */
lmz_stream *lmz_stream_new(lmz_model *m, int context);
void lmz_stream_free(lmz_stream *s);
int64_t lmz_stream_pos(const lmz_stream *s);
size_t lmz_stream_bytes(const lmz_stream *s);
/* The final normalized hidden state (RMSNorm(x, output_norm), float32, lmz_n_embd values)
 * of the stream's last token whose logits were computed: the output head's input. */
const float *lmz_stream_hidden(const lmz_stream *s);
int lmz_n_embd(const lmz_model *m);

/* Evaluate, for each of n streams, the tokens tokens[i][0..counts[i]) appended to its
 * context (counts[i] >= 1), in one call: the weights are read once per step for all
 * of them.  The logits after each stream's last token go to logits + i * n_vocab
 * (float32).  Returns 0, or -1 on a bad argument (a token out of range). */
int lmz_eval(lmz_model *m, int n, lmz_stream *const *streams, const int32_t *const *tokens,
             const int *counts, float *logits);

/* As lmz_eval, with the logits after every token: rows + r * n_vocab for the r-th token
 * in order (stream 0's tokens, then stream 1's, ...; sum of counts rows).  The same
 * numbers lmz_eval gives for those tokens, however the calls are split. */
int lmz_eval_rows(lmz_model *m, int n, lmz_stream *const *streams, const int32_t *const *tokens,
                  const int *counts, float *rows);

/* Profiling: seconds spent per phase of the forward pass (wall time of the calling
 * thread, which runs and waits for every phase), summed since the last call.  Writes
 * LMZ_PROF_PHASES values into seconds (if not NULL), resets them, and switches the timing
 * on or off (off by default; the timers cost a few microseconds per step).  Returns
 * LMZ_PROF_PHASES.  lmz_profile_name(i): "products", "attention", "rope+cache", "norms"
 * (RMSNorm, activation quantization, residuals, Gemma's GELU), "head" (the logits), "other". */
#define LMZ_PROF_PHASES 6
int lmz_profile(lmz_model *m, int enable, double *seconds);
const char *lmz_profile_name(int phase);

#ifdef __cplusplus
}
#endif
#endif
