/* 3x3 convolutions (stride 1, padding 1) as Winograd's F(4x4, 3x3) and F(2x2, 3x3), for channels-last float32 data
 * on AVX-512.
 *
 * A direct 3x3 convolution makes 9 C multiplications an output value. F(m x m, 3x3) takes the output in m x m
 * tiles: each reads an a x a patch d of the input (a = m + 2), the patch goes to V = B^T d B, the kernel g to
 * U = G g G^T (once, by the caller: engine/cpu/kernels.py), the products are M = sum_c U V, a^2 matrix products of
 * (tiles x C) by (C x O), and the tile is A^T M A. F(2x2, 3x3) makes 16 C multiplications for 4 outputs (2.25x
 * fewer than direct); F(4x4, 3x3), 36 C for 16 (4x fewer).
 * Accuracy, against float64: F(2x2, 3x3)'s B and A hold only 0 and +-1 and G halves, so its transforms are exact
 * sums and differences and its error is the direct convolution's or below. F(4x4, 3x3), Lavin and Gray's points
 * 0, +-1, +-2, has factors up to 8 in A and sixths in G: its error is 4-6x the direct convolution's in rms and up to
 * 10x at the worst value (1e-6 and 2e-5 on values of 1, 30-image batches of the lab's shapes); the lab's default
 * images move by at most one level (README). The caller takes F(4x4, 3x3) where the image is at least 8x8: on the
 * lab UNet's shapes at batch 30, one core, 1.3-1.5x faster than F(2x2, 3x3) at 8x8 and 16x16, and no faster at 4x4.
 *
 * The work runs a block of tiles at a time, so that their transformed patches (a^2 BLOCK C floats) and products
 * (a^2 BLOCK O) stay in the core's L2 between the three steps, and U's (C x O) matrices are read from it as they
 * come. The products take 6 tiles against 64 output channels at once (12 against 32, 8 against 48): 24 registers of
 * sums, each channel step 4 loads of U's row shared by 6 broadcasts of V.
 *
 * x (N, H, W, C) channels-last; u (a^2, C, O); bias (O), per_sample (N, O) and residual (N, H, W, O), each or NULL,
 * added in that order; out (N, H, W, O); C and O multiples of 16; m 2 or 4.
 * Built without licence to reorder sums (engine/cpu/kernels.py's IN_ORDER): the epilogue rounds as torch's additions.
 * Tiles in (n, ty, tx) row order; the caller gives [first, last) blocks of them, so threads can share a call, and
 * scratch for winograd_scratch(C, O, m) floats. Returns 0, or 1 where C or O is not a multiple of 16 or m not 2 or 4.
 */
#if defined(__AVX512F__)
#include <immintrin.h>

/* tiles a block: multiples of 24, every product step's rows (6, 8, 12) */
#define BLOCK2 48 /* F(2x2, 3x3): 16 positions */
#define BLOCK4 24 /* F(4x4, 3x3): 36 positions, so fewer tiles stay in L2 */

/* F(2x2, 3x3): the tile (n, ty, tx)'s 4x4 patch, channels [c, c + 16), as V = B^T d B in v[p * stride], p = 4 i + j. */
/* The a x a patch of sample n from row y0 and column x0 (the padding's zeros outside the image), channels
 * [c, c + 16), into d[a i + j]. */
static inline __attribute__((always_inline)) void load_patch(const float* x, long H, long W, long C, long n, long y0,
                                                             long x0, long c, const int a, __m512* d) {
    for (int i = 0; i < a; i++)
        for (int j = 0; j < a; j++) {
            const long y = y0 + i, xx = x0 + j;
            d[a * i + j] = (y >= 0 && y < H && xx >= 0 && xx < W)
                               ? _mm512_loadu_ps(x + ((n * H + y) * W + xx) * C + c) : _mm512_setzero_ps();
        }
}

