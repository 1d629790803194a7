/* The lab's loops for the CPU, built by engine/cpu/kernels.py with the system's C compiler for the machine it runs on.
 *
 * Softmax attention for small heads, two loops, one exported function each:
 *
 * attention_lanes (where the CPU has AVX-512): sixteen queries of one head at once, one per lane of a register, so
 *   that every step over the keys is whole-register work with no sum across lanes - the scores of a key, their
 *   running max, then 2^(s - max), its sum and the weighted values. q, k, v and out are (B, L|S, H * D) as the
 *   layer's projections give them; the scale comes with log2(e) folded in, so the exponential is a power of two
 *   (a rounding, a degree-6 polynomial and a scalef).
 * attention (any CPU): one query row at a time, every loop along the tokens, with the keys and values token-last,
 *   (B, H * D, S), so that each loop reads consecutive floats and the compiler vectorises it.
 *
 * geglu (where the CPU has AVX-512): the feed-forward gate, (a + bias) * gelu(g + bias), in one pass over the
 *   projection's output [a | g], with erf as torch's vectorised CPU kernel computes it.
 */
#include <float.h>
#include <stdint.h>

/* exp(x) for x <= 0 as 2^n p(r), with Cephes' expf polynomial; vectorisable, unlike the libm call. */
static inline float exp_nonpositive(float x) {
    x = x < -87.0f ? -87.0f : x;
    float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t i; float f; } two_n = { ((int32_t)n + 127) << 23 };
    return p * two_n.f;
}

/* One query row of one head: scores and their max, then exp, its sum and the weighted sum of values at once. */
static inline __attribute__((always_inline)) void attend_row(
        const float* q, const float* kt, const float* vt, float* out, long S, float scale, float* scores,
        const int D) {
    float qs[8], m = -FLT_MAX;
    for (int c = 0; c < D; c++) qs[c] = q[c] * scale;
    for (long j = 0; j < S; j++) {
        float s = 0.0f;
        for (int c = 0; c < D; c++) s += qs[c] * kt[c * S + j];
        scores[j] = s;
        m = s > m ? s : m;
    }
    float z = 0.0f, o[8] = {0};
    for (long j = 0; j < S; j++) {
        float e = exp_nonpositive(scores[j] - m);
        z += e;
        for (int c = 0; c < D; c++) o[c] += e * vt[c * S + j];
    }
    for (int c = 0; c < D; c++) out[c] = o[c] / z;
}

/* Returns 0, or 1 for a head size it has no loop for (4 and 8); scores is scratch for S floats. */
int attention(const float* q, const float* kt, const float* vt, float* out, long B, long L, long S, long H, long D,
              float scale, float* scores) {
    if (D != 4 && D != 8) return 1;
    for (long b = 0; b < B; b++)
        for (long h = 0; h < H; h++) {
            const float* k_head = kt + (b * H + h) * D * S;
            const float* v_head = vt + (b * H + h) * D * S;
            for (long l = 0; l < L; l++) {
                long row = (b * L + l) * H * D + h * D;
                if (D == 4) attend_row(q + row, k_head, v_head, out + row, S, scale, scores, 4);
                else attend_row(q + row, k_head, v_head, out + row, S, scale, scores, 8);
            }
        }
    return 0;
}

#if defined(__AVX512F__)
#include <immintrin.h>

#include "exp2.h"

/* 2^x for |x| <= EXP2_BOUND as 2^n p(f), n = round(x), f = x - n in [-1/2, 1/2]. */
static inline __m512 exp2_bounded(__m512 x) {
    __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return _mm512_scalef_ps(exp2_fraction16(_mm512_sub_ps(x, n)), n);
}

/* 2^x for x <= 0, x held above -125 so that no result is subnormal. */
static inline __m512 exp2_nonpositive(__m512 x) {
    return exp2_bounded(_mm512_max_ps(x, _mm512_set1_ps(-125.0f)));
}

