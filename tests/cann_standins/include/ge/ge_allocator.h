/* Stand-in for CANN's ge/ge_allocator.h (metadef inc/external/ge/ge_allocator.h; facts §4),
 * header-only as the real one. Allocator: pure virtual Malloc(size) / Free(block), virtual
 * MallocAdvise(size, addr) defaulting to Malloc, non-copyable. MemBlock(allocator, addr, size):
 * count starts at 1; Free() decrements and at zero calls allocator.Free(this). */
#ifndef AA_STANDIN_GE_ALLOCATOR_H
#define AA_STANDIN_GE_ALLOCATOR_H

#include <cstddef>
#include <memory>

namespace ge {
class MemBlock;

class Allocator {
 public:
  Allocator() = default;
  virtual ~Allocator() = default;
  Allocator(const Allocator &) = delete;
  Allocator &operator=(const Allocator &) = delete;
  virtual MemBlock *Malloc(size_t size) = 0;
  virtual void Free(MemBlock *block) = 0;
  virtual MemBlock *MallocAdvise(size_t size, void *addr) {
    (void)addr;
    return Malloc(size);
  }
};

class MemBlock {
 public:
  MemBlock(Allocator &allocator, void *addr, size_t block_size)
      : allocator_(allocator), addr_(addr), count_(1U), block_size_(block_size) {}
  virtual ~MemBlock() = default;
  const void *GetAddr() const { return addr_; }
  void *GetAddr() { return addr_; }
  size_t GetSize() const { return block_size_; }
  void SetSize(const size_t size) { block_size_ = size; }
  void Free() {
    if (count_ > 0U && --count_ == 0U) {
      allocator_.Free(this);
    }
  }
  size_t AddCount() { return ++count_; }
  size_t SubCount() { return --count_; }
  size_t GetCount() const { return count_; }

 private:
  Allocator &allocator_;
  void *addr_;
  size_t count_;
  size_t block_size_;
};

using AllocatorPtr = std::shared_ptr<Allocator>;
}  // namespace ge

#endif
