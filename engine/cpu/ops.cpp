/* The C loops of engine/cpu/kernels.c as torch operators, registered in C++ so that a frozen graph calls them
 * without Python: an operator written in Python takes the GIL for every call, and with two graphs running side by
 * side (the Compare grid's rows, a split batch) each waited on the other's calls.
 *
 * GL_NAMESPACE names the operators' namespace (engine/cpu/kernels.py gives one per set of compiler flags). The
 * sixteen-lane attention loop, the GEGLU loop and the Winograd loop exist where the loops were compiled with AVX-512; elsewhere their
 * weak symbols stay null, the attention takes the row loop and `loops()` says that GEGLU and Winograd have none.
 */
#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <memory>

extern "C" {
int attention(const float* q, const float* kt, const float* vt, float* out, long B, long L, long S, long H, long D,
              float scale, float* scores);
int attention_lanes(const float* q, const float* k, const float* v, float* out, long B, long L, long S, long H,
                    long D, float scale, float* scores) __attribute__((weak));
int geglu(const float* h, const float* bias, float* out, long N, long F) __attribute__((weak));
int group_norm_nhwc(const float* x, const float* gamma, const float* beta, float* out, long N, long HW, long C,
                    long G, float eps, int silu);
int winograd_conv3x3(const float* x, const float* u, const float* bias, const float* per_sample, const float* residual,
                     float* out, long N, long H, long W, long C, long O, long m, long first, long last,
                     float* scratch) __attribute__((weak));
long winograd_blocks(long N, long H, long W, long m) __attribute__((weak));
long winograd_scratch(long C, long O, long m) __attribute__((weak));
}

namespace {

constexpr int64_t ROWS = 1, LANES = 2, GEGLU = 4, WINOGRAD = 8;

void check_float_cpu(const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat, name, " must be a float32 CPU tensor.");
}

/* softmax(q k^T / sqrt(D)) v per head, for q (B, L, H*D) and k, v (B, S, H*D); returns (B, L, H*D). */
at::Tensor small_head_attention(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                                int64_t heads) {
    check_float_cpu(query, "q");
    check_float_cpu(key, "k");
    check_float_cpu(value, "v");
    TORCH_CHECK(query.dim() == 3 && key.dim() == 3 && key.sizes() == value.sizes() && heads > 0 &&
                    query.size(0) == key.size(0) && query.size(2) == key.size(2) && query.size(2) % heads == 0,
                "q must be (B, L, H*D) and k, v (B, S, H*D).");
    const int64_t batch = query.size(0), queries = query.size(1), tokens = key.size(1);
    const int64_t dim = query.size(2) / heads;
    TORCH_CHECK_VALUE(dim == 4 || dim == 8, "The attention kernel has no loop for heads of ", dim, " channels.");
    at::Tensor q = query.contiguous();
    at::Tensor out = at::empty(q.sizes(), q.options());
    const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
    int status;
    if (attention_lanes != nullptr) {  // sixteen queries to a register, keys and values as they come
        at::Tensor k = key.contiguous(), v = value.contiguous();
        at::Tensor scores = at::empty({16 * tokens}, q.options());
        status = attention_lanes(q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(),
                                 out.data_ptr<float>(), batch, queries, tokens, heads, dim, scale,
                                 scores.data_ptr<float>());
    } else {  // one query row at a time, keys and values token-last (B, H*D, S)
        at::Tensor k = key.transpose(1, 2).contiguous(), v = value.transpose(1, 2).contiguous();
        at::Tensor scores = at::empty({tokens}, q.options());
        status = attention(q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(), out.data_ptr<float>(),
                           batch, queries, tokens, heads, dim, scale, scores.data_ptr<float>());
    }
    TORCH_CHECK_VALUE(status == 0, "The attention kernel has no loop for heads of ", dim, " channels.");
    return out;
}

/* (a + bias[:F]) * gelu(g + bias[F:]) for h = [a | g] (..., 2F), F a multiple of 16. */
at::Tensor fused_geglu(const at::Tensor& hidden, const at::Tensor& bias) {
    TORCH_CHECK(geglu != nullptr, "The GEGLU loop was not built: the CPU has no AVX-512.");
    check_float_cpu(hidden, "h");
    check_float_cpu(bias, "bias");
    TORCH_CHECK(hidden.dim() >= 1 && bias.dim() == 1 && bias.size(0) == hidden.size(-1) && hidden.size(-1) % 2 == 0,
                "h must be (..., 2F) and bias (2F,).");
    const int64_t features = hidden.size(-1) / 2;
    TORCH_CHECK_VALUE(features % 16 == 0, "The GEGLU loop has no case for ", features, " features.");
    at::Tensor h = hidden.contiguous(), b = bias.contiguous();
    std::vector<int64_t> shape(h.sizes().begin(), h.sizes().end());
    shape.back() = features;
    at::Tensor out = at::empty(shape, h.options());
    geglu(h.data_ptr<float>(), b.data_ptr<float>(), out.data_ptr<float>(), h.numel() / h.size(-1), features);
    return out;
}

