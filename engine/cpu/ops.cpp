/* The C loops of engine/cpu/kernels.c as torch operators, registered in C++ so that a frozen graph calls them
 * without Python: an operator written in Python takes the GIL for every call, and with two graphs running side by
 * side (the Compare grid's rows, a split batch) each waited on the other's calls.
 *
 * GL_NAMESPACE names the operators' namespace (engine/cpu_kernels.py gives one per set of compiler flags). The
 * sixteen-lane attention loop and the GEGLU loop exist where the loops were compiled with AVX-512; elsewhere their
 * weak symbols stay null, the attention takes the row loop and `loops()` says that GEGLU has none.
 */
#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/add.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/layer_norm.h>
#include <ATen/ops/linear.h>
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
int layer_norm_rows(const float* x, const float* gamma, const float* beta, float* out, long N, long C, float eps);
int winograd_conv3x3(const float* x, const float* u, const float* bias, const float* per_sample, const float* residual,
                     float* out, long N, long H, long W, long C, long O, long m, long first, long last,
                     float* scratch) __attribute__((weak));
long winograd_blocks(long N, long H, long W, long m) __attribute__((weak));
long winograd_scratch(long C, long O, long m) __attribute__((weak));
void add_bias_residual(float* out, const float* bias, const float* residual, long rows, long cols);
}

namespace {

constexpr int64_t ROWS = 1, LANES = 2, GEGLU = 4, WINOGRAD = 8;

void check_float_cpu(const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat, name, " must be a float32 CPU tensor.");
}

/* `rows` (N, O), a product without its bias, plus bias (O,) or none, plus `add`: in one pass of engine/cpu/epilogue.c
 * where `add` is a float32 CPU tensor of `shape` and `format` (the caller's output: `rows` viewed so), as torch's
 * two additions would round them; otherwise the bias as torch adds it and then `add`. Returns the result in `rows`'s
 * memory when fused, viewed by `view` (rows -> the caller's output). */
