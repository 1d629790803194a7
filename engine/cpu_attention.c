/* Softmax attention for small heads on the CPU: one query row at a time, every loop along the tokens.
 *
 * q and out are (B, L, H * D) as the attention layer's projections give them; kt and vt are the keys and values
 * token-last, (B, H * D, S), so that each loop below reads consecutive floats and the compiler vectorises it.
 * Built by engine/cpu_attention.py with the system's C compiler for the machine it runs on.
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