/* Scores of at most this size (base 2) are taken as they are, without subtracting their max: 2^60 leaves room for
 * sums over 2^60 / max|v| keys before a float overflows, and 2^-60 is far from the subnormals. */
#define EXP2_BOUND 60.0f

/* Up to 16 queries (`valid`) of one head, rows `stride` floats apart in q, k, v and out; scores: scratch, 16 S.
 * `bounded`: every score of these queries is known to lie within +-EXP2_BOUND (a bound from |q| max|k|), so one pass
 * over the keys does it all - score, 2^score, its sum and the weighted values - with no max and no scores kept.
 * Otherwise two: the scores and their running max, then 2^(s - max) and the sums. */
static inline __attribute__((always_inline)) void attend_lanes(
        const float* q, const float* k, const float* v, float* out, long stride, long S, float scale, float kmax,
        float* scores, int valid, const int D) {
    __mmask16 mask = (__mmask16)((1u << valid) - 1u);
    __m512i rows = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                      _mm512_set1_epi32((int)stride));
    __m512 qv[8], o[8], norm = _mm512_setzero_ps();
    for (int c = 0; c < D; c++) {
        qv[c] = _mm512_mul_ps(_mm512_mask_i32gather_ps(_mm512_setzero_ps(), mask, rows, q + c, 4),
                              _mm512_set1_ps(scale));
        norm = _mm512_fmadd_ps(qv[c], qv[c], norm);
        o[c] = _mm512_setzero_ps();
    }
    __m512 z = _mm512_setzero_ps();
    /* |q . k| <= |q| max|k|, with a margin for the rounding of both */
    if (__builtin_sqrtf(_mm512_reduce_max_ps(norm)) * kmax * 1.0001f <= EXP2_BOUND) {
        _Pragma("GCC unroll 4") for (long j = 0; j < S; j++) {
            const float* kj = k + j * stride;
            const float* vj = v + j * stride;
            __m512 s = _mm512_mul_ps(qv[0], _mm512_set1_ps(kj[0]));
            for (int c = 1; c < D; c++) s = _mm512_fmadd_ps(qv[c], _mm512_set1_ps(kj[c]), s);
            __m512 e = exp2_bounded(s);
            z = _mm512_add_ps(z, e);
            for (int c = 0; c < D; c++) o[c] = _mm512_fmadd_ps(e, _mm512_set1_ps(vj[c]), o[c]);
        }
    } else {
        __m512 m = _mm512_set1_ps(-FLT_MAX);
        _Pragma("GCC unroll 4") for (long j = 0; j < S; j++) {
            const float* kj = k + j * stride;
            __m512 s = _mm512_mul_ps(qv[0], _mm512_set1_ps(kj[0]));
            for (int c = 1; c < D; c++) s = _mm512_fmadd_ps(qv[c], _mm512_set1_ps(kj[c]), s);
            _mm512_storeu_ps(scores + j * 16, s);
            m = _mm512_max_ps(m, s);
        }
        _Pragma("GCC unroll 4") for (long j = 0; j < S; j++) {
            const float* vj = v + j * stride;
            __m512 e = exp2_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(scores + j * 16), m));
            z = _mm512_add_ps(z, e);
            for (int c = 0; c < D; c++) o[c] = _mm512_fmadd_ps(e, _mm512_set1_ps(vj[c]), o[c]);
        }
    }
    __m512 inv = _mm512_div_ps(_mm512_set1_ps(1.0f), z);
    for (int c = 0; c < D; c++) _mm512_mask_i32scatter_ps(out + c, mask, rows, _mm512_mul_ps(o[c], inv), 4);
}

/* max over a head's keys of |k|, times (S max|v|) / 2^60 folded in: where the weighted sums could come near a
 * float's range, a bound of infinity sends every query block to the two passes. */
