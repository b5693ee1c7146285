/*
 * egt_cascade.c - see egt_cascade.h. Portable C99, no malloc, no libm.
 */
#include "egt_cascade.h"

int egt_should_exit(const int8_t *probs, int num_classes, int16_t threshold_int8) {
    int i;
    if (probs == NULL || num_classes < 1) {
        return 0;
    }
    for (i = 0; i < num_classes; ++i) {
        /* int8 promoted to int: 128 is never reached, -128 always is. */
        if ((int)probs[i] >= (int)threshold_int8) {
            return 1;
        }
    }
    return 0;
}

int egt_argmax(const int8_t *probs, int num_classes) {
    int i, best = 0;
    if (probs == NULL || num_classes < 1) {
        return -1;
    }
    for (i = 1; i < num_classes; ++i) {
        if (probs[i] > probs[best]) { /* strict: the first maximum wins */
            best = i;
        }
    }
    return best;
}

int16_t egt_threshold_int8(double threshold, double scale, int32_t zero_point) {
    double x;
    long truncated;
    /* NaN fails every comparison; inf - inf is NaN: rejects NaN and infinite scales. */
    if (!(scale > 0.0) || !(scale - scale == 0.0) || threshold != threshold) {
        return EGT_NEVER_EXIT;
    }
    x = threshold / scale + (double)zero_point;
    /* Clamp before the ceiling so the cast below is in range; same result. */
    if (x >= 128.0) {
        return EGT_NEVER_EXIT;
    }
    if (x <= -128.0) {
        return EGT_ALWAYS_EXIT;
    }
    truncated = (long)x; /* toward zero */
    if ((double)truncated < x) {
        truncated += 1; /* ceil of a positive non-integer */
    }
    return (int16_t)truncated;
}

static int valid_cascade(const egt_cascade_t *c, const int8_t *input, const int8_t *probs) {
    if (c == NULL || input == NULL || probs == NULL || c->invoke == NULL ||
        c->thresholds_int8 == NULL || c->num_segments < 1 || c->num_classes < 1) {
        return 0;
    }
    if (c->num_segments > 1) {
        if (c->feature_buffers[0] == NULL || c->feature_buffers[1] == NULL ||
            c->feature_buffers[0] == c->feature_buffers[1] ||
            input == c->feature_buffers[0]) {
            return 0;
        }
    }
    return 1;
}

int egt_cascade_run(const egt_cascade_t *cascade, const int8_t *input, int8_t *probs,
                    egt_result_t *result) {
    const int8_t *segment_input = input;
    int k;
    if (result == NULL || !valid_cascade(cascade, input, probs)) {
        return EGT_ERR_ARG;
    }
    for (k = 1; k <= cascade->num_segments; ++k) {
        int last = (k == cascade->num_segments);
        /* Segment k writes buffer (k-1) % 2: never the one it reads. */
        int8_t *features = last ? NULL : cascade->feature_buffers[(k - 1) % 2];
        int status = cascade->invoke(cascade->invoke_ctx, k, segment_input, probs, features);
        result->invoke_status = status;
        result->exit_index = k;
        if (status != 0) {
            result->label = -1;
            result->confidence = 0;
            return EGT_ERR_INVOKE;
        }
        if (last || egt_should_exit(probs, cascade->num_classes, cascade->thresholds_int8[k - 1])) {
            break;
        }
        segment_input = features;
    }
    result->label = egt_argmax(probs, cascade->num_classes);
    result->confidence = probs[result->label];
    return EGT_OK;
}
