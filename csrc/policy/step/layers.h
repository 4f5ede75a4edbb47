// Step inputs and encoders: field loads, MLP plans, the image CNN, sinusoidal positions.
// Part of step_impl.h: deliberately WITHOUT an include guard (compiled once per SIMD target
// inside engine.h's namespaces; include only through step_impl.h).

template <typename T>
inline void CastRow(const T* src, int64_t n, float* dst) {
  for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<float>(src[j]);
}

// Row r of a field as float32 (the cast NumPy's float32 assignment does).
inline void LoadRow(const Field& f, int64_t r, float* dst) {
  const int64_t w = f.width;
  switch (f.type) {
    case FieldType::kF32: std::memcpy(dst, static_cast<const float*>(f.data) + r * w, w * 4); break;
    case FieldType::kF64: CastRow(static_cast<const double*>(f.data) + r * w, w, dst); break;
    case FieldType::kI8: CastRow(static_cast<const int8_t*>(f.data) + r * w, w, dst); break;
    case FieldType::kI16: CastRow(static_cast<const int16_t*>(f.data) + r * w, w, dst); break;
    case FieldType::kI32: CastRow(static_cast<const int32_t*>(f.data) + r * w, w, dst); break;
    case FieldType::kI64: CastRow(static_cast<const int64_t*>(f.data) + r * w, w, dst); break;
    case FieldType::kU8: CastRow(static_cast<const uint8_t*>(f.data) + r * w, w, dst); break;
    case FieldType::kU16: CastRow(static_cast<const uint16_t*>(f.data) + r * w, w, dst); break;
    case FieldType::kU32: CastRow(static_cast<const uint32_t*>(f.data) + r * w, w, dst); break;
    case FieldType::kU64: CastRow(static_cast<const uint64_t*>(f.data) + r * w, w, dst); break;
    case FieldType::kBool: CastRow(static_cast<const bool*>(f.data) + r * w, w, dst); break;
  }
}

// Element r (flat index) of a field as double (exact for every integer action index).
inline double LoadScalar(const Field& f, int64_t r) {
  switch (f.type) {
    case FieldType::kF32: return static_cast<const float*>(f.data)[r];
    case FieldType::kF64: return static_cast<const double*>(f.data)[r];
    case FieldType::kI8: return static_cast<const int8_t*>(f.data)[r];
    case FieldType::kI16: return static_cast<const int16_t*>(f.data)[r];
    case FieldType::kI32: return static_cast<const int32_t*>(f.data)[r];
    case FieldType::kI64: return static_cast<double>(static_cast<const int64_t*>(f.data)[r]);
    case FieldType::kU8: return static_cast<const uint8_t*>(f.data)[r];
    case FieldType::kU16: return static_cast<const uint16_t*>(f.data)[r];
    case FieldType::kU32: return static_cast<const uint32_t*>(f.data)[r];
    case FieldType::kU64: return static_cast<double>(static_cast<const uint64_t*>(f.data)[r]);
    case FieldType::kBool: return static_cast<const bool*>(f.data)[r] ? 1.0 : 0.0;
  }
  return 0.0;
}

// Runs an MLP plan on x (b, width in) → returns the buffer holding (b, width out); ping-pongs
// between x and y (both with room for b x max width).
inline float* RunMlp(const std::vector<MlpOp>& ops, int64_t b, int64_t width,
                                  float* x, float* y, float* tmp, int64_t* out_width) {
  for (const MlpOp& op : ops) {
    if (op.kind == OpKind::kLinear) {
      Gemm(x, width, b, op.lin, op.lin.bias, nullptr, 0, y, op.lin.out);
      std::swap(x, y);
      width = op.lin.out;
    } else if (op.kind == OpKind::kNorm) {
      LayerNormRows(x, width, b, width, op.norm.gamma, op.norm.beta, op.norm.eps, tmp);
    } else {
      LeakyRows(x, width, b, width, op.slope);
    }
  }
  *out_width = width;
  return x;
}

inline int64_t MlpMaxWidth(const std::vector<MlpOp>& ops, int64_t in) {
  int64_t w = in;
  for (const MlpOp& op : ops) {
    if (op.kind == OpKind::kLinear) w = std::max(w, op.lin.out);
  }
  return w;
}

// One convolution over output rows [r0, r1) (row = one (image, y, x) position): im2col of
// those rows, the packed GEMM, LeakyReLU. Rows are independent, so any split of the rows gives
// the same bits as none (blocks start at multiples of the GEMM's row tile).
struct ConvJob {
  const ConvLayer* cv;
  const float* in;  // (b, in_h, in_w, cin)
  float* cols;      // (rows, kh * kw * cin)
  float* out;       // (rows, cout)
  int64_t rows, block;
};

