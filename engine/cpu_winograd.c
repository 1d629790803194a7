/* 3x3 convolutions (stride 1, padding 1) as Winograd's F(2x2, 3x3), for channels-last float32 data on AVX-512.
 *
 * A direct 3x3 convolution makes 9 C multiplications an output value; F(2x2, 3x3) makes 16 C for four of them, 4 C:
 * 2.25x fewer. Each 2x2 tile of the output reads a 4x4 patch d of the input; the patch goes to V = B^T d B, the
 * kernel g to U = G g G^T (once, by the caller: engine/cpu_graph.py), the product is M = sum_c U V, sixteen matrix
 * products of (tiles x C) by (C x O), and the tile is A^T M A. B and A hold only 0 and +-1, so the input's and the
 * output's transforms are exact sums and differences; G's halves are exact too. Against float64 the result is within
 * a few float32 roundings, as the direct convolution's: the tests bound both.
 *
 * The work runs BLOCK tiles at a time, so that their transformed patches (16 BLOCK C floats) and products (16 BLOCK O)
 * stay in the core's L2 between the three steps, and U's sixteen (C x O) matrices are read from it as they come. The
 * products take 6 tiles against 64 output channels at once (12 against 32, 8 against 48): 24 registers of sums, each
 * channel step 4 loads of U's row shared by 6 broadcasts of V.
 *
 * x (N, H, W, C) channels-last; u (16, C, O); bias (O) or NULL; out (N, H, W, O); C and O multiples of 16. Tiles
 * first to last (n, ty, tx) in row order; the caller gives [first, last) blocks of them, so threads can share a call,
 * and scratch for 16 BLOCK (C + O) floats. Returns 0, or 1 where C or O is not a multiple of 16.
 */
#if defined(__AVX512F__)
#include <immintrin.h>

#define BLOCK 48 /* tiles a block: a multiple of every step's rows (6, 8, 12) and of 24 */

/* The patch of tile (n, ty, tx), channels [c, c + 16), as V = B^T d B in v[p * stride], p = 4 i + j. */
static inline void input_tile(const float* x, long H, long W, long C, long n, long ty, long tx, long c, float* v,
                              long stride) {
    __m512 d[4][4];
    for (int i = 0; i < 4; i++) {
        const long y = 2 * ty - 1 + i;
        for (int j = 0; j < 4; j++) {
            const long xx = 2 * tx - 1 + j;
            d[i][j] = (y >= 0 && y < H && xx >= 0 && xx < W) ? _mm512_loadu_ps(x + ((n * H + y) * W + xx) * C + c)
                                                            : _mm512_setzero_ps();
        }
    }
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

/* The tile's outputs from its products, channels [o, o + 16): A^T M A, plus the bias, where inside the image. */
static inline void output_tile(const float* m, long stride, const float* bias, float* out, long H, long W, long O,
                               long n, long ty, long tx, long o) {
    __m512 s[2][4];
    for (int j = 0; j < 4; j++) {  /* A^T M: rows */
        const __m512 m0 = _mm512_loadu_ps(m + (0 + j) * stride), m1 = _mm512_loadu_ps(m + (4 + j) * stride);
        const __m512 m2 = _mm512_loadu_ps(m + (8 + j) * stride), m3 = _mm512_loadu_ps(m + (12 + j) * stride);
        s[0][j] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
        s[1][j] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
    }
    const __m512 b = bias ? _mm512_loadu_ps(bias + o) : _mm512_setzero_ps();
    for (int i = 0; i < 2; i++) {
        const long y = 2 * ty + i;
        if (y >= H) break;
        const __m512 y0 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(s[i][0], s[i][1]), s[i][2]), b);
        const __m512 y1 = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(s[i][1], s[i][2]), s[i][3]), b);
        float* row = out + ((n * H + y) * W + 2 * tx) * O + o;
        _mm512_storeu_ps(row, y0);
        if (2 * tx + 1 < W) _mm512_storeu_ps(row + O, y1);
    }
}

int winograd_conv3x3(const float* x, const float* u, const float* bias, float* out, long N, long H, long W, long C,
                     long O, long first, long last, float* scratch) {
    if (C % 16 || O % 16) return 1;
    const long th = (H + 1) / 2, tw = (W + 1) / 2, tiles = N * th * tw;
    float* v = scratch;                  /* (16, BLOCK, C) */
    float* m = scratch + 16 * BLOCK * C; /* (16, BLOCK, O) */
    for (long blk = first; blk < last; blk++) {
        const long t0 = blk * BLOCK, count = tiles - t0 < BLOCK ? tiles - t0 : BLOCK;
        for (long t = 0; t < BLOCK; t++) {
            if (t < count) {
                const long tile = t0 + t, n = tile / (th * tw), ty = tile / tw % th, tx = tile % tw;
                for (long c = 0; c < C; c += 16) input_tile(x, H, W, C, n, ty, tx, c, v + t * C + c, BLOCK * C);
            } else {  /* a last block's missing tiles: zeros, whose products nobody reads */
                for (int p = 0; p < 16; p++)
                    for (long c = 0; c < C; c += 16) _mm512_storeu_ps(v + (p * BLOCK + t) * C + c, _mm512_setzero_ps());
            }
        }
        const long steps = (count + 23) / 24 * 24; /* zero rows fill the last step */
        for (int p = 0; p < 16; p++) {
            const float* vp = v + p * BLOCK * C;
            const float* up = u + p * C * O;
            float* mp = m + p * BLOCK * O;
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
            for (long o = 0; o < O; o += 16) output_tile(m + t * O + o, BLOCK * O, bias, out, H, W, O, n, ty, tx, o);
        }
    }
    return 0;
}

long winograd_blocks(long N, long H, long W) { return (N * ((H + 1) / 2) * ((W + 1) / 2) + BLOCK - 1) / BLOCK; }
long winograd_scratch(long C, long O) { return 16 * BLOCK * (C + O); }
#endif
