/* The stochastic numerics' kernels for float32 and bfloat16 tensors on CPU, hand-written
 * (mezo/native.py compiles this file with the system C compiler and loads it with ctypes).
 *
 * They compute what mezo/zo.py's _pm_kernel, _pm_rows_kernel and _update_kernel compute with
 * the generator lowbias32-poly-v2 (mezo/noise.py), operation for operation: uint32 hash
 * arithmetic, float32 multiplies and adds rounded separately (compiled with -ffp-contract=off,
 * never -ffast-math), one correctly rounded square root, bf16 rounded as PyTorch rounds it (to
 * nearest even, or stochastically as mezo.zo.stochastic_round). So the bits are the eager
 * PyTorch path's, which tests/unit/test_native.py checks.
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

/* Element types: float32, and bfloat16 held as its 16 bits. bf16 widens exactly to float32 and
 * narrows rounded to nearest even, as PyTorch's cast (NaN to 0x7FC0, as c10::BFloat16; ATen's
 * AVX-512 cast gives 0xFFFF: any NaN is a NaN). */
typedef uint16_t bf16;
#define F32 0
#define BF16 1

static inline float load_f32(float x) { return x; }
static inline float load_bf16(bf16 x) { return as_float((int32_t)((uint32_t)x << 16)); }
static inline float store_f32(float v) { return v; }
static inline bf16 store_bf16(float v) {
    uint32_t u = (uint32_t)as_int(v);
    return (u & 0x7FFFFFFFu) > 0x7F800000u ? (bf16)0x7FC0 : (bf16)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

/* mezo.zo.stochastic_round to bf16: the low 16 random bits added below bf16's mantissa, then
 * truncated (so the magnitude rounds up with the probability of the dropped fraction); a
 * non-finite value is cast as it is */
static inline bf16 store_bf16_sr(float v, uint32_t bits) {
    uint32_t u = (uint32_t)as_int(v);
    float r = as_float((int32_t)((u + (bits & 0xFFFFu)) & ~0xFFFFu));
    return store_bf16((u & 0x7F800000u) != 0x7F800000u ? r : v);
}

/* Each kernel is written once as a macro over the element type and Z, the word -> z function,
 * and expanded for each pair: the OpenMP-outlined loop then has no branch on the type or the
 * distribution, which would keep the compiler from vectorising it. */

/* (plus, minus) = (theta + eps z, theta - eps z) for theta[0..n) at global indices start..,
 * computed in float32 and rounded once to T; minus may be NULL (one sign). */
#define PM(NAME, T, LOAD, STORE, Z)                                                                      \
static void NAME(const T *restrict theta, T *restrict plus, T *restrict minus, int64_t n,               \
                 uint32_t start, uint32_t k0, uint32_t k1, float eps, int threads) {                    \
    if (minus) {                                                                                         \
        _Pragma("omp parallel for simd schedule(simd:static) num_threads(threads) if(n >= PAR_MIN)")     \
        for (int64_t i = 0; i < n; i++) {                                                                \
            float v = LOAD(theta[i]);                                                                    \
            float t = eps * Z(word(start + (uint32_t)i, k0, k1));                                        \
            plus[i] = STORE(v + t);                                                                      \
            minus[i] = STORE(v - t);                                                                     \
        }                                                                                                \
    } else {                                                                                             \
        _Pragma("omp parallel for simd schedule(simd:static) num_threads(threads) if(n >= PAR_MIN)")     \
        for (int64_t i = 0; i < n; i++)                                                                  \
            plus[i] = STORE(LOAD(theta[i]) + eps * Z(word(start + (uint32_t)i, k0, k1)));                \
    }                                                                                                    \
}
PM(pm_f32_gaussian, float, load_f32, store_f32, gaussian_v2)
PM(pm_f32_rademacher, float, load_f32, store_f32, rademacher)
PM(pm_bf16_gaussian, bf16, load_bf16, store_bf16, gaussian_v2)
PM(pm_bf16_rademacher, bf16, load_bf16, store_bf16, rademacher)

void mezo_pm(const void *theta, void *plus, void *minus, int64_t n, int32_t start, int32_t k0, int32_t k1,
             float eps, int dtype, int dist, int threads) {
    uint32_t s = (uint32_t)start, a = (uint32_t)k0, b = (uint32_t)k1;
    if (dtype == F32)
        (dist == GAUSSIAN ? pm_f32_gaussian : pm_f32_rademacher)(theta, plus, minus, n, s, a, b, eps, threads);
    else
        (dist == GAUSSIAN ? pm_bf16_gaussian : pm_bf16_rademacher)(theta, plus, minus, n, s, a, b, eps, threads);
}

/* The rows `rows` (R of them) of a row-major table with d columns: plus/minus are [R, d], z from
 * the global indices row * d + column. */
void mezo_pm_rows(const void *table, const int64_t *rows, int64_t R, int64_t d, void *plus, void *minus,
                  int32_t k0, int32_t k1, float eps, int dtype, int dist, int threads) {
    int64_t size = dtype == F32 ? 4 : 2;
    #pragma omp parallel for schedule(static) num_threads(threads) if(R * d >= PAR_MIN)
    for (int64_t r = 0; r < R; r++) {
        int64_t row = rows[r];
        mezo_pm((const char *)table + row * d * size, (char *)plus + r * d * size,
                minus ? (char *)minus + r * d * size : 0, d, (int32_t)(uint32_t)(row * d), k0, k1, eps, dtype,
                dist, 1);
    }
}

/* x <- ROUND(x - lr * (sum_j cu[j] z(keys[j]) + wd * x)), in place, computed in float32 (keys:
 * [n_update, 4], as noise.keys; s0, s1: the keys of the rounding bits) */
#define ROUND_F32(v, idx) (v)
#define ROUND_BF16(v, idx) store_bf16(v)
#define ROUND_BF16_SR(v, idx) store_bf16_sr(v, word(idx, s0, s1))
#define UPDATE(NAME, T, LOAD, ROUND, Z)                                                                  \
static void NAME(T *restrict x, int64_t n, uint32_t start, const int32_t *keys, const float *cu,        \
                 int n_update, float lr, float wd, uint32_t s0, uint32_t s1, int threads) {             \
    uint32_t a0 = (uint32_t)keys[0], a1 = (uint32_t)keys[1];                                             \
    float c0 = cu[0];                                                                                    \
    (void)s0; (void)s1;                                                                                  \
    if (n_update == 1) {                                                                                 \
        _Pragma("omp parallel for simd schedule(simd:static) num_threads(threads) if(n >= PAR_MIN)")     \
        for (int64_t i = 0; i < n; i++) {                                                                \
            uint32_t idx = start + (uint32_t)i;                                                          \
            float v = LOAD(x[i]);                                                                        \
            float s = c0 * Z(word(idx, a0, a1));                                                         \
            v = v - lr * (s + wd * v);                                                                   \
            x[i] = ROUND(v, idx);                                                                        \
        }                                                                                                \
        return;                                                                                          \
    }                                                                                                    \
    _Pragma("omp parallel for simd schedule(simd:static) num_threads(threads) if(n >= PAR_MIN)")         \
    for (int64_t i = 0; i < n; i++) {                                                                    \
        uint32_t idx = start + (uint32_t)i;                                                              \
        float v = LOAD(x[i]);                                                                            \
        float s = c0 * Z(word(idx, a0, a1));                                                             \
        for (int j = 1; j < n_update; j++)                                                               \
            s = s + cu[j] * Z(word(idx, (uint32_t)keys[4 * j], (uint32_t)keys[4 * j + 1]));              \
        v = v - lr * (s + wd * v);                                                                       \
        x[i] = ROUND(v, idx);                                                                            \
    }                                                                                                    \
}
UPDATE(update_f32_gaussian, float, load_f32, ROUND_F32, gaussian_v2)
UPDATE(update_f32_rademacher, float, load_f32, ROUND_F32, rademacher)
UPDATE(update_bf16_gaussian, bf16, load_bf16, ROUND_BF16, gaussian_v2)
UPDATE(update_bf16_rademacher, bf16, load_bf16, ROUND_BF16, rademacher)
UPDATE(update_bf16_sr_gaussian, bf16, load_bf16, ROUND_BF16_SR, gaussian_v2)
UPDATE(update_bf16_sr_rademacher, bf16, load_bf16, ROUND_BF16_SR, rademacher)

/* ksr: the rounding bits' keys (bf16 rounded stochastically), or NULL (float32; bf16 rounded to
 * nearest) */
void mezo_update(void *x, int64_t n, int32_t start, const int32_t *keys, const float *cu, int n_update,
                 float lr, float wd, const int32_t *ksr, int dtype, int dist, int threads) {
    uint32_t s = (uint32_t)start, s0 = ksr ? (uint32_t)ksr[0] : 0, s1 = ksr ? (uint32_t)ksr[1] : 0;
    int g = dist == GAUSSIAN;
    if (dtype == F32)
        (g ? update_f32_gaussian : update_f32_rademacher)(x, n, s, keys, cu, n_update, lr, wd, s0, s1, threads);
    else if (!ksr)
        (g ? update_bf16_gaussian : update_bf16_rademacher)(x, n, s, keys, cu, n_update, lr, wd, s0, s1, threads);
    else
        (g ? update_bf16_sr_gaussian : update_bf16_sr_rademacher)(x, n, s, keys, cu, n_update, lr, wd, s0, s1,
                                                                 threads);
}