static inline void input_tile(const float* x, long H, long W, long C, long n, long ty, long tx, long c, float* v,
                              long stride) {
    __m512 p[16], d[4][4];
    load_patch(x, H, W, C, n, 2 * ty - 1, 2 * tx - 1, c, 4, p);
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) d[i][j] = p[4 * i + j];
    __m512 e[4][4];  /* B^T d: rows */
    for (int j = 0; j < 4; j++) {
        e[0][j] = _mm512_sub_ps(d[0][j], d[2][j]);
        e[1][j] = _mm512_add_ps(d[1][j], d[2][j]);
        e[2][j] = _mm512_sub_ps(d[2][j], d[1][j]);
        e[3][j] = _mm512_sub_ps(d[1][j], d[3][j]);
    }
    for (int i = 0; i < 4; i++) {  /* (B^T d) B: columns */
        _mm512_storeu_ps(v + (4 * i + 0) * stride, _mm512_sub_ps(e[i][0], e[i][2]));
        _mm512_storeu_ps(v + (4 * i + 1) * stride, _mm512_add_ps(e[i][1], e[i][2]));
        _mm512_storeu_ps(v + (4 * i + 2) * stride, _mm512_sub_ps(e[i][2], e[i][1]));
        _mm512_storeu_ps(v + (4 * i + 3) * stride, _mm512_sub_ps(e[i][1], e[i][3]));
    }
}

