/* 2^f for f in [-1/2, 1/2] on 16 lanes: a degree-6 fit, relative error 1.3e-8. The exponentials of the lab's C loops
 * (engine/cpu/kernels.c, engine/cpu/norm.c) are 2^n times this, n a whole number put in by scalef. */
#ifndef GUIDANCE_LAB_CPU_EXP2_H
#define GUIDANCE_LAB_CPU_EXP2_H
#include <immintrin.h>

static inline __m512 exp2_fraction16(__m512 f) {
    __m512 p = _mm512_set1_ps(1.4990867930464447e-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3393088011071086e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.61967371404171e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5503472685813904e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402263730764389e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931471824645996e-1f));
    return _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
}
#endif
