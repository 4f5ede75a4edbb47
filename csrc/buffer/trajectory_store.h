// TrajectoryStore: the native engine of amago_fast.TrajectoryBuffer. Pure C++17, no Python.
//
// Storage is one preallocated ring per field (memory owned by the caller), `capacity` rows.
// Committed trajectory pieces are contiguous modulo the capacity and evicted oldest first.
// Open trajectories live in per-env staging and are copied into the ring when they end or
// reach `max_rows` rows (a cut keeps the boundary row on both sides).
//
// Concurrency: one collector thread calls Reset/Append/Commit while any number of threads call
// Sample. Commits and evictions take `ring_mu_` exclusively; gathers hold it shared for the
// whole gather, so a window never mixes rows of different commits (no torn or overwritten rows).
// Staging is guarded by `staging_mu_` (taken before `ring_mu_`), so GetState sees a consistent
// picture while the collector appends. A turnstile mutex gives waiting writers preference.
#ifndef AMAGO_FAST_BUFFER_TRAJECTORY_STORE_H_
#define AMAGO_FAST_BUFFER_TRAJECTORY_STORE_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "buffer/copy_row.h"
#include "buffer/goals.h"
#include "buffer/rng.h"
#include "buffer/thread_pool.h"

namespace amago {

struct FieldBuffer {
  uint8_t* ring = nullptr;  // capacity * row_bytes, owned by the caller
  size_t row_bytes = 0;
};

struct Piece {
  int64_t id = 0, pos = 0, rows = 0, offset = 0;
  int64_t cum_end = 0;  // transitions in all pieces up to and including this one
  // With goals: the relabeling tables (goals.h), built at commit, shared by copies of the
  // piece (GetState/pieces() copy pieces: they must not copy the tables).
  std::shared_ptr<const GoalIndex> goal_index;
};

struct SampleOutputs {
  std::vector<uint8_t*> fields;  // (B, L+1, row_bytes) each
  uint8_t* mask = nullptr;       // (B, L+1) bool
  int64_t* time_index = nullptr;  // (B, L+1)
  int64_t* trajectory_id = nullptr;  // (B,)
  int64_t* start = nullptr;          // (B,)
};

struct StoreState {
  std::vector<Piece> pieces;  // cum_end is recomputed on restore
  std::vector<int64_t> open_len, open_offset;
  int64_t write_pos = 0, next_id = 0;
  std::vector<std::vector<uint8_t>> open_rows;  // per field: open rows of every env, env order
};

enum class SampleMode : int { kTimesteps = 0, kTrajectories = 1 };

class TrajectoryStore {
 public:
  TrajectoryStore(std::vector<FieldBuffer> fields, int64_t capacity, int num_envs,
                  int64_t max_rows, uint64_t seed, int num_threads, int reward_field,
                  int terminated_field, int truncated_field, std::optional<GoalConfig> goals)
      : fields_(std::move(fields)),
        capacity_(capacity),
        num_envs_(num_envs),
        max_rows_(max_rows),
        seed_(seed),
        reward_field_(reward_field),
        terminated_field_(terminated_field),
        truncated_field_(truncated_field),
        goals_(std::move(goals)),
        pool_(std::max(1, num_threads)) {
    if (capacity_ < 2) throw std::invalid_argument("capacity must be >= 2 rows");
    if (max_rows_ < 2 || max_rows_ > capacity_) {
      throw std::invalid_argument("max_rows must be in [2, capacity]");
    }
    if (num_envs_ < 1) throw std::invalid_argument("num_envs must be >= 1");
    const int nf = static_cast<int>(fields_.size());
    for (int f : {reward_field_, terminated_field_, truncated_field_}) {
      if (f < 0 || f >= nf) throw std::invalid_argument("flag field index out of range");
    }
    if (goals_) {
      for (int f : {goals_->goal_field, goals_->achieved_field, goals_->active_field,
                    goals_->completed_field}) {
        if (f < 0 || f >= nf) throw std::invalid_argument("goal field index out of range");
      }
      const size_t es = GoalDTypeSize(goals_->dtype);
      if (fields_[goals_->goal_field].row_bytes != es * goals_->k * goals_->dim ||
          fields_[goals_->achieved_field].row_bytes != es * goals_->dim ||
          fields_[goals_->active_field].row_bytes != 4 ||
          fields_[goals_->completed_field].row_bytes != static_cast<size_t>(goals_->k)) {
        throw std::invalid_argument("goal field sizes do not match the goal config");
      }
    }
    relabel_written_.assign(fields_.size(), false);
    if (goals_) {
      for (int f : {goals_->goal_field, goals_->active_field, goals_->completed_field,
                    reward_field_, terminated_field_}) {
        relabel_written_[f] = true;
      }
    }
    staging_.resize(num_envs_);
    for (auto& env : staging_) env.resize(fields_.size());
    open_len_.assign(num_envs_, 0);
    open_offset_.assign(num_envs_, 0);
    stage_cap_.assign(num_envs_, 0);
  }

