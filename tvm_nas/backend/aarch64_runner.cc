// A Python-free runner for an exported Relax VM library: the aarch64 deliverable is run under qemu-aarch64
// with TVM's own aarch64 runtime (libtvm_runtime.so + libtvm_ffi.so from the aarch64 wheel of the same release).
//
// usage: aarch64_runner LIB.so INPUT.bin OUTPUT.bin D0 [D1 ...]
//   INPUT.bin  raw little-endian float32, shape D0 x D1 x ...
//   OUTPUT.bin written as: int64 ndim, int64 dims[ndim], then raw float32 data (the first output of main)
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

struct CPUAlloc {
  void AllocData(DLTensor* t) {
    size_t n = (t->dtype.bits * t->dtype.lanes + 7) / 8;
    for (int i = 0; i < t->ndim; ++i) n *= static_cast<size_t>(t->shape[i]);
    t->data = std::aligned_alloc(64, (n + 63) / 64 * 64);
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

size_t NumElements(const DLTensor* t) {
  size_t n = 1;
  for (int i = 0; i < t->ndim; ++i) n *= static_cast<size_t>(t->shape[i]);
  return n;
}

ffi::Tensor FirstTensor(const ffi::Any& out) {
  if (auto t = out.as<ffi::Tensor>()) return *t;
  auto arr = out.cast<ffi::Array<ffi::Any>>();
  if (arr.empty()) throw std::runtime_error("main returned an empty tuple");
  return FirstTensor(arr[0]);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) {
    std::cerr << "usage: " << argv[0] << " LIB.so INPUT.bin OUTPUT.bin D0 [D1 ...]\n";
    return 2;
  }
  try {
    std::vector<int64_t> shape;
    for (int i = 4; i < argc; ++i) shape.push_back(std::atoll(argv[i]));
    DLDevice cpu{kDLCPU, 0};
    ffi::Tensor x = ffi::Tensor::FromNDAlloc(CPUAlloc(), ffi::Shape(shape), DLDataType{kDLFloat, 32, 1}, cpu);
    const DLTensor* xd = x.GetDLTensorPtr();
    size_t nbytes = NumElements(xd) * sizeof(float);
    std::ifstream in(argv[2], std::ios::binary);
    if (!in.read(static_cast<char*>(xd->data), static_cast<std::streamsize>(nbytes))) {
      std::cerr << "cannot read " << nbytes << " bytes from " << argv[2] << "\n";
      return 2;
    }

    ffi::Module lib = ffi::Module::LoadFromFile(argv[1]);
    ffi::Module vm = (*lib->GetFunction("vm_load_executable"))().cast<ffi::Module>();
    constexpr int kPooledAllocator = 2;
    (*vm->GetFunction("vm_initialization"))(static_cast<int>(kDLCPU), 0, kPooledAllocator);
    ffi::Any out = (*vm->GetFunction("main"))(x);

    ffi::Tensor y = FirstTensor(out);
    const DLTensor* yd = y.GetDLTensorPtr();
    std::ofstream os(argv[3], std::ios::binary);
    int64_t ndim = yd->ndim;
    os.write(reinterpret_cast<const char*>(&ndim), sizeof(ndim));
    os.write(reinterpret_cast<const char*>(yd->shape), static_cast<std::streamsize>(ndim * sizeof(int64_t)));
    os.write(static_cast<const char*>(yd->data) + yd->byte_offset,
             static_cast<std::streamsize>(NumElements(yd) * sizeof(float)));
    if (!os) {
      std::cerr << "cannot write " << argv[3] << "\n";
      return 1;
    }
  } catch (const std::exception& e) {
    std::cerr << "aarch64_runner: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
