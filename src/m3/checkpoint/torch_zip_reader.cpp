// torch.save zip archives: `<folder>/data.pkl` (read by the restricted unpickler) names
// each tensor as a strided view of a storage record `<folder>/data/<key>`. Views are
// bounds-checked against the records at open; storages are read lazily, one at a time.
#include <zip.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <utility>

#include "m3/core/error.h"
#include "m3/checkpoint/checkpoint.h"
#include "m3/checkpoint/restricted_unpickler.h"

namespace m3 {
namespace {

constexpr uint64_t kMaxPickleBytes = 64ull << 20;
constexpr uint64_t kReadChunk = 16ull << 20;

struct Tensor {
  PickledTensor view;
  zip_uint64_t record = 0;  // index of data/<key> in the archive
  std::string record_name;
  int64_t numel = 0;
  int64_t last = 0;  // storage index of the last element addressed (when numel > 0)
  bool contiguous = true;
};

class TorchZipCheckpoint final : public Checkpoint {
 public:
  explicit TorchZipCheckpoint(std::filesystem::path file) : path_(std::move(file)) {
    int code = 0;
    zip_ = zip_open(path_.c_str(), ZIP_RDONLY | ZIP_CHECKCONS, &code);
    if (zip_ == nullptr) {
      zip_error_t err;
      zip_error_init_with_code(&err, code);
      const std::string message = zip_error_strerror(&err);
      zip_error_fini(&err);
      fail("{}: not a readable zip archive: {}", path_.string(), message);
    }
    try {
      load();
    } catch (...) {
      zip_discard(zip_);
      throw;
    }
  }

  ~TorchZipCheckpoint() override { zip_discard(zip_); }
  TorchZipCheckpoint(const TorchZipCheckpoint&) = delete;
  TorchZipCheckpoint& operator=(const TorchZipCheckpoint&) = delete;

  const std::filesystem::path& path() const override { return path_; }
  bool has(const std::string& name) const override { return tensors_.contains(name); }

  std::vector<std::string> names() const override {
    std::vector<std::string> out;
    out.reserve(tensors_.size());
    for (const auto& [name, t] : tensors_) out.push_back(name);
    return out;
  }

  TensorInfo info(const std::string& name) const override {
    const Tensor& t = readable_tensor(name);
    return TensorInfo{t.view.dtype, t.view.size};
  }

  std::vector<float> read_f32(const std::string& name,
                              const std::vector<int64_t>& expected_shape) const override {
    const Tensor& t = readable_tensor(name);
    check_shape(*this, name, t.view.size, expected_shape);
    std::vector<float> out(static_cast<size_t>(t.numel));
    if (t.numel == 0) return out;
    const DType dtype = t.view.dtype;
    const uint64_t es = dtype_size(dtype);
    const uint64_t first = static_cast<uint64_t>(t.view.storage_offset);

    std::lock_guard lock(mu_);
    ZipFile f = open_record(t, name);
    seek(f, first * es, t, name);
    if (t.contiguous) {
      if (dtype == DType::F32) {
        read_exact(f, out.data(), uint64_t(t.numel) * 4, t, name);
      } else {
        std::vector<unsigned char> chunk;
        for (uint64_t done = 0; done < uint64_t(t.numel);) {
          const uint64_t n = std::min<uint64_t>(uint64_t(t.numel) - done, kReadChunk / es);
          chunk.resize(n * es);
          read_exact(f, chunk.data(), n * es, t, name);
          convert_to_f32(dtype, chunk.data(), out.data() + done, n);
          done += n;
        }
      }
      return out;
    }
    // A strided view: read the span it addresses, then gather row-major.
    const uint64_t span = uint64_t(t.last) - first + 1;
    std::vector<unsigned char> buf(span * es);
    read_exact(f, buf.data(), buf.size(), t, name);
    gather(t.view, t.numel, buf.data(), es, out.data());
    return out;
  }

 private:
  struct ZipFile {
    zip_file_t* f = nullptr;
    ZipFile() = default;
    ZipFile(ZipFile&& o) noexcept : f(std::exchange(o.f, nullptr)) {}
    ZipFile& operator=(ZipFile&& o) noexcept {
      if (this != &o) {
        if (f) zip_fclose(f);
        f = std::exchange(o.f, nullptr);
      }
      return *this;
    }
    ~ZipFile() {
      if (f) zip_fclose(f);
    }
  };

  const Tensor& tensor(const std::string& name) const {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) fail("{}: no tensor named '{}'", path_.string(), name);
    return it->second;
  }
  const Tensor& readable_tensor(const std::string& name) const {
    const Tensor& t = tensor(name);
    if (!t.view.unsupported_dtype.empty())
      fail("{}: tensor '{}' is stored as {}, an unsupported dtype (float32, float16 and bfloat16 are read)",
           path_.string(), name, t.view.unsupported_dtype);
    return t;
  }