/* m[t][o0 .. o0 + 16 NB) = sum_c v[t][c] u[c][o0 ..] for R tiles t (R NB <= 24: the sums stay in registers); v rows C apart, u rows O apart. */
static inline __attribute__((always_inline)) void product_rows(const float* v, const float* u, float* m, long C,
                                                               long O, const int NB, const int R) {
    __m512 acc[12][4];
    for (int r = 0; r < R; r++)
        for (int b = 0; b < NB; b++) acc[r][b] = _mm512_setzero_ps();
    for (long c = 0; c < C; c++) {
        __m512 w[4];
        for (int b = 0; b < NB; b++) w[b] = _mm512_loadu_ps(u + c * O + 16 * b);
        for (int r = 0; r < R; r++) {
            const __m512 a = _mm512_set1_ps(v[r * C + c]);
            for (int b = 0; b < NB; b++) acc[r][b] = _mm512_fmadd_ps(a, w[b], acc[r][b]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int b = 0; b < NB; b++) _mm512_storeu_ps(m + r * O + 16 * b, acc[r][b]);
}

/* What is added to the convolution's outputs, in this order, each where not NULL: the bias (O), a value per sample
 * and channel (N, O: a resnet's time embedding), a tensor of the output's shape and layout (a residual). Each sum is
 * rounded as torch's additions one after another would round it. */
struct epilogue {
    const float* bias;
    const float* per_sample;
    const float* residual;
};

/* out[at .. at + 16) = y plus the epilogue's terms; n the sample, o the first channel. */
static inline void finish(float* out, long at, __m512 y, const struct epilogue* e, long n, long o, long O) {
    y = _mm512_add_ps(y, e->bias ? _mm512_loadu_ps(e->bias + o) : _mm512_setzero_ps());
    if (e->per_sample) y = _mm512_add_ps(y, _mm512_loadu_ps(e->per_sample + n * O + o));
    if (e->residual) y = _mm512_add_ps(y, _mm512_loadu_ps(e->residual + at));
    _mm512_storeu_ps(out + at, y);
}

/* F(2x2, 3x3): the tile's outputs from its products, channels [o, o + 16): A^T M A and the epilogue, where inside
 * the image. */
static inline void output_tile(const float* m, long stride, const struct epilogue* e, float* out, long H, long W,
                               long O, long n, long ty, long tx, long o) {
    __m512 s[2][4];
    for (int j = 0; j < 4; j++) {  /* A^T M: rows */
        const __m512 m0 = _mm512_loadu_ps(m + (0 + j) * stride), m1 = _mm512_loadu_ps(m + (4 + j) * stride);
        const __m512 m2 = _mm512_loadu_ps(m + (8 + j) * stride), m3 = _mm512_loadu_ps(m + (12 + j) * stride);
        s[0][j] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
        s[1][j] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
    }
    for (int i = 0; i < 2; i++) {
        const long y = 2 * ty + i;
        if (y >= H) break;
        const long at = ((n * H + y) * W + 2 * tx) * O + o;
        finish(out, at, _mm512_add_ps(_mm512_add_ps(s[i][0], s[i][1]), s[i][2]), e, n, o, O);
        if (2 * tx + 1 < W) finish(out, at + O, _mm512_sub_ps(_mm512_sub_ps(s[i][1], s[i][2]), s[i][3]), e, n, o, O);
    }
}

/* F(4x4, 3x3): the tile (n, ty, tx)'s 6x6 patch, channels [c, c + 16), as V = B^T d B in v[p * stride], p = 6 i + j,
 * with Lavin and Gray's points 0, +-1, +-2: B^T's rows 4 d0 - 5 d2 + d4, -4 (d1 + d2) + d3 + d4, 4 (d1 - d2) - d3 + d4,
 * (d4 - d2) -+ 2 (d1 - d3), 4 d1 - 5 d3 + d5, each product by a power of two exact. */
static inline void bt6(const __m512 d[6], __m512 r[6]) {
    const __m512 two = _mm512_set1_ps(2.0f), four = _mm512_set1_ps(4.0f), five = _mm512_set1_ps(5.0f);
    const __m512 t0 = _mm512_sub_ps(d[4], d[2]), t1 = _mm512_sub_ps(d[1], d[3]);
    r[0] = _mm512_fmadd_ps(four, d[0], _mm512_fnmadd_ps(five, d[2], d[4]));
    r[1] = _mm512_fnmadd_ps(four, _mm512_add_ps(d[1], d[2]), _mm512_add_ps(d[3], d[4]));
    r[2] = _mm512_fmadd_ps(four, _mm512_sub_ps(d[1], d[2]), _mm512_sub_ps(d[4], d[3]));
    r[3] = _mm512_fnmadd_ps(two, t1, t0);
    r[4] = _mm512_fmadd_ps(two, t1, t0);
    r[5] = _mm512_fmadd_ps(four, d[1], _mm512_fnmadd_ps(five, d[3], d[5]));
}

static inline void input_tile6(const float* x, long H, long W, long C, long n, long ty, long tx, long c, float* v,
                               long stride) {
    __m512 d[36], e[6][6];
    load_patch(x, H, W, C, n, 4 * ty - 1, 4 * tx - 1, c, 6, d);
    for (int j = 0; j < 6; j++) {  /* B^T d: along each column */
        __m512 col[6], out[6];
        for (int i = 0; i < 6; i++) col[i] = d[6 * i + j];
        bt6(col, out);
        for (int i = 0; i < 6; i++) e[i][j] = out[i];
    }
    for (int i = 0; i < 6; i++) {  /* (B^T d) B: along each row */
        __m512 out[6];
        bt6(e[i], out);
        for (int j = 0; j < 6; j++) _mm512_storeu_ps(v + (6 * i + j) * stride, out[j]);
    }
}

/* A^T's rows: m0 + (m1 + m2) + (m3 + m4), (m1 - m2) + 2 (m3 - m4), (m1 + m2) + 4 (m3 + m4), (m1 - m2) + 8 (m3 - m4) + m5. */
static inline void at6(const __m512 m[6], __m512 y[4]) {
    const __m512 a = _mm512_add_ps(m[1], m[2]), b = _mm512_sub_ps(m[1], m[2]);
    const __m512 c = _mm512_add_ps(m[3], m[4]), e = _mm512_sub_ps(m[3], m[4]);
    y[0] = _mm512_add_ps(_mm512_add_ps(m[0], a), c);
    y[1] = _mm512_fmadd_ps(_mm512_set1_ps(2.0f), e, b);
    y[2] = _mm512_fmadd_ps(_mm512_set1_ps(4.0f), c, a);
    y[3] = _mm512_add_ps(_mm512_fmadd_ps(_mm512_set1_ps(8.0f), e, b), m[5]);
}

/* F(4x4, 3x3): the tile's outputs, as output_tile's. */
static inline void output_tile4(const float* m, long stride, const struct epilogue* e, float* out, long H, long W,
                                long O, long n, long ty, long tx, long o) {
    __m512 s[4][6];
    for (int j = 0; j < 6; j++) {  /* A^T M: along each column */
        __m512 col[6], y[4];
        for (int i = 0; i < 6; i++) col[i] = _mm512_loadu_ps(m + (6 * i + j) * stride);
        at6(col, y);
        for (int i = 0; i < 4; i++) s[i][j] = y[i];
    }
    for (int i = 0; i < 4; i++) {
        const long y = 4 * ty + i;
        if (y >= H) break;
        __m512 r[4];
        at6(s[i], r);
        const long at = ((n * H + y) * W + 4 * tx) * O + o;
        for (int j = 0; j < 4 && 4 * tx + j < W; j++) finish(out, at + j * O, r[j], e, n, o, O);
    }
}

/* One call's blocks with tiles of m x m outputs (m a constant where it is inlined). */
static inline __attribute__((always_inline)) void winograd(const float* x, const float* u,
                                                           const struct epilogue* e, float* out, long N, long H,
                                                           long W, long C, long O, long first, long last,
                                                           float* scratch, const int m) {
    const int a = m + 2, positions = a * a;
    const long block = m == 2 ? BLOCK2 : BLOCK4, th = (H + m - 1) / m, tw = (W + m - 1) / m, tiles = N * th * tw;
    float* v = scratch;                          /* (positions, block, C) */
    float* mm = scratch + positions * block * C; /* (positions, block, O) */
    for (long blk = first; blk < last; blk++) {
        const long t0 = blk * block, count = tiles - t0 < block ? tiles - t0 : block;
        for (long t = 0; t < block; t++) {
            if (t < count) {
                const long tile = t0 + t, n = tile / (th * tw), ty = tile / tw % th, tx = tile % tw;
                for (long c = 0; c < C; c += 16) {
                    if (m == 2) input_tile(x, H, W, C, n, ty, tx, c, v + t * C + c, block * C);
                    else input_tile6(x, H, W, C, n, ty, tx, c, v + t * C + c, block * C);
                }
            } else {  /* a last block's missing tiles: zeros, whose products nobody reads */
                for (int p = 0; p < positions; p++)
                    for (long c = 0; c < C; c += 16) _mm512_storeu_ps(v + (p * block + t) * C + c, _mm512_setzero_ps());
            }
        }
        const long steps = (count + 23) / 24 * 24;
        for (int p = 0; p < positions; p++) {
            const float* vp = v + p * block * C;
            const float* up = u + p * C * O;
            float* mp = mm + p * block * O;
            for (long o = 0; o < O; o += 64) {
                const long left = O - o;
                const int rows = left >= 64 ? 6 : left == 48 ? 8 : 12;
                for (long t = 0; t < steps; t += rows) {
                    const float* vr = vp + t * C;
                    float* mr = mp + t * O + o;
                    if (left >= 64) product_rows(vr, up + o, mr, C, O, 4, 6);
                    else if (left == 48) product_rows(vr, up + o, mr, C, O, 3, 8);
                    else if (left == 32) product_rows(vr, up + o, mr, C, O, 2, 12);
                    else product_rows(vr, up + o, mr, C, O, 1, 12);
                }
            }
        }
        for (long t = 0; t < count; t++) {
            const long tile = t0 + t, n = tile / (th * tw), ty = tile / tw % th, tx = tile % tw;
            for (long o = 0; o < O; o += 16) {
                if (m == 2) output_tile(mm + t * O + o, block * O, e, out, H, W, O, n, ty, tx, o);
                else output_tile4(mm + t * O + o, block * O, e, out, H, W, O, n, ty, tx, o);
            }
        }
    }
}

int winograd_conv3x3(const float* x, const float* u, const float* bias, const float* per_sample, const float* residual,
                     float* out, long N, long H, long W, long C, long O, long m, long first, long last,
                     float* scratch) {
    if (C % 16 || O % 16 || (m != 2 && m != 4)) return 1;
    const struct epilogue e = {bias, per_sample, residual};
    if (m == 2) winograd(x, u, &e, out, N, H, W, C, O, first, last, scratch, 2);
    else winograd(x, u, &e, out, N, H, W, C, O, first, last, scratch, 4);
    return 0;
}

long winograd_blocks(long N, long H, long W, long m) {
    const long block = m == 2 ? BLOCK2 : BLOCK4;
    return (N * ((H + m - 1) / m) * ((W + m - 1) / m) + block - 1) / block;
}

long winograd_scratch(long C, long O, long m) { return (m + 2) * (m + 2) * (m == 2 ? BLOCK2 : BLOCK4) * (C + O); }
#endif
