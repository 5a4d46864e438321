// safetensors: 8-byte little-endian header length, a JSON header mapping tensor names to
// {dtype, shape, data_offsets}, then the data area. The file is memory-mapped read-only
// and every offset in the header is checked against it before anything is read.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <limits>
#include <map>

#include <simdjson.h>

#include "m3/core/error.h"
#include "m3/checkpoint/checkpoint.h"

namespace m3 {
namespace {

constexpr uint64_t kMaxHeaderBytes = 100ull << 20;  // the limit the safetensors library uses
constexpr size_t kMaxDims = 64;

struct Entry {
  TensorInfo info;
  uint64_t begin = 0;  // in the data area
  uint64_t end = 0;
};

class SafetensorsCheckpoint final : public Checkpoint {
 public:
  explicit SafetensorsCheckpoint(std::filesystem::path file) : path_(std::move(file)) {
    const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail("cannot open checkpoint {}: {}", path_.string(), std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      fail("{}: not a regular file", path_.string());
    }
    size_ = static_cast<uint64_t>(st.st_size);
    if (size_ < 8) {
      ::close(fd);
      fail("{}: not a safetensors file ({} bytes, shorter than the 8-byte header length)", path_.string(), size_);
    }
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    const int mmap_errno = errno;
    ::close(fd);
    if (p == MAP_FAILED) fail("{}: mmap failed: {}", path_.string(), std::strerror(mmap_errno));
    base_ = static_cast<const unsigned char*>(p);
    try {
      parse_header();
    } catch (...) {
      ::munmap(const_cast<unsigned char*>(base_), size_);
      throw;
    }
  }

  ~SafetensorsCheckpoint() override { ::munmap(const_cast<unsigned char*>(base_), size_); }
  SafetensorsCheckpoint(const SafetensorsCheckpoint&) = delete;
  SafetensorsCheckpoint& operator=(const SafetensorsCheckpoint&) = delete;

  const std::filesystem::path& path() const override { return path_; }
  bool has(const std::string& name) const override { return entries_.contains(name); }

  std::vector<std::string> names() const override {
    std::vector<std::string> out;
    out.reserve(entries_.size());
    for (const auto& [name, entry] : entries_) out.push_back(name);
    return out;
  }

  TensorInfo info(const std::string& name) const override { return entry(name).info; }

  std::vector<float> read_f32(const std::string& name,
                              const std::vector<int64_t>& expected_shape) const override {
    const Entry& e = entry(name);
    check_shape(*this, name, e.info.shape, expected_shape);
    const uint64_t n = (e.end - e.begin) / dtype_size(e.info.dtype);
    std::vector<float> out(n);
    if (n > 0) convert_to_f32(e.info.dtype, base_ + data_start_ + e.begin, out.data(), n);
    release_pages(data_start_ + e.begin, data_start_ + e.end);
    return out;
  }

 private:
  // The copy is what is used from now on: drop the file's pages from this mapping so
  // they do not count as resident twice while the model loads (they are read again
  // from the file if touched; the mapping is private and read-only).
  void release_pages(uint64_t begin, uint64_t end) const {
    const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    const uint64_t first = (begin + page - 1) / page * page, last = end / page * page;
    if (last > first) ::madvise(const_cast<uint8_t*>(base_) + first, last - first, MADV_DONTNEED);
  }

  const Entry& entry(const std::string& name) const {
    auto it = entries_.find(name);
    if (it == entries_.end()) fail("{}: no tensor named '{}'", path_.string(), name);
    return it->second;
  }

  template <typename... Args>
  [[noreturn]] void bad(fmt::format_string<Args...> format, Args&&... args) const {
    fail("{}: bad safetensors header: {}", path_.string(), fmt::format(format, std::forward<Args>(args)...));
  }

