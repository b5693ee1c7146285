/*
 * egt_cascade.h - confident-exit cascade of int8 TFLite segments, for microcontrollers.
 *
 * Part of keras-egt (Apache-2.0). Portable C99: no malloc, no libm, no dependency on
 * TensorFlow Lite Micro. The kit does two things:
 *
 *   1. The exit decision in the int8 domain (`egt_should_exit`): exit at segment k iff
 *
 *          max_i q_i >= threshold_int8[k]
 *
 *      where q are the int8 softmax outputs of exit k and
 *
 *          threshold_int8 = clamp(ceil(t / scale + zero_point), -128, 128)
 *
 *      for the float threshold t and the probabilities' quantization (scale, zero_point).
 *      Because q is an integer, q >= ceil(x) <=> q >= x <=> scale * (q - zero_point) >= t:
 *      the decision equals the float rule "max probability >= t" on the dequantized
 *      values, with no float arithmetic on the device. 128 means "never exits" (no int8
 *      value reaches it), -128 "always exits". `keras_egt.export.int8_threshold` is the
 *      same formula in Python; the export writes the values into egt_manifest.h.
 *
 *   2. A driver (`egt_cascade_run`) that runs segments 1, 2, ... through a
 *      caller-supplied invoke function until an exit fires (the last segment always
 *      exits), handing the int8 feature map of segment k to segment k+1 as is. The
 *      export guarantees that the feature leaving segment k has exactly the scale and
 *      zero point of segment k+1's input, so no requantization is needed.
 *
 * Buffers (two "ping-pong" feature buffers)
 * -----------------------------------------
 * Segment 1 writes its feature map into feature_buffers[0], segment 2 reads
 * feature_buffers[0] and writes feature_buffers[1], segment 3 reads [1] and writes [0],
 * and so on. Each buffer must hold the largest feature map of the cascade
 * (EGT_MAX_FEATURE_BYTES in egt_manifest.h). The input of segment 1 may live in
 * feature_buffers[1] (it is no longer needed once segment 1 has run), which saves one
 * input-sized buffer; it must not be feature_buffers[0].
 *
 * With TensorFlow Lite Micro and ONE tensor arena shared by all segments, the
 * interpreter of segment k+1 reuses (overwrites) the arena that holds segment k's
 * output tensors. The invoke function therefore COPIES the outputs out of the arena
 * (probabilities into `probs`, the feature map into `features`) before it returns, and
 * copies `input` into the interpreter's input tensor before Invoke(). The driver never
 * points into an arena, so this is safe whatever the arena strategy (one interpreter
 * re-created per segment, TFLM multi-tenant allocator, or separate arenas).
 * See tflite/README.md for a complete TFLM invoke function.
 *
 * Indices: segments and exits are numbered from 1 (as in manifest.json); class labels
 * from 0.
 *
 * Example:
 *
 *     static const int16_t thresholds[EGT_NUM_SEGMENTS] = EGT_THRESHOLDS_INT8;
 *     static int8_t feat_a[EGT_MAX_FEATURE_BYTES], feat_b[EGT_MAX_FEATURE_BYTES];
 *     static int8_t probs[EGT_NUM_CLASSES];
 *     egt_cascade_t cascade = {EGT_NUM_SEGMENTS, EGT_NUM_CLASSES, thresholds,
 *                              {feat_a, feat_b}, my_invoke, &my_context};
 *     egt_result_t result;
 *     if (egt_cascade_run(&cascade, input_int8, probs, &result) == EGT_OK) {
 *         printf("class %d at exit %d\n", result.label, result.exit_index);
 *     }
 */
#ifndef EGT_CASCADE_H_
#define EGT_CASCADE_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* threshold_int8 values with a fixed meaning. */
#define EGT_ALWAYS_EXIT (-128) /* every int8 probability reaches it */
#define EGT_NEVER_EXIT 128     /* no int8 probability reaches it */

/* Return codes of egt_cascade_run. */
#define EGT_OK 0
#define EGT_ERR_ARG (-1)    /* a NULL pointer, a count < 1, or aliased buffers */
#define EGT_ERR_INVOKE (-2) /* the invoke function returned non-zero; see result */

