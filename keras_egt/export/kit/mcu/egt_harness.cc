/*
 * egt_harness.cc - a test firmware for an exported EGT cascade on an emulated Cortex-M4.
 *
 * Part of keras-egt (Apache-2.0). `keras_egt.export.firmware.run_firmware` (CLI:
 * `keras-egt firmware DEPLOY_DIR`) compiles it with TFLM + CMSIS-NN for the MPS2 AN386
 * board, runs it under `qemu-system-arm -icount`, and parses what it prints. It is also a
 * worked example of egt_cascade.h (beside it in the kit) with TFLM (tflite/README.md, sections 4, 7):
 * `keras-egt firmware` builds option C: one interpreter per segment, allocated once at boot in its own arena
 * region, so a sample pays no set-up; EGT_FW_SHARED_ARENA=1 builds option A (one
 * shared arena, an interpreter built and allocated per segment per sample).
 *
 * Inputs (compile-time):
 *   egt_manifest.h, model_data.h/.c   the export (keras_egt.export.c_sources)
 *   egt_samples.h/.c                  EGT_NUM_SAMPLES int8 inputs, quantized on the host
 *                                     with segment 1's input parameters
 *   EGT_FW_ARENA_BYTES                the arena (all regions together)
 *   EGT_FW_SHARED_ARENA               1: option A (see above); 0: per-segment regions of
 *                                     EGT_FW_SEGMENT_ARENAS ({bytes, ...}, 16-byte multiples)
 *   EGT_FW_PROBE                      1: only find each segment's smallest arena (bisection
 *                                     of AllocateTensors in the shared arena) and stop
 *
 * Clock: SysTick on the core clock (25 MHz on the MPS2 board, QEMU's emulated time), with
 * a 24-bit reload and an overflow count in its interrupt. Under `-icount shift=S` every
 * instruction advances emulated time by 2^S ns, so ticks count instructions exactly (up
 * to the 40 / 2^S ratio). A calibration loop of a known instruction count is printed
 * first so the host can check that assumption.
 *
 * Output, one record per line (space separated, parsed by firmware.py):
 *   egt-harness 1
 *   calibration <instructions> <ticks>    a subs/bne loop of known length
 *   overhead <ticks>                      one empty measurement (subtracted on the host)
 *   resolver <code> ...                   the builtin operator codes the op resolver finds
 *   boot <ticks>                          (per-segment regions) allocating every interpreter
 *   arena <k> <bytes> <used> <rc>         (probe) smallest arena for segment k, its
 *                                         arena_used_bytes(), and the status of a run in it
 *   used <k> <arena_used_bytes>           (run) after AllocateTensors, first sample
 *   c <i> <rc> <label> <exit> <conf> <ticks> then per segment <setup> <invoke> (0 0 when
 *     not run)                            the cascade with the export's thresholds
 *   f <i> <rc> <label> <conf> <ticks> then per segment <setup> <invoke>
 *                                         the same segments straight through (no early exit)
 *   stack <bytes>                         deepest stack use seen (painted stack)
 *   heap <bytes>                          heap used (newlib's printf buffers)
 *   done
 */
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>

#include "ARMCM4.h"
#include "tensorflow/lite/micro/cortex_m_generic/debug_log_callback.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"

#include "egt_cascade.h"
#include "egt_manifest.h"
#include "egt_samples.h"
#include "model_data.h"

#ifndef EGT_FW_ARENA_BYTES
#error "define EGT_FW_ARENA_BYTES (the shared TFLM arena)"
#endif
#ifndef EGT_FW_PROBE
#define EGT_FW_PROBE 0
#endif
#ifndef EGT_FW_SHARED_ARENA
#define EGT_FW_SHARED_ARENA 1
#endif
#if !EGT_FW_SHARED_ARENA && !defined(EGT_FW_SEGMENT_ARENAS)
#error "define EGT_FW_SEGMENT_ARENAS ({bytes, ...}, one region per segment)"
#endif