  int num_fields() const { return static_cast<int>(fields_.size()); }
  int num_envs() const { return num_envs_; }
  int num_threads() const { return pool_.size(); }

  int64_t used_rows() const {
    auto lock = ReadLock();
    return used_;
  }
  int64_t num_pieces() const {
    auto lock = ReadLock();
    return static_cast<int64_t>(pieces_.size());
  }
  std::vector<Piece> pieces() const {
    auto lock = ReadLock();
    return {pieces_.begin(), pieces_.end()};
  }
  std::vector<int64_t> open_lengths() const {
    std::lock_guard<std::mutex> lock(staging_mu_);
    return open_len_;
  }

  // Opens trajectories for `env_ids` with row 0 = the given fields (others zero). rows[j] holds
  // n rows of field field_ids[j]. An open trajectory with >= 1 transition is committed first.
  void Reset(const int64_t* env_ids, int64_t n, const std::vector<const uint8_t*>& rows,
             const std::vector<int>& field_ids) {
    CheckEnvIds(env_ids, n);
    std::lock_guard<std::mutex> lock(staging_mu_);
    for (int64_t i = 0; i < n; ++i) StartRow(env_ids[i], rows, field_ids, i);
  }

  // Appends one full row per env (rows[f] holds n rows of field f). Commits an env's trajectory
  // when its row is terminated or truncated, cuts it at max_rows rows. Throws (and changes
  // nothing) if an env has no open trajectory.
  void Append(const int64_t* env_ids, int64_t n, const std::vector<const uint8_t*>& rows) {
    CheckEnvIds(env_ids, n);
    if (rows.size() != fields_.size()) throw std::invalid_argument("append: wrong field count");
    std::lock_guard<std::mutex> lock(staging_mu_);
    for (int64_t i = 0; i < n; ++i) CheckOpen(env_ids[i], "append_step");
    for (int64_t i = 0; i < n; ++i) AppendRow(env_ids[i], rows, i);
  }

  // One vector-env step as a collector sees it, in one call: row i opens a new trajectory from
  // its observation fields (`obs_fields`, as Reset) where starts[i] != 0 and is appended (as
  // Append) otherwise. Starts first, then appends, so pieces commit in the order of
  // Reset(start rows) followed by Append(other rows). Every appended env is checked to have an
  // open trajectory before anything changes. Returns the number of appended rows.
  int64_t WriteStep(const int64_t* env_ids, int64_t n, const uint8_t* starts,
                    const std::vector<const uint8_t*>& rows, const std::vector<int>& obs_fields) {
    CheckEnvIds(env_ids, n);
    if (rows.size() != fields_.size()) throw std::invalid_argument("write_step: wrong field count");
    std::vector<const uint8_t*> obs;
    for (int f : obs_fields) obs.push_back(rows[f]);
    std::lock_guard<std::mutex> lock(staging_mu_);
    int64_t appended = 0;
    for (int64_t i = 0; i < n; ++i) {
      if (!starts[i]) {
        CheckOpen(env_ids[i], "write_step");
        ++appended;
      }
    }
    for (int64_t i = 0; i < n; ++i) {
      if (starts[i]) StartRow(env_ids[i], obs, obs_fields, i);
    }
    for (int64_t i = 0; i < n; ++i) {
      if (!starts[i]) AppendRow(env_ids[i], rows, i);
    }
    return appended;
  }

