/* GroupNorm, and the SiLU that follows it in a resnet block, in one call for channels-last (NHWC) float32 data,
 * where torch's group_norm is ~4x slower than on NCHW.
 *
 * Each sample, HW rows of C contiguous floats (<= 128 KiB in the lab's UNet: it stays in L2), is read three times:
 *   1. per-channel sums of x, then the group means;
 *   2. per-channel sums of (x - mean)^2, then the group variances: centred, as activations' means can be large
 *      against their spread (randn * 3 + 2 in the tests) and E[x^2] - E[x]^2 would cancel;
 *   3. out = silu?(x scale + shift), with gamma rstd and beta - mean gamma rstd folded into one scale and shift
 *      per channel: one FMA a value, and the SiLU. The next sample is fetched into L2 meanwhile.
 * Sums run in float over blocks of BLOCK rows, then in double: ~1e-7 relative at HW = 4096 as at 16. Max abs error
 * against float64 torch, inputs randn * 3 + 2: as float32 torch's or below (C = 128, HW = 16x16: 7.9e-7 against
 * torch's 8.7e-7, with SiLU 1.18e-6 against 1.16e-6; at worst 0.35 of twice torch's + 1e-6 over 32 cases).
 *
 * N = 30, G = 16, one thread of a 2-core AVX-512 Xeon VM (noisy: +-30%), us per call, medians, out in a new
 * tensor; torch: group_norm (+ silu) on NCHW and on channels-last inputs:
 *      C   HW      | no SiLU: NCHW   CL  here | SiLU: NCHW    CL  here
 *      32  16x16   |          179   894   158 |        433  1169   225
 *      64  16x16   |          356   979   330 |        880  1812   413
 *      96  16x16   |          654  1456   518 |       1139  1744   506
 *     128  16x16   |         1106  1718  1015 |       1648  2060   695
 *      64   8x8    |           75   209    50 |        197   360   112
 *     128   8x8    |          165   330   137 |        299   398   160
 *      64   4x4    |           38    65    21 |         60    87    31
 *     128   4x4    |           65    62    30 |        107   106    49
 * Without SiLU the large shapes are bound by memory, like torch's NCHW kernel; with it, by the SiLU's arithmetic.
 *
 * Two loops: one on 16-float registers where the CPU has AVX-512 and C % 16 == 0 (the UNet's C are multiples of
 * 32), plain C, which the compiler vectorises, otherwise. Single-threaded: the caller runs one call per core.
 */
#include <math.h>

#define MAX_C 2048  /* the scratch is on the stack: 64 KiB */
#define BLOCK 128   /* rows summed in float before the sums go into double */

/* SiLU's e^-y, with y held within [-80, 86] (beyond, y / (1 + e^-y) is y, or ~0, to float precision) so that 2^n
 * below stays a normal float: e^-y = 2^t, t = -y log2(e) = n + f, n = round(t), f from y by two FMAs with log2(e)
 * in two parts (so exact to ~1e-15), and 2^f on [-1/2, 1/2] by a degree-6 fit (relative error 1.3e-8). SiLU is then
 * within 1.7e-7 relative (y in [-70, 100]), as with Cephes' expf, for one FMA fewer: the FMA port is its bottleneck
 * (one port for 512-bit FMAs here: a zmm FMA costs twice a ymm one). */
#define LOG2E 1.44269504088896341f
#define LOG2E_HI 1.4426950216293335f  /* LOG2E rounded to float, and the rest */
#define LOG2E_LO 1.925963033500011e-08f

static inline float silu1(float y) {
    float yc = fminf(fmaxf(y, -80.0f), 86.0f);
    float n = floorf(yc * -LOG2E + 0.5f);
    float f = fmaf(-yc, LOG2E_LO, fmaf(-yc, LOG2E_HI, -n));
    float p = 1.4990867930464447e-4f;
    p = fmaf(p, f, 1.3393088011071086e-3f);
    p = fmaf(p, f, 9.61967371404171e-3f);
    p = fmaf(p, f, 5.5503472685813904e-2f);
    p = fmaf(p, f, 2.402263730764389e-1f);
    p = fmaf(p, f, 6.931471824645996e-1f);
    p = fmaf(p, f, 1.0f);
    union { int i; float f; } two_n = { ((int)n + 127) << 23 };  /* -124 <= n <= 116 */
    return y / (1.0f + p * two_n.f);
}