inline void ConvRows(const ConvJob& j, int64_t r0, int64_t r1) {
  const ConvLayer& cv = *j.cv;
  const int64_t K = cv.kh * cv.kw * cv.cin, per_image = cv.out_h * cv.out_w;
  const size_t row_bytes = cv.cin * sizeof(float);
  for (int64_t row = r0; row < r1; ++row) {
    const int64_t bi = row / per_image, oy = row % per_image / cv.out_w, ox = row % cv.out_w;
    float* dst = j.cols + row * K;
    for (int64_t ky = 0; ky < cv.kh; ++ky) {
      const int64_t iy = oy * cv.stride - cv.pad + ky;
      for (int64_t kx = 0; kx < cv.kw; ++kx) {
        const int64_t ix = ox * cv.stride - cv.pad + kx;
        float* d = dst + (ky * cv.kw + kx) * cv.cin;
        if (iy < 0 || iy >= cv.in_h || ix < 0 || ix >= cv.in_w) {
          std::memset(d, 0, row_bytes);  // zero padding
        } else {
          std::memcpy(d, j.in + ((bi * cv.in_h + iy) * cv.in_w + ix) * cv.cin, row_bytes);
        }
      }
    }
  }
  Gemm(j.cols + r0 * K, K, r1 - r0, cv.w, cv.w.bias, nullptr, 0, j.out + r0 * cv.cout, cv.cout);
  LeakyRows(j.out + r0 * cv.cout, cv.cout, r1 - r0, cv.cout, cv.slope);
}

inline void ConvTask(void* ctx, int64_t i, int /*slot*/) {
  const ConvJob& j = *static_cast<const ConvJob*>(ctx);
  ConvRows(j, i * j.block, std::min(j.rows, (i + 1) * j.block));
}

// Work (multiply-adds) of one convolution from which its rows are split across the team: a
// split costs ~10-35 µs to hand off here (see kParallelMinFloats), a 64x64x3 frame's second
// convolution ~4.7M multiply-adds (~1.5 ms on one core).
constexpr int64_t kConvParallelMinMacs = int64_t{1} << 22;
// Output rows per task: a multiple of every kTileRows, a few tasks per thread on big images.
constexpr int64_t kConvBlockRows = 256;

// The CNN of one image key for b rows: NHWC pixels / 255 (a division, as the PyTorch module
// computes it), each convolution as im2col + the packed GEMM + LeakyReLU (rows split across the
// team when large), then the output linear on the flattened NHWC activations into y (b rows of
// stride ldy).
inline void RunImageNet(const ImageNet& net, const uint8_t* px, int64_t b, Scratch* s, float* y,
                        int64_t ldy, Team* team, TeamBackoff* backoff) {
  const int64_t n = b * net.h * net.w * net.c;
  int64_t max_act = n, max_cols = 0;
  for (const ConvLayer& cv : net.convs) {
    max_act = std::max(max_act, b * cv.out_h * cv.out_w * cv.cout);
    max_cols = std::max(max_cols, b * cv.out_h * cv.out_w * cv.kh * cv.kw * cv.cin);
  }
  float* cur = Scratch::Get(&s->img_a, 2 * max_act);
  float* nxt = cur + max_act;
  float* cols = Scratch::Get(&s->img_b, max_cols);
  for (int64_t i = 0; i < n; ++i) cur[i] = static_cast<float>(px[i]) / 255.0f;
  for (const ConvLayer& cv : net.convs) {
    const int64_t rows = b * cv.out_h * cv.out_w;
    ConvJob job{&cv, cur, cols, nxt, rows, kConvBlockRows};
    const int64_t tasks = (rows + kConvBlockRows - 1) / kConvBlockRows;
    if (team != nullptr && tasks > 1 &&
        rows * cv.kh * cv.kw * cv.cin * cv.cout >= kConvParallelMinMacs) {
      team->Run(tasks, &ConvTask, &job, backoff);
    } else {
      ConvRows(job, 0, rows);
    }
    std::swap(cur, nxt);
  }
  Gemm(cur, net.out.in, b, net.out, net.out.bias, nullptr, 0, y, ldy);
}

// Sinusoidal position rows (bias included) for the engine's lifetime, grown on demand like
// the PyTorch plan's table; rows past kMaxTableRows are computed per call.
constexpr int64_t kMaxTableRows = 16384;

inline void SinusoidalRow(const Model& m, int64_t t, float* row) {
  const int64_t half = static_cast<int64_t>(m.freqs.size());
  const float tf = static_cast<float>(t);
  for (int64_t j = 0; j < half; ++j) {
    const float ang = tf * m.freqs[j];
    row[j] = std::sin(ang) + m.b_in[j];
    row[half + j] = std::cos(ang) + m.b_in[half + j];
  }
  if (m.d_model % 2) row[m.d_model - 1] = m.b_in[m.d_model - 1];
}