  // Commits n (2 <= n <= max_rows) contiguous rows per field as one piece.
  void Commit(const std::vector<const uint8_t*>& rows, int64_t n, int64_t offset) {
    if (rows.size() != fields_.size()) throw std::invalid_argument("commit: wrong field count");
    if (n < 2 || n > max_rows_) throw std::invalid_argument("commit: piece length out of range");
    auto index = IndexPiece(rows, n);
    auto lock = WriteLock();
    CommitLocked(rows, n, offset, std::move(index));
  }

  // Gathers B windows of L steps (L+1 rows) into `out`. `relabel` null = stored rows.
  // `match` non-null = user predicate (runs on the calling thread only).
  void Sample(int64_t B, int64_t L, SampleMode mode, uint64_t counter,
              const RelabelParams* relabel, const MatchMatrixFn* match,
              const SampleOutputs& out) const {
    if (B < 1 || L < 1) throw std::invalid_argument("batch size and length must be >= 1");
    if (L + 1 > capacity_) throw std::invalid_argument("window longer than the capacity");
    if (out.fields.size() != fields_.size()) throw std::invalid_argument("wrong output count");
    if (relabel && !goals_) throw std::invalid_argument("relabel needs a goal config");
    auto lock = ReadLock();
    if (pieces_.empty()) {
      throw std::invalid_argument("sample_windows: no committed trajectory yet");
    }
    auto one = [&](int64_t b) { GatherWindow(b, L, mode, counter, relabel, match, out); };
    // Below ~64 KiB per call thread hand-off costs more than it saves.
    int64_t bytes = 0;
    for (const auto& f : fields_) bytes += static_cast<int64_t>(f.row_bytes);
    bytes *= B * (L + 1);
    if (match != nullptr || bytes < (64 << 10)) {
      for (int64_t b = 0; b < B; ++b) one(b);
    } else {
      pool_.ParallelFor(B, one);
    }
  }

  StoreState GetState() const {
    std::lock_guard<std::mutex> slock(staging_mu_);
    auto lock = ReadLock();
    StoreState s;
    s.pieces.assign(pieces_.begin(), pieces_.end());
    s.open_len = open_len_;
    s.open_offset = open_offset_;
    s.write_pos = write_pos_;
    s.next_id = next_id_;
    s.open_rows.resize(fields_.size());
    for (size_t f = 0; f < fields_.size(); ++f) {
      const size_t rb = fields_[f].row_bytes;
      for (int e = 0; e < num_envs_; ++e) {
        const uint8_t* p = staging_[e][f].data();
        s.open_rows[f].insert(s.open_rows[f].end(), p, p + open_len_[e] * rb);
      }
    }
    return s;
  }

