/*
 * host_test.c - host-side checks of the firmware kit and of an exported deploy folder.
 *
 * Build (from the repository root, DEPLOY = a folder written by export_cascade):
 *
 *   gcc -std=c99 -Wall -Wextra -Werror -pedantic -I DEPLOY -I tflite \
 *       tflite/host_test.c tflite/egt_cascade.c DEPLOY/model_data.c -o host_test
 *
 * Commands (tests/test_firmware.py drives them and compares with Python):
 *
 *   host_test info            the constants of egt_manifest.h / model_data.h, "key value"
 *   host_test dump DIR        writes g_egt_segments[k-1] to DIR/segment_<k>.bin and
 *                             prints "segment <k> <len> <aligned 0|1>"
 *   host_test decide FILE     FILE: "<n> <num_classes>" then n lines
 *                             "<threshold_int8> <q_1> .. <q_C>"; prints per line
 *                             "<should_exit> <argmax>"
 *   host_test threshold FILE  FILE: "<n>" then n lines "<t> <scale> <zero_point>" (%la);
 *                             prints egt_threshold_int8 per line
 *   host_test cascade FILE    FILE: "<n> <segments> <classes>", a line of thresholds,
 *                             then per sample "<fail_segment>" and <segments> lines of
 *                             int8 probabilities; runs egt_cascade_run with a fake invoke
 *                             and prints "<rc> <label> <exit> <confidence> <calls>
 *                             <invoke_status> <errors>" per sample
 *   host_test selftest        hand-made cases of the kit; prints "ok" or fails (exit 1)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "egt_cascade.h"
#include "egt_manifest.h"
#include "model_data.h"

#define MAX_CLASSES 1024
#define MAX_SEGMENTS 64

static void die(const char *message) {
    fprintf(stderr, "host_test: %s\n", message);
    exit(2);
}

static FILE *open_or_die(const char *path, const char *mode) {
    FILE *f = fopen(path, mode);
    if (f == NULL) {
        fprintf(stderr, "host_test: cannot open %s\n", path);
        exit(2);
    }
    return f;
}

static int read_int(FILE *f) {
    int v;
    if (fscanf(f, "%d", &v) != 1) {
        die("malformed input file");
    }
    return v;
}

static int8_t read_int8(FILE *f) {
    int v = read_int(f);
    if (v < -128 || v > 127) {
        die("an int8 value is out of range");
    }
    return (int8_t)v;
}

/* ---------------------------------------------------------------- info, dump */

static void print_list(const char *key, const long *values, int n) {
    int i;
    printf("%s", key);
    for (i = 0; i < n; ++i) {
        printf(" %ld", values[i]);
    }
    printf("\n");
}

