// A persistent team of worker threads for the policy step's attention (pure C++).
//
// Why not buffer/thread_pool.h: there the caller waits until every task is done by whichever
// thread took it and hands tasks over through a mutex-protected std::function; here the caller
// starts claiming tasks the moment it publishes a job (a lock-free counter), so a worker that
// is still waking up (~10-50 µs futex + scheduler on this 2-vCPU VM) costs nothing but its
// share, and a split that did not run in parallel makes the caller back off (TeamBackoff).
// Workers sleep after kSpinNs without a job: spinning longer hurt whenever the second core
// was busy (see kSpinNs).
//
// Run(n, fn) executes fn(task, slot) for task in [0, n), slot = 0 for the caller and 1..k for
// the workers; tasks are claimed one at a time from a counter, so a descheduled worker delays
// nothing (the caller claims the rest). The claim counter carries the job's generation in its
// high 32 bits, so a worker that wakes late can never run a task of a job that already
// returned. One Run at a time: a caller that finds the team busy runs its tasks inline.
#ifndef AMAGO_FAST_POLICY_TEAM_H_
#define AMAGO_FAST_POLICY_TEAM_H_

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace amago {
namespace policy {

// Per-caller (per-engine) record of whether splitting pays, see Team::Run. Touched only by its
// caller's thread (one Step at a time per engine).
struct TeamBackoff {
  int64_t skip = 0;        // Runs left to run inline
  int64_t length = 0;      // current back-off length
  int64_t split_runs = 0;  // Runs split so far (tests, diagnostics)
};

class Team {
 public:
  using Fn = void (*)(void* ctx, int64_t task, int slot);
  static constexpr int kMaxThreads = 16;

  // `threads` counts the caller (clamped to [1, kMaxThreads]): Team(1) runs everything inline.
  explicit Team(int threads) {
    for (int i = 1; i < threads && i < kMaxThreads; ++i) workers_.emplace_back([this, i] { WorkerLoop(i); });
  }
  Team(const Team&) = delete;
  Team& operator=(const Team&) = delete;
  ~Team() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_.store(true);
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
  }

  // The process-wide team of `threads` threads (created on first use, never destroyed: its
  // workers must outlive every engine, and joining threads in static destructors at
  // interpreter exit is fragile). Engines share it; concurrent steps fall back to inline.
  static Team* Shared(int threads) {
    static std::mutex mu;
    static std::vector<Team*> teams(kMaxThreads + 1, nullptr);
    threads = threads < 1 ? 1 : (threads > kMaxThreads ? kMaxThreads : threads);
    std::lock_guard<std::mutex> lock(mu);
    if (teams[threads] == nullptr) teams[threads] = new Team(threads);
    return teams[threads];
  }

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  void Run(int64_t n, Fn fn, void* ctx, TeamBackoff* bo) {
    if (bo->skip > 0) {
      --bo->skip;
      for (int64_t i = 0; i < n; ++i) fn(ctx, i, 0);
      return;
    }
    std::unique_lock<std::mutex> busy(run_mu_, std::try_to_lock);
    if (workers_.empty() || n <= 1 || !busy.owns_lock()) {
      for (int64_t i = 0; i < n; ++i) fn(ctx, i, 0);
      return;
    }
    ++bo->split_runs;
    fn_ = fn;
    ctx_ = ctx;
    n_.store(n, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    const uint64_t gen = ((ticket_.load(std::memory_order_relaxed) >> 32) + 1) & 0xffffffffu;
    ticket_.store(gen << 32, std::memory_order_seq_cst);  // publishes fn_/ctx_/n_
    WakeSleepers();
    int64_t mine = 0;
    for (int64_t i; (i = Claim(gen)) >= 0; ++mine) fn(ctx, i, 0);
    // Wait for the tasks the workers claimed (each at most one layer's (env, head) slice).
    const auto waited_from = std::chrono::steady_clock::now();
    if (mine < n) {
      int64_t done = done_.fetch_add(mine, std::memory_order_acq_rel) + mine;
      // Spin, then yield: on a busy machine the worker may share this core, and a pure spin
      // would keep it off the CPU for a whole time slice.
      for (int spins = 0; done < n; ++spins) {
        if (spins < 2048) {
          Pause();
        } else {
          std::this_thread::yield();
        }
        done = done_.load(std::memory_order_acquire);
      }
    }
    // Back off when the caller waited long for a worker's last task: the worker was preempted
    // mid-task, i.e. another process holds the second core (measured on this 2-vCPU VM under a
    // concurrent test run: splitting then made step 1024 up to 2x slower than inline). The
    // next Runs go inline (the workers sleep): 16 after the first bad one, doubling up to 4096
    // while they stay bad. A worker that merely woke late is not a cost (it took fewer tasks).
    const bool bad = std::chrono::steady_clock::now() - waited_from >
                     std::chrono::nanoseconds(kMaxWaitNs);
    if (bad) {
      bo->length = bo->length == 0 ? 16 : std::min<int64_t>(2 * bo->length, 4096);
      bo->skip = bo->length;
    } else {
      bo->length = 0;
    }
  }

 private:
  // Spin time of an idle worker before it sleeps. Short on purpose: spinning through the
  // GEMMs between two layers' attention (200 µs, and a wake-up on step entry) made the step
  // slower on this 2-vCPU VM whenever another process used the second core (step 1024,
  // float16 cache: tiny 0.54 / 1.07 ms vs 0.41 / 0.37 ms sleeping at once; default 4.0 / 4.8
  // vs 3.4 / 3.7 ms), while the caller never waits for a worker to wake: it claims tasks
  // itself from the start, and a late worker just takes fewer.
  static constexpr int64_t kSpinNs = 10000;
  // Longest wait for the workers' last tasks before a split counts as not paying (one task is
  // one (env, head) of a layer: ~4-10 µs at context 1024 for the tiny / default models).
  static constexpr int64_t kMaxWaitNs = 50000;

  static void Pause() {
#if (defined(__x86_64__) || defined(__i386__)) && !defined(AMAGO_FAST_GENERIC)
    __builtin_ia32_pause();
#else
    std::this_thread::yield();
#endif
  }

  void WakeSleepers() {
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
      std::lock_guard<std::mutex> lock(mu_);
      wake_.notify_all();
    }
  }

  // The next task of generation `gen`, or -1 when it has none left (or a newer job started).
  int64_t Claim(uint64_t gen) {
    uint64_t t = ticket_.load(std::memory_order_acquire);
    for (;;) {
      if ((t >> 32) != gen) return -1;
      const int64_t i = static_cast<int64_t>(t & 0xffffffffu);
      if (i >= n_.load(std::memory_order_relaxed)) return -1;
      if (ticket_.compare_exchange_weak(t, t + 1, std::memory_order_acq_rel)) return i;
    }
  }

  void WorkerLoop(int slot) {
    uint64_t seen = 0;
    for (;;) {
      uint64_t gen = ticket_.load(std::memory_order_acquire) >> 32;
      if (gen == seen) {
        auto start = std::chrono::steady_clock::now();
        int spins = 0;
        while ((gen = ticket_.load(std::memory_order_acquire) >> 32) == seen) {
          Pause();
          if (stop_.load(std::memory_order_relaxed)) return;
          if (++spins % 64 != 0 ||
              std::chrono::steady_clock::now() - start <= std::chrono::nanoseconds(kSpinNs)) {
            continue;
          }
          {
            std::unique_lock<std::mutex> lock(mu_);
            sleepers_.fetch_add(1, std::memory_order_seq_cst);
            wake_.wait(lock, [&] {
              return stop_.load() || (ticket_.load(std::memory_order_seq_cst) >> 32) != seen;
            });
            sleepers_.fetch_sub(1, std::memory_order_seq_cst);
          }
          if (stop_.load()) return;
          start = std::chrono::steady_clock::now();
        }
      }
      if (stop_.load(std::memory_order_relaxed)) return;
      seen = gen;
      int64_t mine = 0;
      Fn fn = nullptr;
      void* ctx = nullptr;
      for (int64_t i; (i = Claim(gen)) >= 0; ++mine) {
        if (fn == nullptr) {  // read after a successful claim: the job is current
          fn = fn_;
          ctx = ctx_;
        }
        fn(ctx, i, slot);
      }
      if (mine > 0) done_.fetch_add(mine, std::memory_order_acq_rel);
    }
  }

  std::vector<std::thread> workers_;
  std::mutex run_mu_;  // one Run at a time
  std::mutex mu_;      // sleeping workers
  std::condition_variable wake_;
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> ticket_{0};  // generation << 32 | next task
  std::atomic<int64_t> done_{0};
  Fn fn_ = nullptr;
  void* ctx_ = nullptr;
  std::atomic<int64_t> n_{0};  // read by late workers of an older job (then discarded)
};

}  // namespace policy
}  // namespace amago

#endif  // AMAGO_FAST_POLICY_TEAM_H_