  // Replaces all bookkeeping (the ring's contents belong to the caller). The caller validated
  // the state (amago_fast.buffer_reference._check_state); the sizes are re-checked here.
  void SetState(const StoreState& s) {
    if (static_cast<int>(s.open_len.size()) != num_envs_ ||
        static_cast<int>(s.open_offset.size()) != num_envs_ ||
        s.open_rows.size() != fields_.size()) {
      throw std::invalid_argument("set_state: wrong number of envs or fields");
    }
    int64_t total_open = 0, used = 0;
    for (int64_t v : s.open_len) {
      if (v < 0 || v > max_rows_) throw std::invalid_argument("set_state: bad open length");
      total_open += v;
    }
    for (size_t f = 0; f < fields_.size(); ++f) {
      if (s.open_rows[f].size() != static_cast<size_t>(total_open) * fields_[f].row_bytes) {
        throw std::invalid_argument("set_state: open rows have the wrong size");
      }
    }
    for (const Piece& p : s.pieces) {
      if (p.rows < 2 || p.rows > max_rows_ || p.pos < 0 || p.pos >= capacity_) {
        throw std::invalid_argument("set_state: bad piece");
      }
      used += p.rows;
    }
    if (used > capacity_ || s.write_pos < 0 || s.write_pos >= capacity_) {
      throw std::invalid_argument("set_state: pieces exceed the capacity");
    }
    std::lock_guard<std::mutex> slock(staging_mu_);
    auto lock = WriteLock();
    // The new pieces (and their relabeling tables, from the ring) are built aside: a bad
    // goal_active throws before anything changed.
    std::deque<Piece> pieces;
    int64_t cum = 0;
    for (Piece p : s.pieces) {
      cum += p.rows - 1;
      p.cum_end = cum;
      if (goals_) {
        const GoalConfig& g = *goals_;
        int32_t active0;
        std::memcpy(&active0, RingRow(g.active_field, p.pos, 0), 4);
        CheckActive(active0);
        p.goal_index = std::make_shared<const GoalIndex>(
            BuildGoalIndex(g, p.rows, RingRow(g.goal_field, p.pos, 0), active0,
                           [&](int64_t t) { return RingRow(g.achieved_field, p.pos, t); }));
      }
      pieces.push_back(std::move(p));
    }
    pieces_.swap(pieces);
    used_ = used;
    write_pos_ = s.write_pos;
    next_id_ = s.next_id;
    std::vector<int64_t> at(fields_.size(), 0);
    for (int e = 0; e < num_envs_; ++e) {
      open_len_[e] = s.open_len[e];
      open_offset_[e] = s.open_offset[e];
      if (s.open_len[e] == 0) continue;
      EnsureStage(e, s.open_len[e]);
      for (size_t f = 0; f < fields_.size(); ++f) {
        const size_t bytes = s.open_len[e] * fields_[f].row_bytes;
        std::memcpy(staging_[e][f].data(), s.open_rows[f].data() + at[f], bytes);
        at[f] += static_cast<int64_t>(bytes);
      }
    }
  }

 private:
  void CheckOpen(int64_t e, const char* what) const {
    if (open_len_[e] == 0) {
      throw std::invalid_argument(std::string(what) + ": env " + std::to_string(e) +
                                  " has no open trajectory (call reset_envs)");
    }
  }

  // Row i of `rows` (one pointer per entry of field_ids) becomes row 0 of env e's new
  // trajectory; the other fields of row 0 are zero. A still-open trajectory with at least one
  // transition is committed first (a cut), a lone first row is dropped. Caller holds staging_mu_.
  void StartRow(int64_t e, const std::vector<const uint8_t*>& rows,
                const std::vector<int>& field_ids, int64_t i) {
    if (open_len_[e] >= 2) CommitOpen(e);
    EnsureStage(e, 1);
    for (size_t f = 0; f < fields_.size(); ++f) {
      std::memset(staging_[e][f].data(), 0, fields_[f].row_bytes);
    }
    for (size_t j = 0; j < field_ids.size(); ++j) {
      const size_t rb = fields_[field_ids[j]].row_bytes;
      CopyRow(staging_[e][field_ids[j]].data(), rows[j] + i * rb, rb);
    }
    open_len_[e] = 1;
    open_offset_[e] = 0;
  }

  // Appends row i of `rows` (every field) to env e's open trajectory; commits it on
  // terminated | truncated, cuts it at max_rows rows. Caller holds staging_mu_.
  void AppendRow(int64_t e, const std::vector<const uint8_t*>& rows, int64_t i) {
    const int64_t t = open_len_[e];
    EnsureStage(e, t + 1);
    // The field count and row sizes in locals: through the members the compiler reloads them
    // after every copy (the copy might alias them), ~1/3 of this loop's instructions.
    const size_t nf = fields_.size();
    const FieldBuffer* field = fields_.data();
    std::vector<uint8_t>* stage = staging_[e].data();
    const uint8_t* const* src = rows.data();
    for (size_t f = 0; f < nf; ++f) {
      const size_t rb = field[f].row_bytes;
      CopyRow(stage[f].data() + t * rb, src[f] + i * rb, rb);
    }
    open_len_[e] = t + 1;
    if (rows[terminated_field_][i] || rows[truncated_field_][i]) {
      CommitOpen(e);
      open_len_[e] = 0;
    } else if (t + 1 == max_rows_) {
      CommitOpen(e);
      for (size_t f = 0; f < fields_.size(); ++f) {
        const size_t rb = fields_[f].row_bytes;
        std::memmove(staging_[e][f].data(), staging_[e][f].data() + t * rb, rb);
      }
      open_len_[e] = 1;
      open_offset_[e] += t;
    }
  }

