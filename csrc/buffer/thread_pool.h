// A small persistent thread pool for parallel-for over independent tasks (window gathers).
#ifndef AMAGO_FAST_BUFFER_THREAD_POOL_H_
#define AMAGO_FAST_BUFFER_THREAD_POOL_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace amago {

class ThreadPool {
 public:
  // `num_threads` counts the calling thread: a pool of 1 runs everything inline.
  explicit ThreadPool(int num_threads) {
    for (int i = 1; i < num_threads; ++i) workers_.emplace_back([this] { WorkerLoop(); });
  }
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;
  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
  }

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs fn(i) for i in [0, n). Concurrent callers are serialised: a caller that finds the pool
  // busy runs its tasks inline instead of waiting. The first exception thrown by a task is
  // rethrown here after every task has finished.
  void ParallelFor(int64_t n, const std::function<void(int64_t)>& fn) {
    if (n <= 0) return;
    std::unique_lock<std::mutex> busy(run_mu_, std::try_to_lock);
    if (workers_.empty() || n == 1 || !busy.owns_lock()) {
      for (int64_t i = 0; i < n; ++i) fn(i);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      job_ = &fn;
      num_tasks_ = n;
      next_.store(0);
      done_ = 0;
      error_ = nullptr;
      ++generation_;
    }
    wake_.notify_all();
    int64_t finished = RunTasks();
    std::unique_lock<std::mutex> lock(mu_);
    done_ += finished;
    finished_cv_.wait(lock, [this] { return done_ == num_tasks_ && active_ == 0; });
    job_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  int64_t RunTasks() {
    int64_t finished = 0;
    for (;;) {
      int64_t i = next_.fetch_add(1);
      if (i >= num_tasks_) break;
      try {
        (*job_)(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu_);
        if (!error_) error_ = std::current_exception();
      }
      ++finished;
    }
    return finished;
  }

  void WorkerLoop() {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      wake_.wait(lock, [&] { return stop_ || (generation_ != seen && job_ != nullptr); });
      if (stop_) return;
      seen = generation_;
      ++active_;
      lock.unlock();
      int64_t finished = RunTasks();
      lock.lock();
      done_ += finished;
      --active_;
      if (done_ == num_tasks_ && active_ == 0) finished_cv_.notify_all();
    }
  }

  std::vector<std::thread> workers_;
  std::mutex run_mu_;  // one ParallelFor at a time
  std::mutex mu_;
  std::condition_variable wake_, finished_cv_;
  const std::function<void(int64_t)>* job_ = nullptr;
  std::atomic<int64_t> next_{0};
  int64_t num_tasks_ = 0;
  int64_t done_ = 0;
  int active_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
};

}  // namespace amago

#endif  // AMAGO_FAST_BUFFER_THREAD_POOL_H_