/* acc[c] += sum over the HW rows of x[p C + c] (m NULL) or of (x[p C + c] - m[c])^2. */
static void channel_sums(const float* x, long HW, long C, const float* m, double* acc) {
    float a[MAX_C];
    for (long p0 = 0; p0 < HW; p0 += BLOCK) {
        long p1 = p0 + BLOCK < HW ? p0 + BLOCK : HW;
        for (long c = 0; c < C; c++) a[c] = 0.0f;
        long p = p0;
        /* 4 rows into a at a time: one add in 4 waits for the last to reach a through memory */
#define SQ(r, c) ((r)[c] - m[c]) * ((r)[c] - m[c])
        for (; p + 4 <= p1; p += 4) {
            const float *r0 = x + p * C, *r1 = r0 + C, *r2 = r1 + C, *r3 = r2 + C;
            if (m)
                for (long c = 0; c < C; c++) a[c] += (SQ(r0, c) + SQ(r1, c)) + (SQ(r2, c) + SQ(r3, c));
            else
                for (long c = 0; c < C; c++) a[c] += (r0[c] + r1[c]) + (r2[c] + r3[c]);
        }
        for (; p < p1; p++) {
            const float* r0 = x + p * C;
            if (m)
                for (long c = 0; c < C; c++) a[c] += SQ(r0, c);
            else
                for (long c = 0; c < C; c++) a[c] += r0[c];
        }
#undef SQ
        for (long c = 0; c < C; c++) acc[c] += a[c];
    }
}

static void normalise(const float* x, float* out, long HW, long C, const float* scale, const float* shift,
                      int silu) {
    for (long p = 0; p < HW; p++) {
        const float* row = x + p * C;
        float* o = out + p * C;
        if (silu)  /* two loops: one, with a branch inside, is vectorised with the SiLU worked out for every value */
            for (long c = 0; c < C; c++) o[c] = silu1(row[c] * scale[c] + shift[c]);
        else
            for (long c = 0; c < C; c++) o[c] = row[c] * scale[c] + shift[c];
    }
}

#if defined(__AVX512F__)
#include "exp2.h"

/* silu1 on 16 lanes, 2^n by scalef. A division: 10% faster here than a reciprocal estimate and a Newton step,
 * which take the FMA port too. */