template <typename View>
at::Tensor finish_product(at::Tensor rows, const std::optional<at::Tensor>& bias, const at::Tensor& add,
                          at::IntArrayRef shape, at::MemoryFormat format, View view) {
    const bool biased = bias.has_value() && bias->defined();
    const bool fused = add.device().is_cpu() && add.scalar_type() == at::kFloat && add.sizes() == shape &&
                       add.is_contiguous(format) && (!biased || (bias->scalar_type() == at::kFloat &&
                                                                 bias->is_contiguous() && bias->dim() == 1));
    if (!fused) return at::add(view(biased ? rows.add_(*bias) : rows), add);
    add_bias_residual(rows.data_ptr<float>(), biased ? bias->data_ptr<float>() : nullptr, add.data_ptr<float>(),
                      rows.size(0), rows.size(1));
    return view(rows);
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
 * (2F,); w_out (O, F), b_out (O,); returns (..., O), plus `add` where given (the block's residual), which each
 * block adds as it finishes where it is a float32 tensor of the output's shape (engine/cpu/epilogue.c), torch
 * after otherwise. Each row's numbers are those of the unblocked steps and torch's addition. */
at::Tensor feed_forward(const at::Tensor& input, const at::Tensor& w_in, const at::Tensor& b_in,
                        const at::Tensor& w_out, const at::Tensor& b_out, int64_t rows,
                        const std::optional<at::Tensor>& add) {
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
    const bool adds = add.has_value() && add->defined();
    const bool fused = adds && add->device().is_cpu() && add->scalar_type() == at::kFloat &&
                       add->sizes() == at::IntArrayRef(shape) && add->is_contiguous();
    const at::Tensor residual = fused ? add->view({n, w_out.size(0)}) : at::Tensor();
    const at::Tensor bias_out = b_out.contiguous();
    for (int64_t r = 0; r < n; r += block) {
        const int64_t m = std::min(block, n - r);
        at::Tensor hs = h.narrow(0, 0, m), gs = g.narrow(0, 0, m), os = out.narrow(0, r, m);
        at::mm_out(hs, x.narrow(0, r, m), w_in_t);
        geglu(hs.data_ptr<float>(), bias.data_ptr<float>(), gs.data_ptr<float>(), m, features);
        if (fused) {  // the product alone, then its bias and the residual in one pass: torch's bits
            at::mm_out(os, gs, w_out_t);
            add_bias_residual(os.data_ptr<float>(), bias_out.data_ptr<float>(),
                              residual.narrow(0, r, m).data_ptr<float>(), m, w_out.size(0));
        } else {
            at::addmm_out(os, b_out, gs, w_out_t);
        }
    }
    return adds && !fused ? at::add(out.view(shape), *add) : out.view(shape);
}

/* linear(x, weight, bias) + add, where `add` has the output's shape: the product alone, then its bias and `add`
 * in one pass (engine/cpu/epilogue.c), as torch's addmm and addition round them; torch's ops for anything else. */
at::Tensor linear_add(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      const at::Tensor& add) {
    const bool ours = input.device().is_cpu() && input.scalar_type() == at::kFloat && input.dim() >= 1 &&
                      weight.device().is_cpu() && weight.scalar_type() == at::kFloat && weight.dim() == 2 &&
                      weight.size(1) == input.size(-1) && input.numel() > 0 && !at::GradMode::is_enabled();
    if (!ours) return at::add(at::linear(input, weight, bias), add);
    std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end());
    shape.back() = weight.size(0);
    at::Tensor rows = at::mm(input.reshape({-1, input.size(-1)}), weight.t());
    return finish_product(rows, bias, add, shape, at::MemoryFormat::Contiguous,
                          [&](const at::Tensor& t) { return t.view(shape); });
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

/* aten::layer_norm, in one call of engine/cpu/norm.c's loop where it normalises a float32 CPU tensor over its last
 * dimension with float32 weight and bias; torch's own kernel for everything else. */
at::Tensor layer_norm(const at::Tensor& input, c10::IntArrayRef shape, const std::optional<at::Tensor>& weight,
                      const std::optional<at::Tensor>& bias, double eps) {
    const bool affine = weight.has_value() && weight->defined() && bias.has_value() && bias->defined();
    const bool ours = input.device().is_cpu() && input.scalar_type() == at::kFloat && input.dim() >= 1 &&
                      shape.size() == 1 && shape[0] == input.size(-1) && input.numel() > 0 && affine &&
                      weight->scalar_type() == at::kFloat && bias->scalar_type() == at::kFloat &&
                      weight->device().is_cpu() && bias->device().is_cpu() && weight->numel() == shape[0] &&
                      bias->numel() == shape[0] && !at::GradMode::is_enabled();
    if (ours) {
        at::Tensor x = input.contiguous(), w = weight->contiguous(), b = bias->contiguous();
        at::Tensor out = at::empty(x.sizes(), x.options());
        const int64_t c = x.size(-1);
        if (layer_norm_rows(x.data_ptr<float>(), w.data_ptr<float>(), b.data_ptr<float>(), out.data_ptr<float>(),
                            x.numel() / c, c, static_cast<float>(eps)) == 0)
            return out;
    }
    return at::layer_norm(input, shape, weight, bias, eps);
}

/* A 3x3 convolution, stride 1, padding 1, as Winograd's F(4x4, 3x3) where the image is at least 8x8, F(2x2, 3x3)
 * below (engine/cpu/winograd.c): x (N, C, H, W), read channels-last; u2 (16, C, O) and u4 (36, C, O), the kernel as
 * G g G^T for each (engine/cpu_kernels.py's winograd_weights); bias (O,) or none; `add`, a tensor added to the
 * result as torch's addition would add it (a resnet's time embedding, (N, O, 1, 1), or its residual, (N, O, H, W)):
 * in the loop where it is one of those two float32 shapes, by torch after it otherwise. Returns (N, O, H, W)
 * channels-last. The tiles' blocks are shared among torch's threads; each tile's numbers are the same whichever
 * thread takes it. */
at::Tensor winograd_conv(const at::Tensor& input, const at::Tensor& u2, const at::Tensor& u4,
                         const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& add) {
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
    const bool f4 = h >= 8 && w >= 8;  // engine/cpu_kernels.py's WINOGRAD_F4_SIDE
    at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast), weights = (f4 ? u4 : u2).contiguous();
    at::Tensor b = biased ? bias->contiguous() : at::Tensor();
    at::Tensor out = at::empty({n, o, h, w}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
    const float* xp = x.data_ptr<float>();
    const float* up = weights.data_ptr<float>();
    const float* bp = biased ? b.data_ptr<float>() : nullptr;
    // the tensor to add, where the loop can add it: per sample and channel, or whole
    const bool adds = add.has_value() && add->defined();
    const bool ours = adds && add->device().is_cpu() && add->scalar_type() == at::kFloat && add->dim() == 4 &&
                      add->size(0) == n && add->size(1) == o;
    const bool per_sample = ours && add->size(2) == 1 && add->size(3) == 1;
    const bool residual = ours && add->size(2) == h && add->size(3) == w;
    at::Tensor extra = per_sample ? add->reshape({n, o}).contiguous()
                                  : residual ? add->contiguous(at::MemoryFormat::ChannelsLast) : at::Tensor();
    const float* sp = per_sample ? extra.data_ptr<float>() : nullptr;
    const float* rp = residual ? extra.data_ptr<float>() : nullptr;
    float* op = out.data_ptr<float>();
    const long m = f4 ? 4 : 2;
    const int64_t scratch = winograd_scratch(c, o, m);
    at::parallel_for(0, winograd_blocks(n, h, w, m), 1, [&](int64_t first, int64_t last) {
        std::unique_ptr<float[]> room(new float[scratch]);  // left unset: every read of it follows a write
        winograd_conv3x3(xp, up, bp, sp, rp, op, n, h, w, c, o, m, first, last, room.get());
    });
    return adds && !per_sample && !residual ? at::add(out, *add) : out;
}

/* A 1x1 convolution (stride 1, no padding) as one matrix product: x (N, C, H, W), read channels-last, is (N H W, C)
 * rows; weight_t (C, O) is the kernel transposed; returns (N, O, H, W) channels-last, a view of the (N H W, O)
 * product. oneDNN's 1x1 convolution gives the same bits from the same product more slowly on the lab's shapes
 * (a 30-image batch, one core: 32 -> 32 channels at 16x16 415 us against 284, 64 -> 64 at 4x4 185 against 66).
 * `add`, where given, is added after the bias, as linear_add adds it. */
at::Tensor pointwise_conv(const at::Tensor& input, const at::Tensor& weight_t, const std::optional<at::Tensor>& bias,
                          const std::optional<at::Tensor>& add) {
    TORCH_CHECK(input.dim() == 4 && weight_t.dim() == 2 && weight_t.size(0) == input.size(1) &&
                    (!bias.has_value() || !bias->defined() || (bias->dim() == 1 && bias->size(0) == weight_t.size(1))),
                "x must be (N, C, H, W), weight_t (C, O) and bias (O,).");
    const int64_t n = input.size(0), c = input.size(1), h = input.size(2), w = input.size(3), o = weight_t.size(1);
    at::Tensor rows = input.contiguous(at::MemoryFormat::ChannelsLast).permute({0, 2, 3, 1}).reshape({-1, c});
    const auto view = [&](const at::Tensor& t) { return t.view({n, h, w, o}).permute({0, 3, 1, 2}); };
    if (add.has_value() && add->defined())  // a transformer's residual: added in the product's last pass
        return finish_product(at::mm(rows, weight_t), bias, *add, {n, o, h, w}, at::MemoryFormat::ChannelsLast, view);
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
    m.def("group_norm(Tensor x, Tensor weight, Tensor bias, int groups, float eps, bool silu) -> Tensor",
          &group_norm);
    m.def("layer_norm(Tensor x, int[] shape, Tensor? weight, Tensor? bias, float eps) -> Tensor", &layer_norm);
    m.def("feed_forward(Tensor x, Tensor w_in, Tensor b_in, Tensor w_out, Tensor b_out, int rows, Tensor? add=None) "
          "-> Tensor",
          &feed_forward);
    m.def("linear_add(Tensor x, Tensor weight, Tensor? bias, Tensor add) -> Tensor", &linear_add);
    m.def("winograd_conv(Tensor x, Tensor u2, Tensor u4, Tensor? bias, Tensor? add=None) -> Tensor", &winograd_conv);
    m.def("pointwise_conv(Tensor x, Tensor weight_t, Tensor? bias, Tensor? add=None) -> Tensor", &pointwise_conv);
    m.def("loops() -> int", &loops);
}
