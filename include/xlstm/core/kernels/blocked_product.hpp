// out (+)= a * b^T for the layers' large products: every sequence forward
// (kernels/dense.hpp, Workload::sequence) and the backward passes' dL/dW =
// grad_y^T x and dL/dx = grad_y W (design §7.6), with Eigen's own GEMM
// kernels (its packing and micro-kernel) driven here:
//
//  - Cache blocking and tasks (bands of rows or of columns of `out`) fixed
//    by the product's sizes alone (Eigen's heuristic as for one thread); the
//    threads share out the same calls. Every element is then computed by the
//    same operations whatever the thread count: the bits do not depend on it.
//  - The packing buffers are kept by the calling thread (one pair per library
//    thread, grown on first use), so nothing is allocated once a product of
//    a size has run. Eigen's own product takes them from the heap on every
//    call beyond 128 KiB; freshly mapped pages then fault in again each call,
//    which is slow (and on a VM very slow).
//  - Each operand is packed once per cache block. (panelled_product, which
//    keeps Eigen's buffers on the stack with panels of at most 32 x 64,
//    re-packs one operand for every panel: in a backward pass at T = 512 that
//    costs about as much as the multiply-adds.)
//
// It uses Eigen 3.4's internal general_matrix_matrix_product and
// level3_blocking (the API Eigen's own products call), so it is tied to
// Eigen 3.4 as the rest of the library is.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <vector>

#include "xlstm/core/parallel.hpp"
#include "xlstm/core/tensor.hpp"
#include "xlstm/core/thread_buffers.hpp"

namespace xlstm {
namespace kernels {
namespace detail {

/// Eigen's blocking description with buffers and block sizes given, so that
/// its product neither allocates nor chooses them.
template <typename Scalar>
class FixedBlocking : public Eigen::internal::level3_blocking<Scalar, Scalar> {
 public:
  FixedBlocking(Scalar* block_a, Scalar* block_b, Index mc, Index nc, Index kc) {
    this->m_blockA = block_a;
    this->m_blockB = block_b;
    this->m_mc = mc;
    this->m_nc = nc;
    this->m_kc = kc;
  }
};

/// The packed operands of one thread's part of a product (Eigen's aligned
/// storage): Eigen's blockA (kc x mc: b packed) and blockB (kc x nc: a packed).
template <typename Scalar>
struct PackingBuffers {
  Vector<Scalar> block_a, block_b;
};

/// The calling thread's packing buffers: one pair per library thread of its
/// parallel regions (each application thread has its own; design §7.7).
template <typename Scalar>
using PackingBufferSet = std::vector<PackingBuffers<Scalar>>;

template <typename X>
constexpr int storage_order() {
  return (int(X::Flags) & Eigen::RowMajorBit) ? Eigen::RowMajor : Eigen::ColMajor;
}

}  // namespace detail

/// out = a * b^T, or out += a * b^T with `accumulate` (a: N x K, b: M x K,
/// out: N x M, all with unit inner stride, out row-major and not aliasing a
/// or b), bands of out split over the threads. Same bits at every
/// thread count; allocates only when a thread's buffers must grow.
template <typename A, typename B, typename Out>
void parallel_product(const A& a, const B& b, Out& out, bool accumulate) {
  using Scalar = typename Out::Scalar;
  static_assert(int(Out::Flags) & Eigen::RowMajorBit, "parallel_product: out must be row-major");
  const Index rows = out.rows(), cols = out.cols(), depth = a.cols();
  if (rows == 0 || cols == 0) return;
  if (depth == 0) {
    if (!accumulate) out.setZero();
    return;
  }
  eigen_assert(a.innerStride() == 1 && b.innerStride() == 1 && out.innerStride() == 1);
  // Eigen solves the column-major out^T = b a^T: its rows are out's columns
  // (blocked by mc), its columns out's rows (blocked by nc). The blocks and
  // the tasks below depend on the sizes only, never on the thread count: the
  // threads only share out the same calls.
  Index kc = depth, mc = cols, nc = rows;
  Eigen::internal::computeProductBlockingSizes<Scalar, Scalar, 1, Index>(kc, mc, nc, Index(1));
  // Tasks: up to four bands of rows (each packs b once more, a small cost
  // next to its multiply-adds when it has 64 rows or more), or, for fewer
  // rows, up to four bands of columns at multiples of mc (a is packed once
  // per column block anyway).
  const Index mr = Eigen::internal::gebp_traits<Scalar, Scalar>::mr;
  constexpr Index kMinTaskRows = 64, kMaxTasks = 4;
  Index task_rows = rows, task_cols = cols;
  if (rows >= 2 * kMinTaskRows) {
    const Index count = std::min(kMaxTasks, rows / kMinTaskRows);
    task_rows = ((rows + count - 1) / count + 7) / 8 * 8;
    nc = std::min(nc, task_rows);
  } else {
    const Index quarter = ((cols + kMaxTasks - 1) / kMaxTasks + mr - 1) / mr * mr;
    mc = std::min(mc, std::max(mr, quarter));
    task_cols = mc;
  }
  const Index row_tasks = (rows + task_rows - 1) / task_rows;
  const Index tasks = row_tasks * ((cols + task_cols - 1) / task_cols);
  const int threads = num_threads();
  xlstm::detail::ThreadBuffers<detail::PackingBufferSet<Scalar>> lease;
  auto& buffers = lease.get();
  if (buffers.size() < std::size_t(threads)) buffers.resize(std::size_t(threads));
  for (auto& buffer : buffers) {
    if (buffer.block_a.size() < kc * mc) buffer.block_a.resize(kc * mc);
    if (buffer.block_b.size() < kc * nc) buffer.block_b.resize(kc * nc);
  }
  const auto bt = b.transpose();  // K x M
  using Product = Eigen::internal::general_matrix_matrix_product<
      Index, Scalar, detail::storage_order<A>(), false, Scalar,
      detail::storage_order<std::decay_t<decltype(bt)>>(), false, Eigen::RowMajor, 1>;
  const bool parallel = double(rows) * double(cols) * double(depth) >= double(1 << 20);
  parallel_for_indexed(tasks, parallel, [&](Index task, int thread) {
    const Index r0 = (task % row_tasks) * task_rows, height = std::min(task_rows, rows - r0);
    const Index c0 = (task / row_tasks) * task_cols, width = std::min(task_cols, cols - c0);
    auto part = out.block(r0, c0, height, width);
    if (!accumulate) part.setZero();
    const auto a_part = a.middleRows(r0, height);
    const auto bt_part = bt.middleCols(c0, width);
    auto& buffer = buffers[std::size_t(thread)];
    detail::FixedBlocking<Scalar> blocking(buffer.block_a.data(), buffer.block_b.data(), mc, nc,
                                           kc);
    Product::run(height, width, depth, a_part.data(), a_part.outerStride(), bt_part.data(),
                 bt_part.outerStride(), part.data(), 1, part.outerStride(), Scalar(1), blocking,
                 nullptr);
  });
}

}  // namespace kernels
}  // namespace xlstm