/* A transformer's feed-forward, proj_out(geglu(proj_in(x))), a block of `rows` rows at a time: the (rows, 2F)
 * projection and its (rows, F) gate stay in the core's cache between the three steps, where the whole (N, 2F)
 * projection of a 30-image batch at 16x16 (7.9 MB) went out to memory and back. x (..., C); w_in (2F, C), b_in
 * (2F,); w_out (O, F), b_out (O,); returns (..., O). Each row's numbers are those of the unblocked steps. */
at::Tensor feed_forward(const at::Tensor& input, const at::Tensor& w_in, const at::Tensor& b_in,
                        const at::Tensor& w_out, const at::Tensor& b_out, int64_t rows) {
    TORCH_CHECK(geglu != nullptr, "The GEGLU loop was not built: the CPU has no AVX-512.");
    for (const at::Tensor* t : {&input, &w_in, &b_in, &w_out, &b_out}) check_float_cpu(*t, "every argument");
    const int64_t c = input.size(-1), features = w_out.size(1);
    TORCH_CHECK(input.dim() >= 1 && w_in.dim() == 2 && w_in.size(1) == c && w_in.size(0) == 2 * features &&
                    b_in.dim() == 1 && b_in.size(0) == 2 * features && w_out.dim() == 2 && b_out.dim() == 1 &&
                    b_out.size(0) == w_out.size(0) && rows > 0,
                "x must be (..., C), w_in (2F, C), b_in (2F,), w_out (O, F), b_out (O,).");
    TORCH_CHECK_VALUE(features % 16 == 0, "The GEGLU loop has no case for ", features, " features.");
    at::Tensor x = input.reshape({-1, c}).contiguous(), bias = b_in.contiguous();
    const int64_t n = x.size(0), block = std::min(rows, std::max<int64_t>(n, 1));
    at::Tensor out = at::empty({n, w_out.size(0)}, x.options());
    at::Tensor h = at::empty({block, 2 * features}, x.options()), g = at::empty({block, features}, x.options());
    const at::Tensor w_in_t = w_in.t(), w_out_t = w_out.t();
    std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end());
    shape.back() = w_out.size(0);
    for (int64_t r = 0; r < n; r += block) {
        const int64_t m = std::min(block, n - r);
        at::Tensor hs = h.narrow(0, 0, m), gs = g.narrow(0, 0, m), os = out.narrow(0, r, m);
        at::mm_out(hs, x.narrow(0, r, m), w_in_t);
        geglu(hs.data_ptr<float>(), bias.data_ptr<float>(), gs.data_ptr<float>(), m, features);
        at::addmm_out(os, b_out, gs, w_out_t);
    }
    return out.view(shape);
}

/* torch's group_norm (then SiLU where `silu`) for a channels-last (N, C, H, W) float32 tensor, in one call of
 * engine/cpu/norm.c; the result is channels-last too. Other layouts are made channels-last first. */
at::Tensor group_norm(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias, int64_t groups,
                      double eps, bool silu) {
    check_float_cpu(input, "x");
    check_float_cpu(weight, "weight");
    check_float_cpu(bias, "bias");
    TORCH_CHECK(input.dim() == 4 && groups > 0 && input.size(1) % groups == 0 && weight.numel() == input.size(1) &&
                    bias.numel() == input.size(1),
                "x must be (N, C, H, W) with C a multiple of the groups, and weight and bias (C,).");
    at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast);
    at::Tensor w = weight.contiguous(), b = bias.contiguous();
    at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::ChannelsLast));
    const int64_t n = x.size(0), c = x.size(1), hw = x.size(2) * x.size(3);
    const int status = group_norm_nhwc(x.data_ptr<float>(), w.data_ptr<float>(), b.data_ptr<float>(),
                                       out.data_ptr<float>(), n, hw, c, groups, static_cast<float>(eps), silu ? 1 : 0);
    TORCH_CHECK_VALUE(status == 0, "The group norm loop has no case for ", c, " channels.");
    return out;
}

/* A 3x3 convolution, stride 1, padding 1, as Winograd's F(4x4, 3x3) where the image is at least 8x8, F(2x2, 3x3)
 * below (engine/cpu/winograd.c): x (N, C, H, W), read channels-last; u2 (16, C, O) and u4 (36, C, O), the kernel as
 * G g G^T for each (engine/cpu/kernels.py's winograd_weights); bias (O,) or none. Returns (N, O, H, W)
 * channels-last. The tiles' blocks are shared among torch's threads; each tile's numbers are the same whichever
 * thread takes it. */