namespace {

constexpr size_t kBufferBytes =
    EGT_MAX_FEATURE_BYTES > EGT_INPUT_BYTES ? EGT_MAX_FEATURE_BYTES : EGT_INPUT_BYTES;

// The arena gets its own section, so the size report can name it.
__attribute__((section(".bss.egt_arena"), aligned(16))) uint8_t g_arena[EGT_FW_ARENA_BYTES];
alignas(16) int8_t g_buffer_a[kBufferBytes];
alignas(16) int8_t g_buffer_b[kBufferBytes];  // also holds the model input
int8_t g_probs[EGT_NUM_CLASSES];

tflite::MicroMutableOpResolver<EGT_NUM_TFLM_OPS> g_resolver;
const int g_probs_index[EGT_NUM_SEGMENTS] = EGT_PROBS_OUTPUT_INDICES;
const int g_features_index[EGT_NUM_SEGMENTS] = EGT_FEATURES_OUTPUT_INDICES;
const int16_t g_thresholds[EGT_NUM_SEGMENTS] = EGT_THRESHOLDS_INT8;
int16_t g_never[EGT_NUM_SEGMENTS];

volatile uint32_t g_wraps;
bool g_quiet = false;
size_t g_arena_bytes = EGT_FW_ARENA_BYTES;
uint32_t g_setup_ticks[EGT_NUM_SEGMENTS];
uint32_t g_invoke_ticks[EGT_NUM_SEGMENTS];
size_t g_used[EGT_NUM_SEGMENTS];

#if !EGT_FW_SHARED_ARENA
const size_t g_region_bytes[EGT_NUM_SEGMENTS] = EGT_FW_SEGMENT_ARENAS;
// The interpreters live for the whole run: constructed in place at boot, never destroyed.
alignas(tflite::MicroInterpreter) uint8_t
    g_interpreter_storage[EGT_NUM_SEGMENTS][sizeof(tflite::MicroInterpreter)];
tflite::MicroInterpreter* g_interpreters[EGT_NUM_SEGMENTS];
#endif

void Log(const char* s) {
  if (!g_quiet) std::printf("tflm: %s", s);
}

uint64_t Now() {
  uint32_t wraps, value, pending;
  do {
    wraps = g_wraps;
    value = SysTick->VAL;
    pending = SCB->ICSR & SCB_ICSR_PENDSTSET_Msk;
  } while (wraps != g_wraps);
  // Wrapped, interrupt not taken yet: the count restarted near the reload value.
  if (pending && value > (SysTick_LOAD_RELOAD_Msk >> 1)) ++wraps;
  return (static_cast<uint64_t>(wraps) << 24) + (SysTick_LOAD_RELOAD_Msk - value);
}

void StartClock() {
  SysTick->LOAD = SysTick_LOAD_RELOAD_Msk;
  SysTick->VAL = 0;
  SysTick->CTRL = SysTick_CTRL_CLKSOURCE_Msk | SysTick_CTRL_TICKINT_Msk | SysTick_CTRL_ENABLE_Msk;
  while (SysTick->VAL == 0) {
  }  // the first reload
}

bool RegisterOps() {
#define EGT_ADD_OP(name) \
  if (g_resolver.Add##name() != kTfLiteOk) return false;
  EGT_FOR_EACH_TFLM_OP(EGT_ADD_OP)
#undef EGT_ADD_OP
  return true;
}

// Copies the input in, runs, copies the outputs out (before the arena is reused), and
// records the set-up + copy ticks (from `start`) and the Invoke ticks.
int RunInterpreter(tflite::MicroInterpreter& interpreter, int k, const int8_t* input,
                   int8_t* probs, int8_t* features, uint64_t start) {
  TfLiteTensor* in = interpreter.input(0);
  if (in->type != kTfLiteInt8 || in->bytes > kBufferBytes) return 3;
  std::memcpy(in->data.int8, input, in->bytes);
  const uint64_t ready = Now();
  if (interpreter.Invoke() != kTfLiteOk) return 4;
  const uint64_t invoked = Now();
  const TfLiteTensor* p = interpreter.output(g_probs_index[k]);
  if (p->bytes != EGT_NUM_CLASSES) return 5;
  std::memcpy(probs, p->data.int8, EGT_NUM_CLASSES);
  if (features != nullptr) {
    const TfLiteTensor* f = interpreter.output(g_features_index[k]);
    if (f->bytes > kBufferBytes) return 6;
    std::memcpy(features, f->data.int8, f->bytes);
  }
  const uint64_t end = Now();
  g_invoke_ticks[k] = static_cast<uint32_t>(invoked - ready);
  g_setup_ticks[k] = static_cast<uint32_t>((ready - start) + (end - invoked));
  return 0;
}

// egt_invoke_fn of option A: an interpreter in the shared arena, per segment per sample.
int InvokeShared(void* /*ctx*/, int segment, const int8_t* input, int8_t* probs,
                 int8_t* features) {
  const int k = segment - 1;
  const uint64_t start = Now();
  const tflite::Model* model = tflite::GetModel(g_egt_segments[k]);
  if (model->version() != TFLITE_SCHEMA_VERSION) return 1;
  tflite::MicroInterpreter interpreter(model, g_resolver, g_arena, g_arena_bytes);
  if (interpreter.AllocateTensors() != kTfLiteOk) return 2;
  g_used[k] = interpreter.arena_used_bytes();
  return RunInterpreter(interpreter, k, input, probs, features, start);
}

#if !EGT_FW_SHARED_ARENA
// Once at boot: segment k's interpreter in its own region, allocated for good.
int AllocateInterpreters() {
  size_t offset = 0;
  for (int k = 0; k < EGT_NUM_SEGMENTS; ++k) {
    const tflite::Model* model = tflite::GetModel(g_egt_segments[k]);
    if (model->version() != TFLITE_SCHEMA_VERSION) return 1;
    if (offset + g_region_bytes[k] > EGT_FW_ARENA_BYTES) return 2;
    g_interpreters[k] = new (g_interpreter_storage[k])
        tflite::MicroInterpreter(model, g_resolver, g_arena + offset, g_region_bytes[k]);
    if (g_interpreters[k]->AllocateTensors() != kTfLiteOk) return 2;
    g_used[k] = g_interpreters[k]->arena_used_bytes();
    offset += g_region_bytes[k];
  }
  return 0;
}

// egt_invoke_fn of the per-segment design: only the copies around Invoke.
int InvokeAllocated(void* /*ctx*/, int segment, const int8_t* input, int8_t* probs,
                    int8_t* features) {
  const int k = segment - 1;
  return RunInterpreter(*g_interpreters[k], k, input, probs, features, Now());
}
#endif

bool Allocates(int k, size_t bytes) {
  tflite::MicroInterpreter interpreter(tflite::GetModel(g_egt_segments[k]), g_resolver,
                                       g_arena, bytes);
  return interpreter.AllocateTensors() == kTfLiteOk;
}

int Probe() {
  g_quiet = true;
  for (int k = 0; k < EGT_NUM_SEGMENTS; ++k) {
    size_t low = 0, high = EGT_FW_ARENA_BYTES;  // low fails, high allocates
    if (!Allocates(k, high)) {
      std::printf("arena %d 0 0\n", k + 1);  // too small even at the full size
      continue;
    }
    while (high - low > 1) {
      const size_t middle = low + (high - low) / 2;
      if (Allocates(k, middle)) {
        high = middle;
      } else {
        low = middle;
      }
    }
    // Verify: the segment runs in exactly that arena.
    g_arena_bytes = high;
    std::memset(g_buffer_b, EGT_INPUT_ZERO_POINT, kBufferBytes);
    int rc = InvokeShared(nullptr, k + 1, g_buffer_b, g_probs,
                           k + 1 < EGT_NUM_SEGMENTS ? g_buffer_a : nullptr);
    g_arena_bytes = EGT_FW_ARENA_BYTES;
    std::printf("arena %d %lu %lu %d\n", k + 1, static_cast<unsigned long>(high),
                static_cast<unsigned long>(g_used[k]), rc);
  }
  g_quiet = false;
  return 0;
}

void PrintSegments() {
  for (int k = 0; k < EGT_NUM_SEGMENTS; ++k) {
    std::printf(" %lu %lu", static_cast<unsigned long>(g_setup_ticks[k]),
                static_cast<unsigned long>(g_invoke_ticks[k]));
  }
  std::printf("\n");
}

uintptr_t StackPointer() {
  uintptr_t sp;
  __asm volatile("mov %0, sp" : "=r"(sp));
  return sp;
}

}  // namespace

extern "C" {
// From the linker script (mcu/mps2_an386.ld of the kit).
extern uint32_t __StackLimit, __StackTop, end;
void initialise_monitor_handles(void);  // librdimon: semihosting stdio
void __libc_init_array(void);
void* _sbrk(int increment);

// Linked with -nostartfiles: the CMSIS startup (startup_ARMCM4.c) copies .data and
// zeroes .bss, then calls _start; newlib's crt0 would move the stack to where the
// semihosting host says RAM ends, outside the memory map the size report describes.
void _init(void) {}
void _fini(void) {}
void* __dso_handle = &__dso_handle;  // crtbegin.o's, for static destructors (never run)
__attribute__((noreturn)) void _start(void);
}

extern "C" void HardFault_Handler(void) {
  std::printf("fault hard\n");
  std::exit(3);
}

extern "C" void SysTick_Handler(void) { ++g_wraps; }

int main(void) {
  // Paint the free stack, to measure its deepest use (from the top) at the end.
  volatile uint32_t* paint = &__StackLimit;
  const uintptr_t top = reinterpret_cast<uintptr_t>(&__StackTop);
  for (volatile uint32_t* p = paint; reinterpret_cast<uintptr_t>(p) < StackPointer() - 64; ++p) {
    *p = 0xA5A5A5A5u;
  }

  std::printf("egt-harness 1\n");
  RegisterDebugLogCallback(Log);
  StartClock();
  {
    uint32_t n = 100000;
    const uint64_t a = Now();
    __asm volatile("1: subs %0, %0, #1\n bne 1b" : "+r"(n) : : "cc");
    const uint64_t b = Now();
    std::printf("calibration %lu %lu\n", 200000ul, static_cast<unsigned long>(b - a));
    const uint64_t c = Now();
    const uint64_t d = Now();
    std::printf("overhead %lu\n", static_cast<unsigned long>(d - c));
  }
  if (!RegisterOps()) {
    std::printf("error ops\n");
    return 1;
  }
  std::printf("resolver");
  for (int op = tflite::BuiltinOperator_MIN; op <= tflite::BuiltinOperator_MAX; ++op) {
    if (g_resolver.FindOp(static_cast<tflite::BuiltinOperator>(op)) != nullptr) {
      std::printf(" %d", op);
    }
  }
  std::printf("\n");
  if (EGT_FW_PROBE) {
    Probe();
    std::printf("done\n");
    return 0;
  }
#if EGT_FW_SHARED_ARENA
  egt_invoke_fn invoke = InvokeShared;
#else
  egt_invoke_fn invoke = InvokeAllocated;
  {
    const uint64_t start = Now();
    const int rc = AllocateInterpreters();
    const uint64_t end = Now();
    if (rc != 0) {
      std::printf("error allocate %d\n", rc);
      return 1;
    }
    std::printf("boot %lu\n", static_cast<unsigned long>(end - start));
  }
#endif
  for (int k = 0; k < EGT_NUM_SEGMENTS; ++k) g_never[k] = EGT_NEVER_EXIT;
  egt_cascade_t cascade = {EGT_NUM_SEGMENTS, EGT_NUM_CLASSES, g_thresholds,
                           {g_buffer_a, g_buffer_b}, invoke, nullptr};
  egt_cascade_t straight = cascade;
  straight.thresholds_int8 = g_never;
  for (int i = 0; i < EGT_NUM_SAMPLES; ++i) {
    for (int pass = 0; pass < 2; ++pass) {
      egt_result_t result;
      std::memset(g_setup_ticks, 0, sizeof g_setup_ticks);
      std::memset(g_invoke_ticks, 0, sizeof g_invoke_ticks);
      std::memcpy(g_buffer_b, g_egt_samples[i], EGT_INPUT_BYTES);
      const uint64_t start = Now();
      const int rc = egt_cascade_run(pass == 0 ? &cascade : &straight, g_buffer_b, g_probs, &result);
      const unsigned long ticks = static_cast<unsigned long>(Now() - start);
      if (i == 0 && pass == 1) {
        for (int k = 0; k < EGT_NUM_SEGMENTS; ++k) {
          std::printf("used %d %lu\n", k + 1, static_cast<unsigned long>(g_used[k]));
        }
      }
      if (pass == 0) {
        std::printf("c %d %d %d %d %d %lu", i, rc, result.label, result.exit_index,
                    result.confidence, ticks);
      } else {
        std::printf("f %d %d %d %d %lu", i, rc, result.label, result.confidence, ticks);
      }
      PrintSegments();
      if (rc != EGT_OK) {
        std::printf("error invoke %d segment %d status %d\n", i, result.exit_index,
                    result.invoke_status);
        return 1;
      }
    }
  }
  const uint32_t* low = const_cast<const uint32_t*>(paint);
  while (reinterpret_cast<uintptr_t>(low) < top && *low == 0xA5A5A5A5u) ++low;
  std::printf("stack %lu\n", static_cast<unsigned long>(top - reinterpret_cast<uintptr_t>(low)));
  std::printf("heap %lu\n", static_cast<unsigned long>(reinterpret_cast<uintptr_t>(_sbrk(0)) -
                                                       reinterpret_cast<uintptr_t>(&end)));
  std::printf("done\n");
  return 0;
}

extern "C" __attribute__((noreturn)) void _start(void) {
  initialise_monitor_handles();
  __libc_init_array();  // C++ constructors (the op resolver)
  std::exit(main());
}