  void CheckEnvIds(const int64_t* ids, int64_t n) const {
    for (int64_t i = 0; i < n; ++i) {
      if (ids[i] < 0 || ids[i] >= num_envs_) {
        throw std::out_of_range("env id " + std::to_string(ids[i]) + " out of range [0, " +
                                std::to_string(num_envs_) + ")");
      }
    }
  }

  // glibc's rwlock prefers readers: learner threads sampling back to back could starve the
  // collector's commits. A waiting writer holds the turnstile, so new readers queue behind it.
  std::shared_lock<std::shared_mutex> ReadLock() const {
    { std::lock_guard<std::mutex> pass(turnstile_); }
    return std::shared_lock<std::shared_mutex>(ring_mu_);
  }
  std::unique_lock<std::shared_mutex> WriteLock() const {
    std::lock_guard<std::mutex> pass(turnstile_);
    return std::unique_lock<std::shared_mutex>(ring_mu_);
  }

  // Staging grows by doubling up to max_rows (preallocating max_rows for every env could be
  // num_envs * capacity rows).
  void EnsureStage(int64_t e, int64_t rows) {
    if (stage_cap_[e] >= rows) return;
    const int64_t cap = std::min(max_rows_, std::max({rows, int64_t{16}, 2 * stage_cap_[e]}));
    for (size_t f = 0; f < fields_.size(); ++f) staging_[e][f].resize(cap * fields_[f].row_bytes);
    stage_cap_[e] = cap;
  }

  void CommitOpen(int64_t e) {
    std::vector<const uint8_t*> rows(fields_.size());
    for (size_t f = 0; f < fields_.size(); ++f) rows[f] = staging_[e][f].data();
    auto index = IndexPiece(rows, open_len_[e]);
    auto lock = WriteLock();
    CommitLocked(rows, open_len_[e], open_offset_[e], std::move(index));
  }

  void CheckActive(int32_t active0) const {
    if (active0 < 0 || active0 > goals_->k) {
      throw std::invalid_argument("goal_active of a piece's row 0 must be in [0, k], got " +
                                  std::to_string(active0));
    }
  }

  // The relabeling tables of n contiguous rows about to be committed (null without goals).
  // Built before the ring lock is taken, so samplers never wait for it.
  std::shared_ptr<const GoalIndex> IndexPiece(const std::vector<const uint8_t*>& rows,
                                              int64_t n) const {
    if (!goals_) return nullptr;
    const GoalConfig& g = *goals_;
    int32_t active0;
    std::memcpy(&active0, rows[g.active_field], 4);
    CheckActive(active0);
    const uint8_t* ach = rows[g.achieved_field];
    const size_t rb = fields_[g.achieved_field].row_bytes;
    return std::make_shared<const GoalIndex>(BuildGoalIndex(
        g, n, rows[g.goal_field], active0, [&](int64_t t) { return ach + t * rb; }));
  }

  void CommitLocked(const std::vector<const uint8_t*>& rows, int64_t n, int64_t offset,
                    std::shared_ptr<const GoalIndex> index) {
    while (used_ + n > capacity_) {
      used_ -= pieces_.front().rows;
      pieces_.pop_front();
    }
    const int64_t first = std::min(n, capacity_ - write_pos_);
    for (size_t f = 0; f < fields_.size(); ++f) {
      const size_t rb = fields_[f].row_bytes;
      std::memcpy(fields_[f].ring + write_pos_ * rb, rows[f], first * rb);
      if (first < n) std::memcpy(fields_[f].ring, rows[f] + first * rb, (n - first) * rb);
    }
    Piece p;
    p.id = next_id_++;
    p.pos = write_pos_;
    p.rows = n;
    p.offset = offset;
    p.cum_end = (pieces_.empty() ? 0 : pieces_.back().cum_end) + n - 1;
    p.goal_index = std::move(index);
    pieces_.push_back(std::move(p));
    used_ += n;
    write_pos_ = (write_pos_ + n) % capacity_;
  }

