// Facts about this build that `python -m convops.info` reports, filled in by each backend's
// translation unit at load time (a backend that was not compiled leaves its entry empty).
#pragma once

#include <string>

namespace convops {

struct BuildInfo {
  std::string cpu_kernel_isas;  // ISA variants compiled into the CPU kernels
  std::string cpu_selected_isa; // the one CPUID picked on this machine
  std::string cuda_archs;       // SM architectures of the CUDA kernels, empty without CUDA
};

BuildInfo& build_info();

}  // namespace convops