static inline __m512 silu16(__m512 y) {
    __m512 yc = _mm512_min_ps(_mm512_max_ps(y, _mm512_set1_ps(-80.0f)), _mm512_set1_ps(86.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(yc, _mm512_set1_ps(-LOG2E)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_fnmsub_ps(yc, _mm512_set1_ps(LOG2E_HI), n);
    f = _mm512_fnmadd_ps(yc, _mm512_set1_ps(LOG2E_LO), f);
    __m512 p = exp2_fraction16(f);
    return _mm512_div_ps(y, _mm512_add_ps(_mm512_scalef_ps(p, n), _mm512_set1_ps(1.0f)));
}

/* channel_sums for channels [0, 16 V), V <= 8, of rows C floats apart: U = 8 / V rows at a time into U V float
 * registers, enough independent adds to hide their latency, and added into acc every BLOCK rows. */
static inline __attribute__((always_inline)) void sums16(const float* x, long HW, long C, const float* m,
                                                         double* acc, const int V, const int squares) {
    const int U = 8 / V;
    __m512 mv[8], a[8][8];
    for (int v = 0; v < V; v++) mv[v] = squares ? _mm512_loadu_ps(m + 16 * v) : _mm512_setzero_ps();
    for (long p0 = 0; p0 < HW; p0 += BLOCK) {
        long p1 = p0 + BLOCK < HW ? p0 + BLOCK : HW, p = p0;
        for (int u = 0; u < U; u++)
            for (int v = 0; v < V; v++) a[u][v] = _mm512_setzero_ps();
#define ADD_ROW(u, row)                                                                      \
        for (int v = 0; v < V; v++) {                                                        \
            __m512 d = _mm512_loadu_ps(x + (row) * C + 16 * v);                             \
            if (squares) d = _mm512_sub_ps(d, mv[v]);                                        \
            a[u][v] = squares ? _mm512_fmadd_ps(d, d, a[u][v]) : _mm512_add_ps(a[u][v], d); \
        }
        for (; p + U <= p1; p += U)
            for (int u = 0; u < U; u++) ADD_ROW(u, p + u)
        for (; p < p1; p++) ADD_ROW(0, p)
#undef ADD_ROW
        for (int v = 0; v < V; v++) {
            for (int u = 1; u < U; u++) a[0][v] = _mm512_add_ps(a[0][v], a[u][v]);
            double* o = acc + 16 * v;
            _mm512_storeu_pd(o, _mm512_add_pd(_mm512_loadu_pd(o), _mm512_cvtps_pd(_mm512_castps512_ps256(a[0][v]))));
            _mm512_storeu_pd(o + 8, _mm512_add_pd(_mm512_loadu_pd(o + 8),
                                                  _mm512_cvtps_pd(_mm512_extractf32x8_ps(a[0][v], 1))));
        }
    }
}

/* channel_sums where C % 16 == 0: 128 channels (8 registers) at a time, so that each row's are read in one run. */
static void channel_sums16(const float* x, long HW, long C, const float* m, double* acc) {
    for (long c = 0; c < C; c += 128) {
#define SUMS(V) \
    case V: if (m) sums16(x + c, HW, C, m + c, acc + c, V, 1); else sums16(x + c, HW, C, 0, acc + c, V, 0); break;
        switch (C - c >= 128 ? 8 : (C - c) / 16) { SUMS(1) SUMS(2) SUMS(3) SUMS(4) SUMS(5) SUMS(6) SUMS(7) SUMS(8) }
#undef SUMS
    }
}

/* normalise where C % 16 == 0, row after row: the stores run through memory in order (15% faster than 32
 * channels at a time down the rows, with their scale and shift in registers). next: the next sample, or NULL;
 * it is fetched into L2 meanwhile (15% off the call with SiLU, whose arithmetic leaves the memory idle). */
static void normalise16(const float* x, float* out, long HW, long C, const float* scale, const float* shift,
                        int silu, const float* next) {
    for (long p = 0; p < HW; p++)
        for (long c = 0; c < C; c += 16) {
            if (next) _mm_prefetch((const char*)(next + p * C + c), _MM_HINT_T1);
            __m512 y = _mm512_fmadd_ps(_mm512_loadu_ps(x + p * C + c), _mm512_loadu_ps(scale + c),
                                       _mm512_loadu_ps(shift + c));
            _mm512_storeu_ps(out + p * C + c, silu ? silu16(y) : y);
        }
}
#endif

/* x, out: (N, HW, C) contiguous float32 (NHWC), out may be x; gamma, beta: (C,), or NULL for 1 and 0; G groups.
 * out = silu?(gamma (x - mean_g) rstd_g + beta), mean and biased variance per (n, group) over its HW C/G values,
 * rstd = 1/sqrt(var + eps). Returns 0, or 1 for a shape it has no case for (C % G != 0, C > MAX_C). */
int group_norm_nhwc(const float* x, const float* gamma, const float* beta, float* out, long N, long HW, long C,
                    long G, float eps, int silu) {
    if (N < 0 || HW < 0 || C <= 0 || G <= 0 || C % G != 0 || C > MAX_C) return 1;
    float m[MAX_C], scale[MAX_C], shift[MAX_C];
    double acc[MAX_C], mean[MAX_C];  /* mean: per group */
    const long Cg = C / G;
    const double count = (double)HW * (double)Cg;
    void (*sums)(const float*, long, long, const float*, double*) = channel_sums;
#if defined(__AVX512F__)
    if (C % 16 == 0) sums = channel_sums16;
#endif
    for (long n = 0; n < N && HW > 0; n++) {
        const float* xs = x + n * HW * C;
        float* os = out + n * HW * C;
        for (long c = 0; c < C; c++) acc[c] = 0.0;
        sums(xs, HW, C, 0, acc);
        for (long g = 0; g < G; g++) {
            double s = 0.0;
            for (long c = g * Cg; c < (g + 1) * Cg; c++) s += acc[c];
            mean[g] = s / count;
            for (long c = g * Cg; c < (g + 1) * Cg; c++) m[c] = (float)mean[g];
        }
        for (long c = 0; c < C; c++) acc[c] = 0.0;
        sums(xs, HW, C, m, acc);
        for (long g = 0; g < G; g++) {
            double s = 0.0;
            for (long c = g * Cg; c < (g + 1) * Cg; c++) s += acc[c];
            /* the sums are about the float mean m, not the exact one: var = s / count - (mean - m)^2 */
            double dm = mean[g] - m[g * Cg], var = s / count - dm * dm;
            double rstd = 1.0 / sqrt((var > 0.0 ? var : 0.0) + eps);
            for (long c = g * Cg; c < (g + 1) * Cg; c++) {
                double sc = (gamma ? gamma[c] : 1.0f) * rstd;
                scale[c] = (float)sc;
                shift[c] = (float)((beta ? beta[c] : 0.0f) - mean[g] * sc);
            }
        }
#if defined(__AVX512F__)
        if (C % 16 == 0) {
            normalise16(xs, os, HW, C, scale, shift, silu, n + 1 < N ? xs + HW * C : 0);
            continue;
        }
#endif
        normalise(xs, os, HW, C, scale, shift, silu);
    }
    return 0;
}