  void parse_header() {
    uint64_t header_len = 0;
    for (int k = 0; k < 8; ++k) header_len |= uint64_t(base_[k]) << (8 * k);
    if (header_len > size_ - 8)
      bad("header length {} runs past the end of the file ({} bytes)", header_len, size_);
    if (header_len > kMaxHeaderBytes) bad("header length {} exceeds {} bytes", header_len, kMaxHeaderBytes);
    data_start_ = 8 + header_len;
    const uint64_t data_size = size_ - data_start_;

    simdjson::dom::parser parser;
    const simdjson::padded_string json(reinterpret_cast<const char*>(base_ + 8), header_len);
    simdjson::dom::element root;
    if (auto err = parser.parse(json).get(root)) bad("invalid JSON: {}", simdjson::error_message(err));
    simdjson::dom::object top;
    if (root.get(top)) bad("the header is not a JSON object");

    for (auto field : top) {
      const std::string name(field.key);
      if (name == "__metadata__") continue;
      simdjson::dom::object obj;
      if (field.value.get(obj)) bad("tensor '{}' is not a JSON object", name);

      Entry e;
      std::string_view dtype;
      if (obj["dtype"].get(dtype)) bad("tensor '{}' has no string \"dtype\"", name);
      if (dtype == "F32") {
        e.info.dtype = DType::F32;
      } else if (dtype == "F16") {
        e.info.dtype = DType::F16;
      } else if (dtype == "BF16") {
        e.info.dtype = DType::BF16;
      } else {
        fail("{}: tensor '{}' has dtype {}, which is not supported (F32, F16 and BF16 are read)",
             path_.string(), name, dtype);
      }

      simdjson::dom::array shape;
      if (obj["shape"].get(shape)) bad("tensor '{}' has no \"shape\" array", name);
      uint64_t numel = 1;
      for (auto dim : shape) {
        uint64_t d = 0;
        if (dim.get(d) || d > uint64_t(std::numeric_limits<int64_t>::max()))
          bad("tensor '{}' has a shape entry that is not a non-negative integer", name);
        if (e.info.shape.size() >= kMaxDims) bad("tensor '{}' has more than {} dimensions", name, kMaxDims);
        if (__builtin_mul_overflow(numel, d, &numel)) bad("tensor '{}': element count overflows", name);
        e.info.shape.push_back(static_cast<int64_t>(d));
      }
      uint64_t nbytes = 0;
      if (__builtin_mul_overflow(numel, uint64_t(dtype_size(e.info.dtype)), &nbytes))
        bad("tensor '{}': byte size overflows", name);

      simdjson::dom::array offsets;
      if (obj["data_offsets"].get(offsets) || offsets.size() != 2)
        bad("tensor '{}' has no \"data_offsets\" pair", name);
      if (offsets.at(0).get(e.begin) || offsets.at(1).get(e.end))
        bad("tensor '{}' has data_offsets that are not non-negative integers", name);
      if (e.begin > e.end) bad("tensor '{}' has data_offsets [{}, {}] with begin after end", name, e.begin, e.end);
      if (e.end > data_size)
        bad("tensor '{}' has data_offsets [{}, {}] past the end of the data area ({} bytes)", name, e.begin,
            e.end, data_size);
      if (e.end - e.begin != nbytes)
        bad("tensor '{}' spans {} bytes but shape {} of {} needs {}", name, e.end - e.begin,
            format_shape(e.info.shape), dtype_name(e.info.dtype), nbytes);
      if (!entries_.emplace(name, std::move(e)).second) bad("tensor '{}' appears twice", name);
    }
  }

  std::filesystem::path path_;
  const unsigned char* base_ = nullptr;
  uint64_t size_ = 0;
  uint64_t data_start_ = 0;
  std::map<std::string, Entry> entries_;
};

}  // namespace

std::unique_ptr<Checkpoint> open_safetensors(const std::filesystem::path& file) {
  return std::make_unique<SafetensorsCheckpoint>(file);
}

}  // namespace m3