static int cmd_info(void) {
    const long thresholds[] = EGT_THRESHOLDS_INT8;
    const long arenas[] = EGT_SEGMENT_ARENA_BYTES;
    const long feature_bytes[] = EGT_FEATURE_BYTES;
    const long probs_index[] = EGT_PROBS_OUTPUT_INDICES;
    const long features_index[] = EGT_FEATURES_OUTPUT_INDICES;
    const long input_shape[] = EGT_INPUT_SHAPE;
    long lens[EGT_NUM_SEGMENTS];
    int k;
    printf("num_segments %d\n", EGT_NUM_SEGMENTS);
    printf("model_data_num_segments %d\n", EGT_MODEL_DATA_NUM_SEGMENTS);
    printf("num_classes %d\n", EGT_NUM_CLASSES);
    print_list("input_shape", input_shape, (int)(sizeof input_shape / sizeof input_shape[0]));
    printf("input_bytes %ld\n", (long)EGT_INPUT_BYTES);
    printf("input_scale %.9g\n", (double)EGT_INPUT_SCALE);
    printf("input_zero_point %d\n", EGT_INPUT_ZERO_POINT);
    printf("arena_bytes %ld\n", (long)EGT_ARENA_BYTES);
    printf("arena_bytes_sum %ld\n", (long)EGT_ARENA_BYTES_SUM);
    printf("max_feature_bytes %ld\n", (long)EGT_MAX_FEATURE_BYTES);
    printf("flash_bytes %ld\n", (long)EGT_FLASH_BYTES);
    printf("num_tflm_ops %d\n", EGT_NUM_TFLM_OPS);
    print_list("thresholds_int8", thresholds, EGT_NUM_SEGMENTS);
    print_list("segment_arena_bytes", arenas, EGT_NUM_SEGMENTS);
    print_list("feature_bytes", feature_bytes, EGT_NUM_SEGMENTS);
    print_list("probs_output_indices", probs_index, EGT_NUM_SEGMENTS);
    print_list("features_output_indices", features_index, EGT_NUM_SEGMENTS);
    for (k = 0; k < EGT_NUM_SEGMENTS; ++k) {
        lens[k] = (long)g_egt_segment_lens[k];
    }
    print_list("segment_lens", lens, EGT_NUM_SEGMENTS);
#ifdef EGT_CLASS_NAMES
    {
        const char *names[] = EGT_CLASS_NAMES;
        for (k = 0; k < (int)(sizeof names / sizeof names[0]); ++k) {
            printf("class_name %s\n", names[k]);
        }
    }
#endif
#define EGT_PRINT_OP(name) printf("tflm_op %s\n", #name);
    EGT_FOR_EACH_TFLM_OP(EGT_PRINT_OP)
#undef EGT_PRINT_OP
    /* Segment 1's macros, as a sample of the per-segment block. */
    printf("segment_1_input_scale %.9g\n", (double)EGT_SEGMENT_1_INPUT_SCALE);
    printf("segment_1_input_zero_point %d\n", EGT_SEGMENT_1_INPUT_ZERO_POINT);
    printf("segment_1_probs_scale %.9g\n", (double)EGT_SEGMENT_1_PROBS_SCALE);
    printf("segment_1_probs_zero_point %d\n", EGT_SEGMENT_1_PROBS_ZERO_POINT);
    printf("segment_1_threshold_int8 %d\n", EGT_SEGMENT_1_THRESHOLD_INT8);
    printf("segment_1_flash_bytes %ld\n", (long)EGT_SEGMENT_1_FLASH_BYTES);
    printf("segment_1_arena_bytes %ld\n", (long)EGT_SEGMENT_1_ARENA_BYTES);
    return 0;
}

static int cmd_dump(const char *dir) {
    int k;
    char path[4096];
    for (k = 1; k <= EGT_MODEL_DATA_NUM_SEGMENTS; ++k) {
        const unsigned char *data = g_egt_segments[k - 1];
        size_t len = g_egt_segment_lens[k - 1];
        FILE *f;
        if (strlen(dir) > sizeof path - 32) {
            die("folder name too long");
        }
        sprintf(path, "%s/segment_%d.bin", dir, k);
        f = open_or_die(path, "wb");
        if (fwrite(data, 1, len, f) != len) {
            die("write failed");
        }
        fclose(f);
        printf("segment %d %lu %d\n", k, (unsigned long)len, (int)((uintptr_t)data % 16u == 0));
    }
    return 0;
}

/* ------------------------------------------------------- decide, threshold */

static int cmd_decide(const char *file) {
    static int8_t probs[MAX_CLASSES];
    FILE *f = open_or_die(file, "r");
    int n = read_int(f), num_classes = read_int(f), i, c;
    if (num_classes < 1 || num_classes > MAX_CLASSES) {
        die("num_classes out of range");
    }
    for (i = 0; i < n; ++i) {
        int threshold = read_int(f);
        for (c = 0; c < num_classes; ++c) {
            probs[c] = read_int8(f);
        }
        printf("%d %d\n", egt_should_exit(probs, num_classes, (int16_t)threshold),
               egt_argmax(probs, num_classes));
    }
    fclose(f);
    return 0;
}

static int cmd_threshold(const char *file) {
    FILE *f = open_or_die(file, "r");
    int n = read_int(f), i;
    for (i = 0; i < n; ++i) {
        double t, scale;
        int zero_point;
        if (fscanf(f, "%la %la %d", &t, &scale, &zero_point) != 3) {
            die("malformed threshold line");
        }
        printf("%d\n", egt_threshold_int8(t, scale, (int32_t)zero_point));
    }
    fclose(f);
    return 0;
}