  // dst[0..n) rows of `bytes` each = src, by doubling copies (log2(n) memcpys).
  static void FillRows(uint8_t* dst, const uint8_t* src, size_t bytes, int64_t n) {
    if (n <= 0) return;
    std::memcpy(dst, src, bytes);
    int64_t done = 1;
    while (done < n) {
      const int64_t m = std::min(done, n - done);
      std::memcpy(dst + done * bytes, dst, m * bytes);
      done += m;
    }
  }

  const uint8_t* RingRow(int f, int64_t pos, int64_t t) const {
    // pos < capacity and t < capacity: one conditional subtraction instead of a division
    // (the modulo was ~a third of a relabeled window's replay time).
    int64_t i = pos + t;
    if (i >= capacity_) i -= capacity_;
    return fields_[f].ring + i * fields_[f].row_bytes;
  }

  void GatherWindow(int64_t b, int64_t L, SampleMode mode, uint64_t counter,
                    const RelabelParams* relabel, const MatchMatrixFn* match,
                    const SampleOutputs& out) const {
    const uint64_t w = static_cast<uint64_t>(b);
    size_t idx;
    const uint64_t x0 = Draw(seed_, counter, w, kDrawTrajectory);
    if (mode == SampleMode::kTimesteps) {
      const Piece& front = pieces_.front();
      const int64_t base = front.cum_end - (front.rows - 1);
      const int64_t total = pieces_.back().cum_end - base;
      const int64_t target = base + static_cast<int64_t>(UniformInt(x0, total));
      auto it = std::upper_bound(pieces_.begin(), pieces_.end(), target,
                                 [](int64_t v, const Piece& p) { return v < p.cum_end; });
      idx = static_cast<size_t>(it - pieces_.begin());
    } else {
      idx = static_cast<size_t>(UniformInt(x0, pieces_.size()));
    }
    const Piece& p = pieces_[idx];
    const int64_t T = p.rows - 1;
    const int64_t s = static_cast<int64_t>(
        UniformInt(Draw(seed_, counter, w, kDrawStart), std::max<int64_t>(T - L, 0) + 1));
    const int64_t valid = std::min(L, T - s) + 1;
    const int64_t R = L + 1;
    // Relabeling first: it writes the goal/reward/terminated fields and may cut the window, so
    // rows after the cut are never copied.
    int64_t keep = valid;
    if (relabel != nullptr) keep = RelabelWindow(*relabel, match, counter, b, p, s, valid, L, out);
    // Rows [pos+s, pos+s+keep) modulo capacity: at most two contiguous runs.
    const int64_t begin = (p.pos + s) % capacity_;
    const int64_t first = std::min(keep, capacity_ - begin);
    for (size_t f = 0; f < fields_.size(); ++f) {
      const size_t rb = fields_[f].row_bytes;
      uint8_t* dst = out.fields[f] + b * R * rb;
      if (relabel == nullptr || !relabel_written_[f]) {
        std::memcpy(dst, fields_[f].ring + begin * rb, first * rb);
        if (first < keep) std::memcpy(dst + first * rb, fields_[f].ring, (keep - first) * rb);
      }
      if (keep < R) std::memset(dst + keep * rb, 0, (R - keep) * rb);
    }
    uint8_t* mask = out.mask + b * R;
    int64_t* tidx = out.time_index + b * R;
    for (int64_t r = 0; r < R; ++r) {
      mask[r] = r < keep ? 1 : 0;
      tidx[r] = r < keep ? p.offset + s + r : 0;
    }
    out.trajectory_id[b] = p.id;
    out.start[b] = s;
  }

