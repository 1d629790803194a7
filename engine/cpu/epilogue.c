/* The addition after a product: out = (out + bias) + residual, row by row, in one pass over out.
 *
 * A linear layer followed by a residual addition is, in torch, three passes over its output: the bias broadcast into
 * it, the product accumulated onto it, and the addition into a new tensor. Here the product goes into out alone and
 * this loop adds the bias and the residual as torch rounds them, one after the other: the same bits (the tests
 * compare them), two passes fewer. rows x cols floats; bias (cols) or NULL; residual rows x cols. Built without
 * licence to reorder sums (engine/cpu_kernels.py's IN_ORDER), so the compiler keeps torch's order.
 */

void add_bias_residual(float* out, const float* bias, const float* residual, long rows, long cols) {
    for (long i = 0; i < rows; i++) {
        float* o = out + i * cols;
        const float* r = residual + i * cols;
        if (bias)
            for (long j = 0; j < cols; j++) o[j] = (o[j] + bias[j]) + r[j];
        else
            for (long j = 0; j < cols; j++) o[j] = o[j] + r[j];
    }
}