/* ------------------------------------------------------------------ cascade */

/* A fake of the TFLM segments: returns stored probabilities, and as feature map a
 * deterministic function of its input, so that a wrong buffer handoff shows. It checks
 * what the driver passes (order, pointers, contents) and counts violations. */
#define FAKE_MAX_FEATURE 96
#define FAKE_INPUT_BYTES 40

typedef struct fake {
    int num_segments, num_classes, fail_segment;
    const int8_t *probs;  /* num_segments x num_classes */
    const int8_t *model_input;
    int8_t *buffers[2];
    int calls, errors;
    const int8_t *last_features;
    int8_t shadow[FAKE_MAX_FEATURE]; /* what the previous segment wrote */
    size_t shadow_len;
} fake_t;

static size_t fake_feature_len(int segment) {
    /* Different sizes per segment; segments 1, 4, 7 ... fill the buffers exactly. */
    size_t len = (segment % 3 == 1) ? FAKE_MAX_FEATURE : (size_t)(20 + 9 * segment);
    return len < FAKE_MAX_FEATURE ? len : FAKE_MAX_FEATURE;
}

static int fake_invoke(void *ctx, int segment, const int8_t *input, int8_t *probs,
                       int8_t *features) {
    fake_t *fk = (fake_t *)ctx;
    size_t in_len, i, len;
    fk->calls += 1;
    if (segment != fk->calls) {
        fk->errors += 1; /* segments must run 1, 2, 3 ... */
    }
    if (segment == 1) {
        in_len = FAKE_INPUT_BYTES;
        if (input != fk->model_input || memcmp(input, fk->model_input, in_len) != 0) {
            fk->errors += 1;
        }
    } else {
        in_len = fk->shadow_len;
        if (input != fk->last_features || memcmp(input, fk->shadow, in_len) != 0) {
            fk->errors += 1; /* not the previous segment's features, or clobbered */
        }
    }
    if (segment == fk->num_segments) {
        if (features != NULL) {
            fk->errors += 1;
        }
    } else if (features == NULL || features == input ||
               (features != fk->buffers[0] && features != fk->buffers[1])) {
        fk->errors += 1;
        features = NULL;
    }
    if (segment == fk->fail_segment) {
        return 7;
    }
    memcpy(probs, fk->probs + (size_t)(segment - 1) * (size_t)fk->num_classes,
           (size_t)fk->num_classes);
    if (features != NULL) {
        len = fake_feature_len(segment);
        for (i = 0; i < len; ++i) {
            unsigned v = (unsigned)(uint8_t)input[i % in_len] * 31u + (unsigned)segment * 7u + i;
            features[i] = (int8_t)((int)(v % 256u) - 128);
            fk->shadow[i] = features[i];
        }
        fk->shadow_len = len;
        fk->last_features = features;
    }
    return 0;
}

static int cmd_cascade(const char *file) {
    static int8_t table[MAX_SEGMENTS * MAX_CLASSES];
    static int16_t thresholds[MAX_SEGMENTS];
    static int8_t buf_a[FAKE_MAX_FEATURE], buf_b[FAKE_MAX_FEATURE];
    static int8_t model_input[FAKE_INPUT_BYTES];
    static int8_t probs[MAX_CLASSES];
    FILE *f = open_or_die(file, "r");
    int n = read_int(f), num_segments = read_int(f), num_classes = read_int(f);
    int i, k, c;
    egt_cascade_t cascade;
    fake_t fk;
    if (num_segments < 1 || num_segments > MAX_SEGMENTS || num_classes < 1 ||
        num_classes > MAX_CLASSES) {
        die("segments or classes out of range");
    }
    for (k = 0; k < num_segments; ++k) {
        thresholds[k] = (int16_t)read_int(f);
    }
    cascade.num_segments = num_segments;
    cascade.num_classes = num_classes;
    cascade.thresholds_int8 = thresholds;
    cascade.feature_buffers[0] = buf_a;
    cascade.feature_buffers[1] = buf_b;
    cascade.invoke = fake_invoke;
    cascade.invoke_ctx = &fk;
    for (i = 0; i < n; ++i) {
        egt_result_t result;
        int rc;
        memset(&fk, 0, sizeof fk);
        fk.num_segments = num_segments;
        fk.num_classes = num_classes;
        fk.fail_segment = read_int(f);
        for (k = 0; k < num_segments; ++k) {
            for (c = 0; c < num_classes; ++c) {
                table[k * num_classes + c] = read_int8(f);
            }
        }
        for (c = 0; c < FAKE_INPUT_BYTES; ++c) {
            model_input[c] = (int8_t)((i * 17 + c * 3) % 256 - 128);
        }
        fk.probs = table;
        fk.model_input = model_input;
        fk.buffers[0] = buf_a;
        fk.buffers[1] = buf_b;
        memset(&result, 0x7F, sizeof result);
        rc = egt_cascade_run(&cascade, model_input, probs, &result);
        printf("%d %d %d %d %d %d %d\n", rc, result.label, result.exit_index,
               (int)result.confidence, fk.calls, result.invoke_status, fk.errors);
    }
    fclose(f);
    return 0;
}