  // amago_fast/relabel.py, steps 1-3 (see its docstring).
  // Writes goal, goal_active, goal_completed, reward and terminated of window rows
  // [0, keep) and returns keep (the rows before the relabeled episode's cut, or `valid`).
  int64_t RelabelWindow(const RelabelParams& params, const MatchMatrixFn* match,
                        uint64_t counter, int64_t b, const Piece& p, int64_t s, int64_t valid,
                        int64_t L, const SampleOutputs& out) const {
    const GoalConfig& g = *goals_;
    const GoalIndex& gi = *p.goal_index;
    const int k = g.k;
    const int64_t T = p.rows - 1;
    const int64_t last = s + valid - 1;
    const size_t goal_bytes = fields_[g.goal_field].row_bytes;
    const size_t ach_bytes = fields_[g.achieved_field].row_bytes;  // = one goal's bytes
    int32_t active0;
    std::memcpy(&active0, RingRow(g.active_field, p.pos, 0), 4);

    // Per-window scratch: replacement rows and success rows (k each), the instruction, the
    // completed marks. On the stack for usual sizes: no heap allocation per window.
    Scratch scratch(16 * static_cast<size_t>(k) + goal_bytes + static_cast<size_t>(k));
    int64_t* src = reinterpret_cast<int64_t*>(scratch.data());
    int64_t* hits = src + k;
    uint8_t* instr = reinterpret_cast<uint8_t*>(hits + k);
    uint8_t* completed = instr + goal_bytes;
    std::memcpy(instr, RingRow(g.goal_field, p.pos, 0), goal_bytes);

    // The user predicate sees contiguous achieved rows.
    std::vector<uint8_t> ach_rows, matrix;
    auto compute_matrix = [&](int64_t n) {
      if (ach_rows.empty()) {
        ach_rows.resize((T + 1) * ach_bytes);
        for (int64_t t = 0; t <= T; ++t) {
          std::memcpy(ach_rows.data() + t * ach_bytes, RingRow(g.achieved_field, p.pos, t),
                      ach_bytes);
        }
      }
      matrix.assign(n * k, 0);
      (*match)(ach_rows.data(), instr, n, matrix.data());
    };

    // Step 1: goals completed by row T under the stored instruction (c), and the row of the
    // last of them (r). Cached at commit for the built-in match.
    int c = active0;
    int64_t r = 0;
    if (match != nullptr) {
      compute_matrix(T + 1);
      for (int64_t t = 1; t <= T && c < k; ++t) {
        if (matrix[t * k + c]) {
          ++c;
          r = t;
        }
      }
    } else {
      c = active0 + static_cast<int>(gi.reach.size());
      if (!gi.reach.empty()) r = gi.reach.back();
    }
    // Step 2: goals c .. c+m-1 get the achieved values of rows src[0..m).
    const int m = PlanRelabel(params, seed_, counter, static_cast<uint64_t>(b), c, k, r, T, s,
                              src);
    for (int i = 0; i < m; ++i) {
      std::memcpy(instr + (c + i) * ach_bytes, RingRow(g.achieved_field, p.pos, src[i]),
                  ach_bytes);
    }
    // Step 3: replay the (new) instruction up to row `last`: hits[i] = the row where goal
    // active0 + i is completed.
    int nh = 0;
    if (match != nullptr) {
      if (m > 0) compute_matrix(last + 1);
      for (int64_t t = 1, a = active0; t <= last && a < k; ++t) {
        if (matrix[t * k + a]) {
          hits[nh++] = t;
          ++a;
        }
      }
    } else {
      // Goals before c are unchanged, so until row r the replay is the cached one; without a
      // replacement (m == 0) it is the cached one throughout (goal c is never reached).
      bool done = m == 0;
      for (int64_t row : gi.reach) {
        if (row > last) {
          done = true;
          break;
        }
        hits[nh++] = row;
      }
      int64_t pos = r;
      for (int a = c; !done && a < k; ++a) {
        int64_t h = GoalIndex::kNever;
        if (gi.classes) {
          // A replaced goal equals its source row's value: its first success after `pos` is
          // the next row of that row's class. O(log T) instead of a scan of rows (pos, last].
          h = gi.NextInClass(a - c < m ? gi.row_class[src[a - c]] : gi.goal_class[a], pos);
        } else {  // tolerance match: scan
          const uint8_t* goal = instr + a * ach_bytes;
          int64_t idx = p.pos + pos + 1;
          if (idx >= capacity_) idx -= capacity_;
          const uint8_t* ring = fields_[g.achieved_field].ring;
          for (int64_t t = pos + 1; t <= last; ++t) {
            if (BuiltinMatch(g, ring + idx * ach_bytes, goal)) {
              h = t;
              break;
            }
            if (++idx == capacity_) idx = 0;
          }
        }
        if (h > last) break;
        hits[nh++] = h;
        pos = h;
      }
    }
    // The state of row t is the state after rows 1..t; the window shows rows s..last. Its
    // fields are piecewise constant between successes and are written by runs (per-row small
    // memcpys made relabeling ~4x the cost of a plain gather).
    int before = 0;  // successes before the window
    while (before < nh && hits[before] < s) ++before;
    // All k goals completed: the episode ends on the row of the last success, or on the
    // window's first transition row if that was earlier.
    int64_t cut = -1;
    if (active0 + nh == k) {
      cut = std::max<int64_t>({nh > 0 ? hits[nh - 1] : 0, s, 1}) - s + 1;
    }
    const int64_t keep = (cut >= 0 && cut < valid) ? cut : valid;
    const int64_t R = L + 1;
    const int64_t row0 = b * R;
    std::memcpy(completed, RingRow(g.completed_field, p.pos, 0), k);
    for (int i = 0; i < before; ++i) completed[active0 + i] = 1;
    FillRows(out.fields[g.goal_field] + row0 * goal_bytes, instr, goal_bytes, keep);
    std::memset(out.fields[reward_field_] + row0 * 4, 0, keep * 4);
    std::memset(out.fields[terminated_field_] + row0, 0, keep);
    int cur = active0 + before;
    int64_t seg = 0;
    for (int i = before; i <= nh; ++i) {
      const int64_t end = i < nh ? hits[i] - s : keep;
      const int32_t a32 = cur;
      FillRows(out.fields[g.active_field] + (row0 + seg) * 4,
               reinterpret_cast<const uint8_t*>(&a32), 4, end - seg);
      FillRows(out.fields[g.completed_field] + (row0 + seg) * k, completed, k, end - seg);
      if (i == nh) break;
      completed[cur] = 1;
      ++cur;
      std::memcpy(out.fields[reward_field_] + (row0 + end) * 4, &g.goal_reward, 4);
      seg = end;
    }
    if (cut >= 0) out.fields[terminated_field_][row0 + cut - 1] = 1;
    if (s == 0) {  // row 0 of the piece keeps its stored reward and flag
      std::memcpy(out.fields[reward_field_] + row0 * 4, RingRow(reward_field_, p.pos, 0), 4);
      out.fields[terminated_field_][row0] = *RingRow(terminated_field_, p.pos, 0);
    }
    return keep;
  }

