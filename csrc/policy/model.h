// Data of the native policy step (pure C++): borrowed weight pointers, step inputs, scratch.
#ifndef AMAGO_FAST_POLICY_MODEL_H_
#define AMAGO_FAST_POLICY_MODEL_H_

#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <utility>
#include <vector>

namespace amago {
namespace policy {

// A float16 KV-cache element (IEEE binary16 bits). Conversions through the compiler's
// _Float16: exact widening; narrowing rounds to nearest even (libgcc or F16C), as torch does.
typedef uint16_t Half;
inline float HalfToFloat(Half h) {
  _Float16 f;
  std::memcpy(&f, &h, sizeof(h));
  return static_cast<float>(f);
}
// The largest finite float16 (the saturation bound of float16 KV-cache stores).
constexpr float kHalfMax = 65504.0f;
inline Half FloatToHalf(float x) {
  const _Float16 f = static_cast<_Float16>(x);
  Half h;
  std::memcpy(&h, &f, sizeof(h));
  return h;
}

// int8 KV-cache rows: scale = max|x| * kInv127 (a multiply, as the PyTorch path computes it;
// kernels.decode.quantize_int8_rows), q = round-half-even(x / scale) in [-127, 127].
constexpr float kInv127 = 1.0f / 127.0f;

// Storage of the ring KV caches: float32, float16 (Half) or int8 with a float32 scale per
// stored row (one key or value of one head).
enum class KVType { kF32, kF16, kI8 };

// Output columns per packed weight panel (GEMM tile width, step/dense.h).
constexpr int kPanel = 16;

struct Dense {
  const float* wt = nullptr;    // (in, out) row-major, i.e. the transposed torch weight
  const float* bias = nullptr;  // (out) or null
  // The first out / 16 * 16 columns of wt repacked as (out / 16) contiguous (in, 16) panels:
  // a tile then reads its weights as one sequential stream (row-major wt strides by out per
  // input; measured 2.2x on the default model's 8-env step: 4.4 -> 2.0 ms CPU). Filled by
  // PackModel.
  const float* packed = nullptr;
  int64_t in = 0;
  int64_t out = 0;
};

struct Norm {
  const float* gamma = nullptr;  // null: no norm (NormFormer norms off)
  const float* beta = nullptr;
  float eps = 1e-5f;
  int64_t dim = 0;
  bool on() const { return gamma != nullptr; }
};

enum class OpKind { kLinear, kNorm, kLeaky };

// The trajectory encoder: causal Transformer over the ring KV caches, GRU over a hidden state,
// or the memory-free MLP.
enum class TrajKind { kTransformer, kGru, kFF };

struct MlpOp {
  OpKind kind = OpKind::kLinear;
  Dense lin;
  Norm norm;
  float slope = 0.01f;
};

struct Layer {
  Norm attn_in, attn_out, ff_in, ff_mid;
  Dense qkv, proj, ff1, ff2;  // qkv's query third is pre-scaled by head_dim^-0.5
  float slope = 0.01f;
  int64_t heads = 0;
  int64_t head_dim = 0;
};

// One layer of a GRU trajectory encoder (torch.nn.GRU's gate order r, z, n in the 3d columns):
// r = σ(x Wir + bir + h Whr + bhr), z = σ(x Wiz + biz + h Whz + bhz),
// n = tanh(x Win + bin + r ⊙ (h Whn + bhn)), h' = (1 - z) ⊙ n + z ⊙ h.
struct GruLayer {
  Dense ih, hh;  // (d, 3d) each, biases included
};

// One convolution of an image encoder, run as im2col + GEMM over NHWC activations: w is
// (kh * kw * cin, cout) with rows in (ky, kx, ci) order, bias included; a LeakyReLU follows.
struct ConvLayer {
  Dense w;
  int64_t cin = 0, cout = 0, kh = 0, kw = 0, stride = 1, pad = 0;
  int64_t in_h = 0, in_w = 0, out_h = 0, out_w = 0;
  float slope = 0.01f;
};

// The CNN of one uint8 (H, W, C) image key (nets.timestep.ImageEncoder): pixels / 255, the
// convolutions, then a linear on the flattened NHWC activations (its input rows permuted from
// torch's CHW flattening when the model is built) to `out.out` features.
struct ImageNet {
  int64_t h = 0, w = 0, c = 0;
  std::vector<ConvLayer> convs;
  Dense out;
};

// Element type of an input field (NumPy dtype kinds the adapter accepts).
enum class FieldType { kF32, kF64, kI8, kI16, kI32, kI64, kU8, kU16, kU32, kU64, kBool };

struct Field {
  const void* data = nullptr;  // (b, width) C-contiguous
  FieldType type = FieldType::kF32;
  int64_t width = 0;
};

struct Model {
  // Timestep features, in the order of TimestepEncoder: normalised keys, raw keys, action
  // features, symlog reward, boundary flag.
  std::vector<int64_t> norm_widths, raw_widths;
  int64_t norm_dim = 0;
  const float* norm_mean = nullptr;  // null: no standardisation (no normaliser / count < 2)
  const float* norm_std = nullptr;
  bool clip = false;  // a normaliser exists: clip to ±clip_value
  float clip_value = 10.0f;
  bool discrete = true;            // Discrete or MultiDiscrete: one-hot per component
  std::vector<int64_t> nvec;       // discrete: choices per component ({n} for Discrete)
  int64_t action_dim = 0;          // one-hot width (Σ nvec) or vector width (continuous)
  const float* act_low = nullptr;  // continuous
  const float* act_range = nullptr;
  std::vector<ImageNet> images;  // image keys (native CNNs); features after the raw keys
  int64_t image_dim = 0;         // Σ images' output widths
  int64_t in_dim = 0;
  std::vector<MlpOp> tstep;
  // Trajectory encoder.
  TrajKind traj = TrajKind::kTransformer;
  std::vector<MlpOp> ff;  // memory-free encoder
  std::vector<GruLayer> gru_layers;
  Dense in_proj;          // Transformer: no bias (it is part of the position rows); GRU: biased
  const float* b_in = nullptr;
  bool learned_pos = false;
  const float* pos_table = nullptr;  // learned: (pos_rows, d_model), bias included
  int64_t pos_rows = 0;
  std::vector<float> freqs;  // sinusoidal: d_model / 2 frequencies (float32, as torch computes)
  std::vector<Layer> layers;
  Norm norm_out;
  int64_t d_model = 0;
  std::vector<MlpOp> actor;
  int64_t param_dim = 0;
  std::vector<std::vector<float>> panels;  // storage of every Dense::packed
};

// Fills Dense::packed for one weight (storage appended to m->panels; moving a vector keeps its
// buffer, so the pointers stay valid).
inline void PackDense(Model* m, Dense* w) {
  const int64_t full = w->out / kPanel * kPanel;
  std::vector<float> p(static_cast<size_t>(full * w->in));
  for (int64_t j0 = 0; j0 < full; j0 += kPanel) {
    float* dst = p.data() + j0 * w->in;
    for (int64_t i = 0; i < w->in; ++i) {
      for (int64_t j = 0; j < kPanel; ++j) dst[i * kPanel + j] = w->wt[i * w->out + j0 + j];
    }
  }
  w->packed = p.data();
  m->panels.push_back(std::move(p));
}

// Packs every weight of the model (once per engine, i.e. per parameter version).
inline void PackModel(Model* m) {
  for (ImageNet& net : m->images) {
    for (ConvLayer& cv : net.convs) PackDense(m, &cv.w);
    PackDense(m, &net.out);
  }
  for (auto* ops : {&m->tstep, &m->ff, &m->actor}) {
    for (MlpOp& op : *ops) {
      if (op.kind == OpKind::kLinear) PackDense(m, &op.lin);
    }
  }
  if (m->traj != TrajKind::kFF) PackDense(m, &m->in_proj);
  for (Layer& L : m->layers) {
    for (Dense* w : {&L.qkv, &L.proj, &L.ff1, &L.ff2}) PackDense(m, w);
  }
  for (GruLayer& G : m->gru_layers) {
    PackDense(m, &G.ih);
    PackDense(m, &G.hh);
  }
}

struct StepIO {
  int64_t b = 0;
  std::vector<Field> norm_fields, raw_fields;
  // Per Model::images, one of: (b, H, W, C) uint8 pixels (the engine runs the CNN) or the
  // CNN's (b, F) float32 embeddings computed by the caller (the other pointer is null).
  std::vector<const uint8_t*> images;
  std::vector<const float*> image_embeddings;
  Field action;  // (b, action width) for continuous, (b, components) indices for discrete
  Field reward;  // (b, 1)
  const int64_t* time_index = nullptr;
  const int64_t* env_ids = nullptr;  // null: row r is env r
  std::vector<void*> kv;             // per layer (2, N, H, C, D) of kv_type
  KVType kv_type = KVType::kF32;
  std::vector<float*> kv_scales;     // kI8: per layer (2, N, H, C) float32 row scales
  std::vector<int64_t*> counts;      // per layer (N)
  float* hidden = nullptr;            // GRU: (layers, N, d) float32 hidden state, in place
  int64_t num_envs = 0;
  int64_t capacity = 0;
  float* out = nullptr;  // (b, param_dim)
};

// Scratch memory of one step (grown on demand, reused across calls).
struct Scratch {
  std::vector<float> a, b, c, d, tmp;
  std::vector<float> img_a, img_b;  // CNN activations and im2col columns
  std::vector<std::vector<float>> scores;  // attention scores, one per thread of the team
  static float* Get(std::vector<float>* v, size_t n) {
    if (v->size() < n) v->resize(n);
    return v->data();
  }
};

}  // namespace policy
}  // namespace amago

#endif  // AMAGO_FAST_POLICY_MODEL_H_