/* ----------------------------------------------------------------- selftest */

static int failures = 0;

#define CHECK(cond)                                                        \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "host_test: %s:%d: %s\n", __FILE__, __LINE__, #cond); \
            failures += 1;                                                 \
        }                                                                  \
    } while (0)

static int count_invoke(void *ctx, int segment, const int8_t *input, int8_t *probs,
                        int8_t *features) {
    int *calls = (int *)ctx;
    (void)segment;
    (void)input;
    (void)features;
    *calls += 1;
    probs[0] = 10;
    probs[1] = 10; /* a tie: argmax is 0 */
    probs[2] = -128;
    return 0;
}

static int cmd_selftest(void) {
    const int8_t p[4] = {-128, 5, 103, 102};
    const int8_t low[3] = {-128, -128, -128};
    const int8_t high[2] = {127, 127};
    static int8_t a[8], b[8], input[8], probs[3];
    const int16_t thr[3] = {EGT_NEVER_EXIT, EGT_NEVER_EXIT, EGT_NEVER_EXIT};
    egt_cascade_t c;
    egt_result_t r;
    int calls = 0;

    /* The rule: >=, with the fixed values at both ends. */
    CHECK(egt_should_exit(p, 4, 103) == 1); /* tie with the threshold exits */
    CHECK(egt_should_exit(p, 4, 104) == 0);
    CHECK(egt_should_exit(p, 2, 6) == 0);   /* only the first num_classes count */
    CHECK(egt_should_exit(low, 3, EGT_ALWAYS_EXIT) == 1);
    CHECK(egt_should_exit(low, 3, -127) == 0);
    CHECK(egt_should_exit(high, 2, EGT_NEVER_EXIT) == 0);
    CHECK(egt_should_exit(high, 2, 127) == 1);
    CHECK(egt_should_exit(high, 2, 300) == 0);
    CHECK(egt_should_exit(low, 3, -300) == 1);
    CHECK(egt_should_exit(NULL, 3, -128) == 0);
    CHECK(egt_should_exit(p, 0, -128) == 0);
    CHECK(egt_argmax(p, 4) == 2);
    CHECK(egt_argmax(high, 2) == 0);
    CHECK(egt_argmax(low, 3) == 0);
    CHECK(egt_argmax(p, 0) == -1);

    /* Thresholds: softmax outputs have scale 1/256, zero point -128. */
    CHECK(egt_threshold_int8(0.9, 1.0 / 256.0, -128) == 103);  /* ceil(102.4) */
    CHECK(egt_threshold_int8(0.5, 1.0 / 256.0, -128) == 0);    /* exact: no ceil step */
    CHECK(egt_threshold_int8(1.0, 1.0 / 256.0, -128) == EGT_NEVER_EXIT);
    CHECK(egt_threshold_int8(0.0, 1.0 / 256.0, -128) == EGT_ALWAYS_EXIT);
    CHECK(egt_threshold_int8(-5.0, 1.0 / 256.0, -128) == EGT_ALWAYS_EXIT);
    CHECK(egt_threshold_int8(0.3, 0.1, -3) == 0);   /* 0.3 / 0.1 = 2.9999999999999996 */
    CHECK(egt_threshold_int8(-0.25, 0.1, 0) == -2); /* ceil(-2.5) */
    CHECK(egt_threshold_int8(0.9, 0.0, -128) == EGT_NEVER_EXIT);
    CHECK(egt_threshold_int8(0.9, -1.0, -128) == EGT_NEVER_EXIT);

    /* Arguments: nothing runs on bad input. */
    c.num_segments = 3;
    c.num_classes = 3;
    c.thresholds_int8 = thr;
    c.feature_buffers[0] = a;
    c.feature_buffers[1] = b;
    c.invoke = count_invoke;
    c.invoke_ctx = &calls;
    CHECK(egt_cascade_run(&c, input, probs, &r) == EGT_OK);
    CHECK(calls == 3 && r.exit_index == 3 && r.label == 0 && r.confidence == 10);
    CHECK(r.invoke_status == 0);
    calls = 0;
    CHECK(egt_cascade_run(&c, b, probs, &r) == EGT_OK); /* input in buffer 1: allowed */
    CHECK(calls == 3);
    calls = 0;
    CHECK(egt_cascade_run(&c, a, probs, &r) == EGT_ERR_ARG); /* buffer 0: clobbered */
    CHECK(egt_cascade_run(NULL, input, probs, &r) == EGT_ERR_ARG);
    CHECK(egt_cascade_run(&c, NULL, probs, &r) == EGT_ERR_ARG);
    CHECK(egt_cascade_run(&c, input, NULL, &r) == EGT_ERR_ARG);
    CHECK(egt_cascade_run(&c, input, probs, NULL) == EGT_ERR_ARG);
    c.feature_buffers[1] = a;
    CHECK(egt_cascade_run(&c, input, probs, &r) == EGT_ERR_ARG); /* same two buffers */
    c.feature_buffers[1] = NULL;
    CHECK(egt_cascade_run(&c, input, probs, &r) == EGT_ERR_ARG);
    c.feature_buffers[1] = b;
    c.num_segments = 0;
    CHECK(egt_cascade_run(&c, input, probs, &r) == EGT_ERR_ARG);
    c.num_segments = 3;
    c.num_classes = 0;
    CHECK(egt_cascade_run(&c, input, probs, &r) == EGT_ERR_ARG);
    c.num_classes = 3;
    c.thresholds_int8 = NULL;
    CHECK(egt_cascade_run(&c, input, probs, &r) == EGT_ERR_ARG);
    c.thresholds_int8 = thr;
    c.invoke = NULL;
    CHECK(egt_cascade_run(&c, input, probs, &r) == EGT_ERR_ARG);
    c.invoke = count_invoke;
    CHECK(calls == 0);

    /* One segment: no feature buffers needed, it always exits. */
    c.num_segments = 1;
    c.feature_buffers[0] = NULL;
    c.feature_buffers[1] = NULL;
    CHECK(egt_cascade_run(&c, input, probs, &r) == EGT_OK);
    CHECK(calls == 1 && r.exit_index == 1);

    if (failures != 0) {
        fprintf(stderr, "host_test: %d selftest failures\n", failures);
        return 1;
    }
    printf("ok\n");
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "info") == 0) {
        return cmd_info();
    }
    if (argc >= 3 && strcmp(argv[1], "dump") == 0) {
        return cmd_dump(argv[2]);
    }
    if (argc >= 3 && strcmp(argv[1], "decide") == 0) {
        return cmd_decide(argv[2]);
    }
    if (argc >= 3 && strcmp(argv[1], "threshold") == 0) {
        return cmd_threshold(argv[2]);
    }
    if (argc >= 3 && strcmp(argv[1], "cascade") == 0) {
        return cmd_cascade(argv[2]);
    }
    if (argc >= 2 && strcmp(argv[1], "selftest") == 0) {
        return cmd_selftest();
    }
    fprintf(stderr, "usage: host_test info | dump DIR | decide FILE | threshold FILE | "
                    "cascade FILE | selftest\n");
    return 2;
}
