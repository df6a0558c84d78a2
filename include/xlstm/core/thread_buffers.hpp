// Thread buffers: working memory that const library calls keep between calls,
// one set per calling thread (design §7.7).
//
// A sequence forward needs intermediates as large as its input: every
// projection's output for all B x T rows. Allocated per call, blocks of that
// size come fresh from the operating system each time (glibc maps blocks over
// 128 KiB and unmaps them when freed), and touching their pages costs more
// than the products themselves on some machines. A module is const and may
// run on many threads at once, so it cannot keep such buffers itself; the
// calling thread can. The first call of a size allocates, later calls of that
// size or smaller reuse the memory.
//
// The memory stays with the thread until it ends or calls
// release_thread_buffers().
#pragma once

#include <memory>
#include <vector>

namespace xlstm {
namespace detail {

template <typename Buffers>
struct ThreadSlot {
  Buffers buffers;
  bool registered = false;  ///< its release function is in thread_releasers()
  bool in_use = false;      ///< a ThreadBuffers lease holds it
};

template <typename Buffers>
ThreadSlot<Buffers>& thread_slot() {
  static thread_local ThreadSlot<Buffers> slot;
  return slot;
}

/// The release functions of the slots this thread has used.
inline std::vector<void (*)()>& thread_releasers() {
  static thread_local std::vector<void (*)()> releasers;
  return releasers;
}

template <typename Buffers>
void release_slot() {
  ThreadSlot<Buffers>& slot = thread_slot<Buffers>();
  if (!slot.in_use) slot.buffers = Buffers{};
}

/// The calling thread's `Buffers` for the duration of one call. Should a call
/// need the same kind of buffers while an outer call holds them (a module
/// nested in one of its own type), the inner call gets fresh buffers of its
/// own instead: correct, only not free of allocation.
template <typename Buffers>
class ThreadBuffers {
 public:
  ThreadBuffers() : slot_(thread_slot<Buffers>()) {
    if (!slot_.registered) {
      thread_releasers().push_back(&release_slot<Buffers>);
      slot_.registered = true;
    }
    if (slot_.in_use) {
      nested_ = std::make_unique<Buffers>();
    } else {
      slot_.in_use = true;
    }
  }
  ThreadBuffers(const ThreadBuffers&) = delete;
  ThreadBuffers& operator=(const ThreadBuffers&) = delete;
  ~ThreadBuffers() {
    if (!nested_) slot_.in_use = false;
  }

  Buffers& get() { return nested_ ? *nested_ : slot_.buffers; }

 private:
  ThreadSlot<Buffers>& slot_;
  std::unique_ptr<Buffers> nested_;
};

}  // namespace detail

/// Frees the working memory that the library's calls on this thread keep for
/// their next call (sequence forwards' intermediates, products' packing
/// buffers). The next call allocates it again. Buffers in use by a call on
/// this thread (none, unless called from within a library call) are kept.
inline void release_thread_buffers() {
  for (void (*release)() : detail::thread_releasers()) release();
}

}  // namespace xlstm