at::Tensor winograd_conv(const at::Tensor& input, const at::Tensor& u2, const at::Tensor& u4,
                         const std::optional<at::Tensor>& bias) {
    TORCH_CHECK(winograd_conv3x3 != nullptr, "The Winograd loop was not built: the CPU has no AVX-512.");
    check_float_cpu(input, "x");
    check_float_cpu(u2, "u2");
    check_float_cpu(u4, "u4");
    const bool biased = bias.has_value() && bias->defined();
    if (biased) check_float_cpu(*bias, "bias");
    TORCH_CHECK(input.dim() == 4 && u2.dim() == 3 && u2.size(0) == 16 && u2.size(1) == input.size(1) &&
                    u4.dim() == 3 && u4.size(0) == 36 && u4.size(1) == u2.size(1) && u4.size(2) == u2.size(2) &&
                    (!biased || (bias->dim() == 1 && bias->size(0) == u2.size(2))),
                "x must be (N, C, H, W), u2 (16, C, O), u4 (36, C, O) and bias (O,).");
    const int64_t n = input.size(0), c = input.size(1), h = input.size(2), w = input.size(3), o = u2.size(2);
    TORCH_CHECK_VALUE(c % 16 == 0 && o % 16 == 0, "The Winograd loop has no case for ", c, " -> ", o, " channels.");
    const bool f4 = h >= 8 && w >= 8;  // engine/cpu/kernels.py's WINOGRAD_F4_SIDE
    at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast), weights = (f4 ? u4 : u2).contiguous();
    at::Tensor b = biased ? bias->contiguous() : at::Tensor();
    at::Tensor out = at::empty({n, o, h, w}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
    const float* xp = x.data_ptr<float>();
    const float* up = weights.data_ptr<float>();
    const float* bp = biased ? b.data_ptr<float>() : nullptr;
    float* op = out.data_ptr<float>();
    const long m = f4 ? 4 : 2;
    const int64_t scratch = winograd_scratch(c, o, m);
    at::parallel_for(0, winograd_blocks(n, h, w, m), 1, [&](int64_t first, int64_t last) {
        std::unique_ptr<float[]> room(new float[scratch]);  // left unset: every read of it follows a write
        winograd_conv3x3(xp, up, bp, nullptr, nullptr, op, n, h, w, c, o, m, first, last, room.get());
    });
    return out;
}

/* A 1x1 convolution (stride 1, no padding) as one matrix product: x (N, C, H, W), read channels-last, is (N H W, C)
 * rows; weight_t (C, O) is the kernel transposed; returns (N, O, H, W) channels-last, a view of the (N H W, O)
 * product. oneDNN's 1x1 convolution gives the same bits from the same product more slowly on the lab's shapes
 * (a 30-image batch, one core: 32 -> 32 channels at 16x16 415 us against 284, 64 -> 64 at 4x4 185 against 66). */
at::Tensor pointwise_conv(const at::Tensor& input, const at::Tensor& weight_t, const std::optional<at::Tensor>& bias) {
    TORCH_CHECK(input.dim() == 4 && weight_t.dim() == 2 && weight_t.size(0) == input.size(1) &&
                    (!bias.has_value() || !bias->defined() || (bias->dim() == 1 && bias->size(0) == weight_t.size(1))),
                "x must be (N, C, H, W), weight_t (C, O) and bias (O,).");
    const int64_t n = input.size(0), c = input.size(1), h = input.size(2), w = input.size(3), o = weight_t.size(1);
    at::Tensor rows = input.contiguous(at::MemoryFormat::ChannelsLast).permute({0, 2, 3, 1}).reshape({-1, c});
    const auto view = [&](const at::Tensor& t) { return t.view({n, h, w, o}).permute({0, 3, 1, 2}); };
    return view(bias.has_value() && bias->defined() ? at::addmm(*bias, rows, weight_t) : at::mm(rows, weight_t));
}

int64_t loops() {
    return ROWS | (attention_lanes != nullptr ? LANES : 0) | (geglu != nullptr ? GEGLU : 0) |
           (winograd_conv3x3 != nullptr ? WINOGRAD : 0);
}

}  // namespace

#define GL_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)  // expands GL_NAMESPACE before TORCH_LIBRARY pastes it

GL_LIBRARY(GL_NAMESPACE, m) {
    m.def("small_head_attention(Tensor q, Tensor k, Tensor v, int heads) -> Tensor", &small_head_attention);
    m.def("geglu(Tensor h, Tensor bias) -> Tensor", &fused_geglu);
    m.def("feed_forward(Tensor x, Tensor w_in, Tensor b_in, Tensor w_out, Tensor b_out, int rows) -> Tensor",
          &feed_forward);
    m.def("group_norm(Tensor x, Tensor weight, Tensor bias, int groups, float eps, bool silu) -> Tensor",
          &group_norm);
    m.def("winograd_conv(Tensor x, Tensor u2, Tensor u4, Tensor? bias) -> Tensor", &winograd_conv);
    m.def("pointwise_conv(Tensor x, Tensor weight_t, Tensor? bias) -> Tensor", &pointwise_conv);
    m.def("loops() -> int", &loops);
}
