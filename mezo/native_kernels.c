/* The stochastic numerics' kernels for float32 tensors on CPU, hand-written (mezo/native.py
 * compiles this file with the system C compiler and loads it with ctypes).
 *
 * They compute what mezo/zo.py's _pm_kernel, _pm_rows_kernel and _update_kernel compute with
 * the generator lowbias32-poly-v2 (mezo/noise.py), operation for operation: uint32 hash
 * arithmetic, float32 multiplies and adds rounded separately (compiled with -ffp-contract=off,
 * never -ffast-math), one correctly rounded square root. So the bits are the eager PyTorch
 * path's, which tests/unit/test_native.py checks.
 *
 * Why by hand when torch.compile generates the same loop: the compiler vectorises this plain
 * loop into fewer instructions per element (the index vector, the masked shifts), measured at
 * about 0.7x of the generated kernel's time (BENCHMARKS.md section 9.5). A call below PAR_MIN
 * elements runs on the calling thread, so a norm weight does not wake the thread pool.
 */
#include <stdint.h>
#include <string.h>
#include <math.h>

#define PAR_MIN 65536
#define GAUSSIAN 0

static inline uint32_t mix(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    return x ^ (x >> 16);
}

static inline uint32_t word(uint32_t idx, uint32_t k0, uint32_t k1) {
    return mix(mix(idx ^ k0) ^ k1);
}

static inline float as_float(int32_t b) { float f; memcpy(&f, &b, 4); return f; }
static inline int32_t as_int(float f) { int32_t b; memcpy(&b, &f, 4); return b; }

/* noise._gaussian_v2: sqrt(-2 ln u) from the top 20 bits, sin(phi) from the low 12 */
static inline float gaussian_v2(uint32_t h) {
    int32_t b = as_int((float)(int32_t)(((h >> 11) & 0x1FFFFEu) | 1u));
    int32_t e = (b - 0x3F3504F3) >> 23;
    float x = as_float(b - (int32_t)((uint32_t)e << 23)) - 1.0f;
    float x2 = x * x;
    float x4 = x2 * x2;
    float q = ((x * 1.000014066696167f + -2.0f) + x2 * (x * 0.49913546442985535f + -0.6666945219039917f)) +
              x4 * ((x * 0.34778186678886414f + -0.39805907011032104f) + x2 * (x * 0.19462929666042328f + -0.324788898229599f));
    float r = sqrtf(x * q + (float)(e - 21) * -1.3862943649291992f);
    float t = (float)(((int32_t)(h << 20) >> 19) | 1);
    float y = t * t;
    float y2 = y * y;
    return r * (t * ((y * -9.400005079873708e-12f + 0.0003834951785393059f) +
                     y2 * ((y * -2.4156508365624043e-28f + 6.91189599533381e-20f) + y2 * 4.651693433403073e-37f)));
}

static inline float rademacher(uint32_t h) {
    return 1.0f - 2.0f * (float)(h >> 31);
}

/* Each kernel is written once as a macro over Z, the word -> z function, and expanded for both
 * distributions: the OpenMP-outlined loop then has no branch on the distribution, which would keep
 * the compiler from vectorising it. */

/* (plus, minus) = (theta + eps z, theta - eps z) for theta[0..n) at global indices start.. ;
 * minus may be NULL (one sign). */
#define PM(NAME, Z)                                                                                      \
static void NAME(const float *restrict theta, float *restrict plus, float *restrict minus, int64_t n,   \
                 uint32_t start, uint32_t k0, uint32_t k1, float eps, int threads) {                    \
    if (minus) {                                                                                         \
        _Pragma("omp parallel for simd schedule(simd:static) num_threads(threads) if(n >= PAR_MIN)")     \
        for (int64_t i = 0; i < n; i++) {                                                                \
            float t = eps * Z(word(start + (uint32_t)i, k0, k1));                                        \
            plus[i] = theta[i] + t;                                                                      \
            minus[i] = theta[i] - t;                                                                     \
        }                                                                                                \
    } else {                                                                                             \
        _Pragma("omp parallel for simd schedule(simd:static) num_threads(threads) if(n >= PAR_MIN)")     \
        for (int64_t i = 0; i < n; i++)                                                                  \
            plus[i] = theta[i] + eps * Z(word(start + (uint32_t)i, k0, k1));                             \
    }                                                                                                    \
}
PM(pm_gaussian, gaussian_v2)
PM(pm_rademacher, rademacher)

void mezo_pm(const float *theta, float *plus, float *minus, int64_t n, int32_t start,
             int32_t k0, int32_t k1, float eps, int dist, int threads) {
    (dist == GAUSSIAN ? pm_gaussian : pm_rademacher)(theta, plus, minus, n, (uint32_t)start, (uint32_t)k0,
                                                     (uint32_t)k1, eps, threads);
}

/* The rows `rows` (R of them) of a row-major table with d columns: plus/minus are [R, d], z from
 * the global indices row * d + column. */
void mezo_pm_rows(const float *table, const int64_t *rows, int64_t R, int64_t d, float *plus, float *minus,
                  int32_t k0, int32_t k1, float eps, int dist, int threads) {
    #pragma omp parallel for schedule(static) num_threads(threads) if(R * d >= PAR_MIN)
    for (int64_t r = 0; r < R; r++) {
        int64_t row = rows[r];
        mezo_pm(table + row * d, plus + r * d, minus ? minus + r * d : 0, d, (int32_t)(uint32_t)(row * d),
                k0, k1, eps, dist, 1);
    }
}

/* x <- x - lr * (sum_j cu[j] z(keys[j]) + wd * x), in place (keys: [n_update, 4], as noise.keys) */
#define UPDATE(NAME, Z)                                                                                  \
static void NAME(float *restrict x, int64_t n, uint32_t start, const int32_t *keys, const float *cu,    \
                 int n_update, float lr, float wd, int threads) {                                       \
    uint32_t a0 = (uint32_t)keys[0], a1 = (uint32_t)keys[1];                                             \
    float c0 = cu[0];                                                                                    \
    if (n_update == 1) {                                                                                 \
        _Pragma("omp parallel for simd schedule(simd:static) num_threads(threads) if(n >= PAR_MIN)")     \
        for (int64_t i = 0; i < n; i++) {                                                                \
            float s = c0 * Z(word(start + (uint32_t)i, a0, a1));                                         \
            x[i] = x[i] - lr * (s + wd * x[i]);                                                          \
        }                                                                                                \
        return;                                                                                          \
    }                                                                                                    \
    _Pragma("omp parallel for simd schedule(simd:static) num_threads(threads) if(n >= PAR_MIN)")         \
    for (int64_t i = 0; i < n; i++) {                                                                    \
        uint32_t idx = start + (uint32_t)i;                                                              \
        float s = c0 * Z(word(idx, a0, a1));                                                             \
        for (int j = 1; j < n_update; j++)                                                               \
            s = s + cu[j] * Z(word(idx, (uint32_t)keys[4 * j], (uint32_t)keys[4 * j + 1]));              \
        x[i] = x[i] - lr * (s + wd * x[i]);                                                              \
    }                                                                                                    \
}
UPDATE(update_gaussian, gaussian_v2)
UPDATE(update_rademacher, rademacher)

void mezo_update(float *x, int64_t n, int32_t start, const int32_t *keys, const float *cu, int n_update,
                 float lr, float wd, int dist, int threads) {
    (dist == GAUSSIAN ? update_gaussian : update_rademacher)(x, n, (uint32_t)start, keys, cu, n_update, lr, wd,
                                                             threads);
}