  [[noreturn]] void zip_failure(const std::string& what, const std::string& name, zip_file_t* f) const {
    const char* why = f ? zip_file_strerror(f) : zip_strerror(zip_);
    if (name.empty()) fail("{}: {}: {}", path_.string(), what, why);
    fail("{}: tensor '{}': {}: {}", path_.string(), name, what, why);
  }

  ZipFile open_record(const Tensor& t, const std::string& name) const {
    ZipFile f;
    f.f = zip_fopen_index(zip_, t.record, 0);
    if (!f.f) zip_failure("cannot open storage record " + t.record_name, name, nullptr);
    return f;
  }

  void seek(ZipFile& f, uint64_t offset, const Tensor& t, const std::string& name) const {
    if (offset == 0) return;
    if (offset <= uint64_t(std::numeric_limits<zip_int64_t>::max()) &&
        zip_fseek(f.f, static_cast<zip_int64_t>(offset), SEEK_SET) == 0)
      return;
    // Compressed records cannot seek (and a failed seek leaves the handle in error):
    // reopen, then read and drop.
    f = open_record(t, name);
    std::vector<unsigned char> sink(std::min<uint64_t>(offset, kReadChunk));
    for (uint64_t done = 0; done < offset;) {
      const uint64_t n = std::min<uint64_t>(offset - done, sink.size());
      read_exact(f, sink.data(), n, t, name);
      done += n;
    }
  }

  void read_exact(ZipFile& f, void* dst, uint64_t n, const Tensor& t, const std::string& name) const {
    auto* p = static_cast<unsigned char*>(dst);
    for (uint64_t done = 0; done < n;) {
      const uint64_t want = std::min<uint64_t>(n - done, kReadChunk);
      const zip_int64_t got = zip_fread(f.f, p + done, want);
      if (got < 0) zip_failure("cannot read storage record " + t.record_name, name, f.f);
      if (got == 0)
        fail("{}: tensor '{}': storage record {} ends early", path_.string(), name, t.record_name);
      done += static_cast<uint64_t>(got);
    }
  }

  static void gather(const PickledTensor& v, int64_t total, const unsigned char* src, uint64_t es, float* dst) {
    const size_t rank = v.size.size();
    std::vector<int64_t> idx(rank, 0);
    int64_t at = 0;  // element offset from storage_offset
    for (int64_t k = 0; k < total; ++k) {
      convert_to_f32(v.dtype, src + uint64_t(at) * es, dst + k, 1);
      for (size_t d = rank; d-- > 0;) {
        if (++idx[d] < v.size[d]) {
          at += v.stride[d];
          break;
        }
        at -= v.stride[d] * (v.size[d] - 1);
        idx[d] = 0;
      }
    }
  }

  std::vector<unsigned char> read_small(zip_uint64_t index, const std::string& entry, uint64_t cap) {
    zip_stat_t st;
    zip_stat_init(&st);
    if (zip_stat_index(zip_, index, 0, &st) != 0 || !(st.valid & ZIP_STAT_SIZE))
      zip_failure("cannot stat " + entry, "", nullptr);
    if (st.size > cap) fail("{}: {} is {} bytes, more than the {} accepted", path_.string(), entry, st.size, cap);
    std::vector<unsigned char> bytes(st.size);
    zip_file_t* f = zip_fopen_index(zip_, index, 0);
    if (!f) zip_failure("cannot open " + entry, "", nullptr);
    uint64_t done = 0;
    while (done < bytes.size()) {
      const zip_int64_t got = zip_fread(f, bytes.data() + done, bytes.size() - done);
      if (got <= 0) {
        const std::string why = got < 0 ? zip_file_strerror(f) : "ends early";
        zip_fclose(f);
        fail("{}: cannot read {}: {}", path_.string(), entry, why);
      }
      done += static_cast<uint64_t>(got);
    }
    // Reading to the end lets libzip verify the CRC.
    unsigned char extra;
    const zip_int64_t tail = zip_fread(f, &extra, 1);
    if (tail != 0) {
      const std::string why = tail < 0 ? zip_file_strerror(f) : "longer than its stated size";
      zip_fclose(f);
      fail("{}: cannot read {}: {}", path_.string(), entry, why);
    }
    zip_fclose(f);
    return bytes;
  }