/*
 * Runs segment `segment` (1-based) of the cascade.
 *
 * Args:
 *   ctx: the cascade's invoke_ctx, passed through untouched (your interpreters, arena).
 *   segment: 1 .. num_segments, called in increasing order, at most once per run.
 *   input: the segment's int8 input: the caller's input for segment 1, else the feature
 *     map written by segment - 1 (same bytes, same quantization).
 *   probs: write the exit's int8 probabilities here (num_classes values).
 *   features: write the segment's int8 feature map here; NULL for the last segment.
 *     Never aliases `input`.
 *
 * Returns:
 *   0 on success; any other value stops the cascade (egt_cascade_run returns
 *   EGT_ERR_INVOKE and stores the value in result->invoke_status).
 */
typedef int (*egt_invoke_fn)(void *ctx, int segment, const int8_t *input, int8_t *probs,
                             int8_t *features);

/* A cascade: plain data, fill it in with an initializer (see the example above). */
typedef struct egt_cascade {
    int num_segments;                /* >= 1 (EGT_NUM_SEGMENTS) */
    int num_classes;                 /* >= 1 (EGT_NUM_CLASSES) */
    const int16_t *thresholds_int8;  /* num_segments values; the last is not read */
    int8_t *feature_buffers[2];      /* ping-pong, each >= the largest feature map;
                                        unused (may be NULL) when num_segments == 1 */
    egt_invoke_fn invoke;            /* runs one segment */
    void *invoke_ctx;                /* passed to invoke */
} egt_cascade_t;

/* What egt_cascade_run decided. */
typedef struct egt_result {
    int label;         /* argmax of the exit's probabilities (lowest index on ties) */
    int exit_index;    /* 1-based segment that exited; on EGT_ERR_INVOKE, the one that failed */
    int8_t confidence; /* the exit's max int8 probability */
    int invoke_status; /* the invoke function's last return value (0 unless it failed) */
} egt_result_t;

/*
 * The exit rule: 1 iff max(probs[0 .. num_classes-1]) >= threshold_int8, else 0.
 *
 * threshold_int8 <= -128 always exits, >= 128 never does. Returns 0 when probs is NULL
 * or num_classes < 1.
 */
int egt_should_exit(const int8_t *probs, int num_classes, int16_t threshold_int8);

/* Index of the largest value, the lowest index on ties (as numpy.argmax); -1 when
 * probs is NULL or num_classes < 1. */
int egt_argmax(const int8_t *probs, int num_classes);

/*
 * The int8 threshold of a float threshold t: clamp(ceil(t / scale + zero_point), -128, 128),
 * computed in double precision as keras_egt.export.int8_threshold does. Pass the
 * threshold as a double (0.9, not 0.9f: the float rounding of 0.9 can move the result).
 * Returns EGT_NEVER_EXIT when scale is not a positive finite number or t is NaN.
 * For changing thresholds at run time; the export already provides them.
 */
int16_t egt_threshold_int8(double threshold, double scale, int32_t zero_point);

/*
 * Runs the cascade on one input until an exit fires.
 *
 * Calls cascade->invoke for segments 1, 2, ... and stops at the first segment k whose
 * probabilities satisfy egt_should_exit(probs, num_classes, thresholds_int8[k-1]); the
 * last segment always exits. Segment k's feature map goes to segment k+1 unchanged.
 *
 * Args:
 *   cascade: the cascade.
 *   input: the int8 model input (segment 1's input tensor bytes). May be
 *     feature_buffers[1], not feature_buffers[0].
 *   probs: scratch for num_classes int8 probabilities; holds the exit's on return.
 *   result: filled in on EGT_OK and EGT_ERR_INVOKE.
 *
 * Returns:
 *   EGT_OK, EGT_ERR_ARG (nothing was run) or EGT_ERR_INVOKE.
 */
int egt_cascade_run(const egt_cascade_t *cascade, const int8_t *input, int8_t *probs,
                    egt_result_t *result);

#ifdef __cplusplus
}
#endif

#endif /* EGT_CASCADE_H_ */