static float key_bound(const float* k, const float* v, long stride, long S, int D) {
    float kk = 0.0f, vmax = 0.0f;
    for (long j = 0; j < S; j++) {
        float n = 0.0f;
        for (int c = 0; c < D; c++) {
            n += k[j * stride + c] * k[j * stride + c];
            float a = __builtin_fabsf(v[j * stride + c]);
            vmax = a > vmax ? a : vmax;
        }
        kk = n > kk ? n : kk;
    }
    return (float)S * vmax < 0x1p60f ? __builtin_sqrtf(kk) : __builtin_inff();
}

/* Returns 0, or 1 for a head size it has no loop for (4 and 8); scores is scratch for 16 S floats. */
int attention_lanes(const float* q, const float* k, const float* v, float* out, long B, long L, long S, long H,
                    long D, float scale, float* scores) {
    if (D != 4 && D != 8) return 1;
    const float scale2 = scale * 1.44269504088896341f;  /* e^(scale s) = 2^(scale log2(e) s) */
    const long C = H * D;
    for (long b = 0; b < B; b++)
        for (long h = 0; h < H; h++) {
            const float* kb = k + b * S * C + h * D;
            const float* vb = v + b * S * C + h * D;
            const float kmax = key_bound(kb, vb, C, S, (int)D);
            for (long l = 0; l < L; l += 16) {
                int valid = L - l < 16 ? (int)(L - l) : 16;
                const float* qb = q + (b * L + l) * C + h * D;
                float* ob = out + (b * L + l) * C + h * D;
                if (D == 4) attend_lanes(qb, kb, vb, ob, C, S, scale2, kmax, scores, valid, 4);
                else attend_lanes(qb, kb, vb, ob, C, S, scale2, kmax, scores, valid, 8);
            }
        }
    return 0;
}

/* erf as torch's vectorised CPU GELU computes it: Abramowitz and Stegun 7.1.26 (absolute error 1.5e-7). */
static inline __m512 erf16(__m512 x) {
    const __m512 one = _mm512_set1_ps(1.0f);
    __m512 a = _mm512_abs_ps(x);
    __m512 t = _mm512_div_ps(one, _mm512_fmadd_ps(_mm512_set1_ps(0.3275911f), a, one));
    __m512 r = _mm512_set1_ps(1.061405429f);
    r = _mm512_fmadd_ps(r, t, _mm512_set1_ps(-1.453152027f));
    r = _mm512_fmadd_ps(r, t, _mm512_set1_ps(1.421413741f));
    r = _mm512_fmadd_ps(r, t, _mm512_set1_ps(-0.284496736f));
    r = _mm512_fmadd_ps(r, t, _mm512_set1_ps(0.254829592f));
    __m512 e = exp2_nonpositive(_mm512_mul_ps(_mm512_mul_ps(a, a), _mm512_set1_ps(-1.44269504088896341f)));
    __m512 y = _mm512_fnmadd_ps(_mm512_mul_ps(r, t), e, one);  /* 1 - r t e^(-x^2), for |x| */
    __m512i sign = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32((int)0x80000000u));
    return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(y), sign));
}

/* out (N, F) = (h[:, :F] + bias[:F]) * gelu(h[:, F:] + bias[F:]) for h (N, 2F). Returns 0, or 1 where F is not a
 * multiple of 16. */
int geglu(const float* h, const float* bias, float* out, long N, long F) {
    if (F % 16) return 1;
    const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f);
    const __m512 rsqrt2 = _mm512_set1_ps(0.70710678118654752f);
    for (long i = 0; i < N; i++) {
        const float* row = h + i * 2 * F;
        float* o = out + i * F;
        for (long f = 0; f < F; f += 16) {
            __m512 a = _mm512_add_ps(_mm512_loadu_ps(row + f), _mm512_loadu_ps(bias + f));
            __m512 g = _mm512_add_ps(_mm512_loadu_ps(row + F + f), _mm512_loadu_ps(bias + F + f));
            __m512 gelu = _mm512_mul_ps(_mm512_mul_ps(g, half), _mm512_add_ps(one, erf16(_mm512_mul_ps(g, rsqrt2))));
            _mm512_storeu_ps(o + f, _mm512_mul_ps(a, gelu));
        }
    }
    return 0;
}
#endif