  // A byte buffer on the stack up to 512 bytes, on the heap beyond; 8-byte aligned.
  class Scratch {
   public:
    explicit Scratch(size_t n) {
      if (n > sizeof(local_)) {
        heap_.resize((n + 7) / 8);
        data_ = reinterpret_cast<uint8_t*>(heap_.data());
      }
    }
    Scratch(const Scratch&) = delete;
    Scratch& operator=(const Scratch&) = delete;
    uint8_t* data() { return data_; }

   private:
    alignas(8) uint8_t local_[512];
    std::vector<uint64_t> heap_;
    uint8_t* data_ = local_;
  };

  const std::vector<FieldBuffer> fields_;
  const int64_t capacity_;
  const int num_envs_;
  const int64_t max_rows_;
  const uint64_t seed_;
  const int reward_field_, terminated_field_, truncated_field_;
  const std::optional<GoalConfig> goals_;
  std::vector<bool> relabel_written_;  // fields RelabelWindow writes itself

  mutable std::shared_mutex ring_mu_;  // ring contents + pieces: commits vs gathers
  mutable std::mutex turnstile_;       // writer preference (see ReadLock)
  std::deque<Piece> pieces_;
  int64_t used_ = 0, write_pos_ = 0, next_id_ = 0;

  mutable std::mutex staging_mu_;  // open trajectories
  std::vector<std::vector<std::vector<uint8_t>>> staging_;  // [env][field] rows
  std::vector<int64_t> open_len_, open_offset_, stage_cap_;

  mutable ThreadPool pool_;
};

}  // namespace amago

#endif  // AMAGO_FAST_BUFFER_TRAJECTORY_STORE_H_