  void load() {
    // The one `<folder>/data.pkl` of the archive.
    const zip_int64_t count = zip_get_num_entries(zip_, 0);
    std::string pickle_name;
    zip_uint64_t pickle_index = 0;
    for (zip_int64_t i = 0; i < count; ++i) {
      const char* raw = zip_get_name(zip_, static_cast<zip_uint64_t>(i), 0);
      if (!raw) continue;
      const std::string_view entry(raw);
      constexpr std::string_view kSuffix = "/data.pkl";
      if (entry.size() <= kSuffix.size() || !entry.ends_with(kSuffix)) continue;
      if (entry.find('/') != entry.size() - kSuffix.size()) continue;  // top-level folder only
      if (!pickle_name.empty())
        fail("{}: two data.pkl records ({} and {}); not a torch.save archive", path_.string(), pickle_name, entry);
      pickle_name = entry;
      pickle_index = static_cast<zip_uint64_t>(i);
    }
    if (pickle_name.empty())
      fail("{}: no <folder>/data.pkl in the zip archive; not a torch.save checkpoint", path_.string());
    const std::string prefix = pickle_name.substr(0, pickle_name.size() - std::strlen("data.pkl"));

    const std::string byteorder_name = prefix + "byteorder";
    const zip_int64_t byteorder = zip_name_locate(zip_, byteorder_name.c_str(), 0);
    if (byteorder >= 0) {
      const auto bytes = read_small(static_cast<zip_uint64_t>(byteorder), byteorder_name, 16);
      const std::string order(bytes.begin(), bytes.end());
      if (order != "little")
        fail("{}: byteorder is '{}'; only little-endian checkpoints are supported", path_.string(), order);
    }

    std::vector<std::pair<std::string, PickledTensor>> records;
    {
      const auto pickle = read_small(pickle_index, pickle_name, kMaxPickleBytes);
      records = unpickle_state_dict(pickle, fmt::format("{} ({})", path_.string(), pickle_name));
    }

    std::map<std::string, std::pair<zip_uint64_t, uint64_t>> storages;  // key -> (index, bytes)
    for (auto& [name, view] : records) {
      Tensor t;
      if (!view.unsupported_dtype.empty()) {  // listed, never read: no storage checks
        t.view = std::move(view);
        tensors_.emplace(name, std::move(t));
        continue;
      }
      t.record_name = prefix + "data/" + view.storage_key;
      auto found = storages.find(view.storage_key);
      if (found == storages.end()) {
        const zip_int64_t index = zip_name_locate(zip_, t.record_name.c_str(), 0);
        if (index < 0)
          fail("{}: tensor '{}': storage record {} is missing", path_.string(), name, t.record_name);
        zip_stat_t st;
        zip_stat_init(&st);
        if (zip_stat_index(zip_, static_cast<zip_uint64_t>(index), 0, &st) != 0 || !(st.valid & ZIP_STAT_SIZE))
          zip_failure("cannot stat " + t.record_name, name, nullptr);
        found = storages.emplace(view.storage_key, std::make_pair(static_cast<zip_uint64_t>(index), st.size)).first;
      }
      t.record = found->second.first;
      const uint64_t es = dtype_size(view.dtype);
      uint64_t expected_bytes = 0;
      if (__builtin_mul_overflow(uint64_t(view.storage_numel), es, &expected_bytes) ||
          expected_bytes != found->second.second)
        fail("{}: tensor '{}': storage record {} holds {} bytes, but {} elements of {} need {}", path_.string(),
             name, t.record_name, found->second.second, view.storage_numel, dtype_name(view.dtype),
             uint64_t(view.storage_numel) * es);
      check_view(name, view, t);
      t.view = std::move(view);
      tensors_.emplace(name, std::move(t));
    }
  }

  // Element count, contiguity and the last storage element the view addresses, all
  // checked against the storage size without overflow.
  void check_view(const std::string& name, const PickledTensor& v, Tensor& t) const {
    int64_t numel = 1;
    for (int64_t d : v.size)
      if (__builtin_mul_overflow(numel, d, &numel) || numel > std::numeric_limits<int64_t>::max() / 4)
        fail("{}: tensor '{}': shape {} is too large", path_.string(), name, format_shape(v.size));
    t.numel = numel;
    if (numel == 0) return;
    int64_t last = v.storage_offset;
    int64_t expected_stride = 1;
    for (size_t d = v.size.size(); d-- > 0;) {
      int64_t reach = 0;
      if (__builtin_mul_overflow(v.size[d] - 1, v.stride[d], &reach) || __builtin_add_overflow(last, reach, &last))
        fail("{}: tensor '{}': strides {} overflow", path_.string(), name, format_shape(v.stride));
      if (v.size[d] != 1 && v.stride[d] != expected_stride) t.contiguous = false;
      expected_stride *= v.size[d];  // <= numel, no overflow
    }
    if (last >= v.storage_numel)
      fail("{}: tensor '{}' (shape {}, stride {}, offset {}) addresses element {} of storage {} which holds {}",
           path_.string(), name, format_shape(v.size), format_shape(v.stride), v.storage_offset, last,
           v.storage_key, v.storage_numel);
    t.last = last;
  }

  std::filesystem::path path_;
  zip_t* zip_ = nullptr;
  mutable std::mutex mu_;
  std::map<std::string, Tensor> tensors_;
};

}  // namespace

std::unique_ptr<Checkpoint> open_torch_zip(const std::filesystem::path& file) {
  std::error_code ec;
  if (!std::filesystem::exists(file, ec)) fail("checkpoint file not found: {}", file.string());
  return std::make_unique<TorchZipCheckpoint>(file);
}

}  // namespace m3
