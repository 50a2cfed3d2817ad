// CPU plumbing shared by the kernel files: the per-ISA compilation of hot loops and the
// parallel loop for work items that call GEMMs.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

// Hot loops are compiled for AVX-512, AVX2 and baseline x86-64 and the variant is picked once
// at load time by CPUID (GCC target_clones / ifunc), so the same binary runs on every x86-64
// CPU and never needs -march=native. Templates marked CONVOPS_INLINE are instantiated inside
// one cloned non-template entry point per dtype, so each clone gets its own vector code.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CONVOPS_ISA_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#define CONVOPS_ISA_LIST "avx512f,avx2,default"
#else
#define CONVOPS_ISA_CLONES
#define CONVOPS_ISA_LIST "default"
#endif
#define CONVOPS_INLINE inline __attribute__((always_inline))
// Lambdas inside cloned code must be inlined too: a lambda left out of line is compiled once,
// for the baseline ISA, and passing it vectors from an AVX-512 clone breaks the calling
// convention (a crash, seen).
#define CONVOPS_LAMBDA_INLINE __attribute__((always_inline))

// MKL's per-thread thread count (the C entry point; the lower-case name is the Fortran one,
// taking int*); weak, so a torch built without MKL still loads us.
extern "C" int MKL_Set_Num_Threads_Local(int) __attribute__((weak));

namespace convops::cpu {

// BLAS called from inside our own parallel region must run on the calling thread alone:
// torch turns MKL's dynamic threading off and libgomp allows nested teams, so an MKL call
// there would start a second team per thread and oversubscribe the cores (no speed-up at all
// from the second thread, measured).
class SingleThreadedBlas {
 public:
  SingleThreadedBlas() {
    if (MKL_Set_Num_Threads_Local) previous_ = MKL_Set_Num_Threads_Local(1);
  }
  ~SingleThreadedBlas() {
    if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(previous_);
  }
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;

 private:
  int previous_ = 0;
};

// at::parallel_for for work items that call GEMMs: each worker runs in the caller's dispatch
// state (OpenMP workers do not inherit it, and the GEMMs go through the dispatcher) with
// single-threaded BLAS.
template <class Fn>
void parallel_gemm_for(int64_t items, const Fn& fn) {
  const at::ThreadLocalState caller_state;
  at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    const at::ThreadLocalStateGuard state_guard(caller_state);
    const SingleThreadedBlas single_threaded_blas;
    fn(begin, end);
  });
}

}  // namespace convops::cpu
