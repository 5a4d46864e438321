// Checkpoint readers against files written by the real torch.save and safetensors
// (tests/fixtures/checkpoints/make_checkpoints.py), plus hostile variants: forbidden
// globals, bad opcodes, bad headers, truncations and random byte flips.
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <simdjson.h>
#include <stdlib.h>
#include <zip.h>

#include "m3/core/error.h"
#include "m3/checkpoint/checkpoint.h"
#include "m3/checkpoint/restricted_unpickler.h"

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;

namespace m3 {
namespace {

const fs::path kDir = fs::path(M3_FIXTURES_DIR) / "checkpoints";

struct Expected {
  std::string dtype;
  std::vector<int64_t> shape;
  std::vector<uint32_t> bits;
};

std::map<std::string, Expected> load_expected(const std::string& group) {
  simdjson::dom::parser parser;
  simdjson::dom::element root = parser.load((kDir / "expected.json").string());
  std::map<std::string, Expected> out;
  for (auto field : root[group].get_object()) {
    Expected e;
    e.dtype = std::string(std::string_view(field.value["dtype"]));
    for (auto d : field.value["shape"].get_array()) e.shape.push_back(int64_t(d));
    for (auto b : field.value["bits"].get_array()) e.bits.push_back(uint32_t(uint64_t(b)));
    out.emplace(std::string(field.key), std::move(e));
  }
  return out;
}

std::vector<uint32_t> to_bits(const std::vector<float>& v) {
  std::vector<uint32_t> out(v.size());
  if (!v.empty()) std::memcpy(out.data(), v.data(), v.size() * 4);
  return out;
}

std::vector<char> read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_file(const fs::path& p, const void* data, size_t n) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(n));
}

// The message of the m3::Error that `f` throws ("" when it does not throw).
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "m3ckpt-XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    tmp_ = tmpl;
  }
  void TearDown() override { fs::remove_all(tmp_); }

  // A safetensors file from a header text and a data area, with an optional
  // header-length field that lies.
  fs::path safetensors(const std::string& header, size_t data_bytes, uint64_t length_field = ~0ull) {
    const uint64_t len = length_field == ~0ull ? header.size() : length_field;
    std::vector<char> bytes(8);
    for (int k = 0; k < 8; ++k) bytes[k] = char((len >> (8 * k)) & 0xff);
    bytes.insert(bytes.end(), header.begin(), header.end());
    bytes.resize(bytes.size() + data_bytes, 0);
    const fs::path p = tmp_ / "crafted.safetensors";
    write_file(p, bytes.data(), bytes.size());
    return p;
  }

  fs::path tmp_;
};

// Opens `file` and reads every tensor; returns false on m3::Error. Any other exception
// or a crash fails the test.
bool open_and_read_all(const fs::path& file) {
  try {
    auto ckpt = open_checkpoint(file);
    for (const auto& name : ckpt->names()) {
      const TensorInfo info = ckpt->info(name);
      int64_t numel = 1;
      for (int64_t d : info.shape) numel *= d;
      const auto values = ckpt->read_f32(name, info.shape);
      EXPECT_EQ(int64_t(values.size()), numel) << name;
    }
    return true;
  } catch (const Error&) {
    return false;
  }
}

void expect_matches(const Checkpoint& ckpt, const std::map<std::string, Expected>& expected) {
  std::vector<std::string> names;
  for (const auto& [name, e] : expected) names.push_back(name);
  EXPECT_EQ(ckpt.names(), names) << ckpt.path();
  for (const auto& [name, e] : expected) {
    SCOPED_TRACE(ckpt.path().string() + " " + name);
    ASSERT_TRUE(ckpt.has(name));
    const TensorInfo info = ckpt.info(name);
    EXPECT_EQ(dtype_name(info.dtype), e.dtype);
    EXPECT_EQ(info.shape, e.shape);
    EXPECT_EQ(to_bits(ckpt.read_f32(name, e.shape)), e.bits);
  }
}

TEST_F(CheckpointTest, TorchZipValuesAreExactIncludingStridedViews) {
  const auto expected = load_expected("state");
  for (const char* file : {"state.pt", "state_p4.pt", "deflated.pt"}) {
    auto ckpt = open_torch_zip(kDir / file);
    expect_matches(*ckpt, expected);
  }
}

TEST_F(CheckpointTest, SafetensorsValuesAreExact) {
  auto ckpt = open_safetensors(kDir / "state.safetensors");
  expect_matches(*ckpt, load_expected("state"));
}

TEST_F(CheckpointTest, SparseLinearLikeTheOfficialHead) {
  auto ckpt = open_checkpoint(kDir / "sparse_linear.pt");
  expect_matches(*ckpt, load_expected("sparse_linear"));
  EXPECT_EQ(ckpt->info("weight").dtype, DType::F16);
  EXPECT_FALSE(ckpt->has("_metadata"));
}

TEST_F(CheckpointTest, OpenCheckpointPicksTheReaderFromTheMagic) {
  const auto expected = load_expected("state");
  expect_matches(*open_checkpoint(kDir / "state.pt"), expected);
  expect_matches(*open_checkpoint(kDir / "state.safetensors"), expected);
  // Extensions do not matter.
  fs::copy_file(kDir / "state.pt", tmp_ / "weights.safetensors");
  expect_matches(*open_checkpoint(tmp_ / "weights.safetensors"), expected);
}

TEST_F(CheckpointTest, MissingFileIsNamed) {
  const fs::path missing = tmp_ / "nope.bin";
  EXPECT_THAT(error_of([&] { open_checkpoint(missing); }), AllOf(HasSubstr("nope.bin"), HasSubstr("not found")));
  EXPECT_THAT(error_of([&] { open_torch_zip(missing); }), HasSubstr("nope.bin"));
  EXPECT_THAT(error_of([&] { open_safetensors(missing); }), HasSubstr("nope.bin"));
}

TEST_F(CheckpointTest, MissingTensorNamesFileAndTensor) {
  for (const char* file : {"state.pt", "state.safetensors"}) {
    auto ckpt = open_checkpoint(kDir / file);
    EXPECT_FALSE(ckpt->has("encoder.layer.0.weight"));
    EXPECT_THAT(error_of([&] { ckpt->read_f32("encoder.layer.0.weight", {1}); }),
                AllOf(HasSubstr(file), HasSubstr("encoder.layer.0.weight")));
    EXPECT_THAT(error_of([&] { ckpt->info("encoder.layer.0.weight"); }),
                AllOf(HasSubstr(file), HasSubstr("encoder.layer.0.weight")));
  }
}

TEST_F(CheckpointTest, ShapeMismatchNamesBothShapes) {
  for (const char* file : {"state.pt", "state.safetensors"}) {
    auto ckpt = open_checkpoint(kDir / file);
    EXPECT_THAT(error_of([&] { ckpt->read_f32("f32", {4, 3}); }),
                AllOf(HasSubstr(file), HasSubstr("'f32'"), HasSubstr("[3, 4]"), HasSubstr("[4, 3]")));
  }
}

TEST_F(CheckpointTest, ForbiddenGlobalIsRejectedAndNamed) {
  const auto cwd = fs::current_path();
  fs::current_path(tmp_);
  const std::string message = error_of([&] { open_checkpoint(kDir / "evil.pt"); });
  fs::current_path(cwd);
  EXPECT_THAT(message, AllOf(HasSubstr("evil.pt"), HasSubstr("forbidden global 'posix.system'")));
  EXPECT_FALSE(fs::exists(tmp_ / "m3embed_pwned"));
}

// Such tensors are listed (transformers checkpoints carry an int64 `position_ids`
// buffer that the encoder ignores); reading one is the error.
TEST_F(CheckpointTest, UnsupportedStorageDtypeNamesTensorAndType) {
  const auto checkpoint = open_checkpoint(kDir / "double.pt");
  EXPECT_TRUE(checkpoint->has("d"));
  EXPECT_THAT(error_of([&] { checkpoint->read_f32("d", {2}); }),
              AllOf(HasSubstr("double.pt"), HasSubstr("'d'"), HasSubstr("torch.DoubleStorage"),
                    HasSubstr("unsupported dtype")));
  EXPECT_THAT(error_of([&] { checkpoint->info("d"); }), HasSubstr("unsupported dtype"));
}

TEST_F(CheckpointTest, UnknownOpcodeIsNamed) {
  EXPECT_THAT(error_of([&] { open_checkpoint(kDir / "bad_opcode.pt"); }),
              AllOf(HasSubstr("bad_opcode.pt"), HasSubstr("INST"), HasSubstr("byte 2")));
}

TEST_F(CheckpointTest, BigEndianIsRejected) {
  EXPECT_THAT(error_of([&] { open_checkpoint(kDir / "bigendian.pt"); }),
              AllOf(HasSubstr("bigendian.pt"), HasSubstr("byteorder is 'big'")));
}

TEST_F(CheckpointTest, MissingStorageRecordNamesTensor) {
  EXPECT_THAT(error_of([&] { open_checkpoint(kDir / "missing_storage.pt"); }),
              AllOf(HasSubstr("missing_storage.pt"), HasSubstr("'bias'"), HasSubstr("data/1 is missing")));
}

TEST_F(CheckpointTest, StorageSizeAndViewBoundsAreChecked) {
  EXPECT_THAT(error_of([&] { open_checkpoint(kDir / "short_storage.pt"); }),
              AllOf(HasSubstr("'weight'"), HasSubstr("holds 8 bytes"), HasSubstr("need 16")));
  EXPECT_THAT(error_of([&] { open_checkpoint(kDir / "oob_view.pt"); }),
              AllOf(HasSubstr("'weight'"), HasSubstr("addresses element 7"), HasSubstr("holds 4")));
}

TEST_F(CheckpointTest, SingleTensorIsNotAStateDict) {
  EXPECT_THAT(error_of([&] { open_checkpoint(kDir / "single_tensor.pt"); }),
              AllOf(HasSubstr("single_tensor.pt"), HasSubstr("single tensor")));
}

TEST_F(CheckpointTest, NotAZipOrSafetensors) {
  write_file(tmp_ / "junk.bin", "hello", 5);
  EXPECT_THAT(error_of([&] { open_checkpoint(tmp_ / "junk.bin"); }), HasSubstr("junk.bin"));
  write_file(tmp_ / "empty.bin", "", 0);
  EXPECT_THAT(error_of([&] { open_checkpoint(tmp_ / "empty.bin"); }), HasSubstr("empty.bin"));
  const unsigned char legacy[] = {0x80, 0x02, 0x8a, 0x0a};
  write_file(tmp_ / "legacy.bin", legacy, sizeof legacy);
  EXPECT_THAT(error_of([&] { open_checkpoint(tmp_ / "legacy.bin"); }), HasSubstr("legacy"));
  EXPECT_THAT(error_of([&] { open_checkpoint(tmp_); }), HasSubstr("directory"));
}

TEST_F(CheckpointTest, TruncatedZipAtEveryOffsetFailsCleanly) {
  for (const char* file : {"sparse_linear.pt", "state.pt"}) {
    const auto bytes = read_file(kDir / file);
    const fs::path cut = tmp_ / "cut.pt";
    for (size_t n = 0; n < bytes.size(); ++n) {
      write_file(cut, bytes.data(), n);
      EXPECT_FALSE(open_and_read_all(cut)) << file << " cut at " << n << " was accepted";
      auto direct = error_of([&] { open_torch_zip(cut); });
      EXPECT_THAT(direct, HasSubstr("cut.pt")) << n;
    }
  }
}

TEST_F(CheckpointTest, TruncatedSafetensorsAtEveryOffsetFailsCleanly) {
  const auto bytes = read_file(kDir / "state.safetensors");
  const fs::path cut = tmp_ / "cut.safetensors";
  for (size_t n = 0; n < bytes.size(); ++n) {
    write_file(cut, bytes.data(), n);
    EXPECT_THAT(error_of([&] { open_safetensors(cut); }), HasSubstr("cut.safetensors")) << n;
  }
}

TEST_F(CheckpointTest, RandomByteFlipsNeverCrash) {
  std::mt19937_64 rng(20240611);
  for (const char* file : {"state.pt", "state_p4.pt", "deflated.pt", "sparse_linear.pt", "state.safetensors"}) {
    const auto original = read_file(kDir / file);
    const fs::path flipped = tmp_ / (std::string("flipped-") + file);
    int ok = 0, rejected = 0;
    for (int round = 0; round < 400; ++round) {
      auto bytes = original;
      const int flips = 1 + int(rng() % 4);
      for (int k = 0; k < flips; ++k) bytes[rng() % bytes.size()] ^= char(1 + rng() % 255);
      write_file(flipped, bytes.data(), bytes.size());
      (open_and_read_all(flipped) ? ok : rejected)++;
    }
    EXPECT_GT(rejected, 0) << file;
    RecordProperty(std::string(file) + "_accepted", ok);
  }
}

TEST_F(CheckpointTest, SafetensorsHeaderIsValidated) {
  const std::string good = R"({"__metadata__":{"a":"b"},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  EXPECT_EQ(open_safetensors(safetensors(good, 8))->read_f32("w", {2}), (std::vector<float>{0, 0}));

  auto error = [&](const std::string& header, size_t data, uint64_t len = ~0ull) {
    return error_of([&] { open_safetensors(safetensors(header, data, len)); });
  };
  EXPECT_THAT(error(good, 8, 1ull << 40), AllOf(HasSubstr("crafted.safetensors"), HasSubstr("past the end")));
  EXPECT_THAT(error(good, 8, ~0ull - 1), HasSubstr("past the end"));
  EXPECT_THAT(error(good, 4), AllOf(HasSubstr("'w'"), HasSubstr("past the end of the data area")));
  EXPECT_THAT(error(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8), HasSubstr("begin after end"));
  EXPECT_THAT(error(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
              AllOf(HasSubstr("'w'"), HasSubstr("spans 8 bytes"), HasSubstr("needs 12")));
  EXPECT_THAT(error(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})", 8), HasSubstr("invalid JSON"));
  EXPECT_THAT(error(R"([1,2])", 0), HasSubstr("not a JSON object"));
  EXPECT_THAT(error(R"({"w":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}})", 8),
              AllOf(HasSubstr("'w'"), HasSubstr("I64"), HasSubstr("not supported")));
  EXPECT_THAT(error(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,8]}})", 8), HasSubstr("shape entry"));
  EXPECT_THAT(error(R"({"w":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}})", 8),
              HasSubstr("overflows"));
  EXPECT_THAT(error(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", 8), HasSubstr("data_offsets"));
  EXPECT_THAT(error(R"({"w":{"shape":[2],"data_offsets":[0,8]}})", 8), HasSubstr("dtype"));
  EXPECT_THAT(error(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8),
              HasSubstr("twice"));
  // A header of 0x480 bytes starts with 0x80 0x04, like a pickle PROTO: still safetensors.
  std::string padded = good;
  padded.resize(0x480, ' ');
  EXPECT_TRUE(open_checkpoint(safetensors(padded, 8))->has("w"));
  write_file(tmp_ / "short.safetensors", "\x01\x00", 2);
  EXPECT_THAT(error_of([&] { open_safetensors(tmp_ / "short.safetensors"); }), HasSubstr("short.safetensors"));
}

// ---- the unpickler on hand-written pickles ----

std::string unpickle_error(const std::string& pickle) {
  return error_of([&] {
    unpickle_state_dict({reinterpret_cast<const unsigned char*>(pickle.data()), pickle.size()}, "t.pkl");
  });
}

TEST(RestrictedUnpickler, RejectsMalformedPickles) {
  using namespace std::string_literals;
  EXPECT_THAT(unpickle_error("\x80\x02}"s), HasSubstr("truncated"));                 // no STOP
  EXPECT_THAT(unpickle_error("\x80\x01}."s), HasSubstr("protocol 1"));
  EXPECT_THAT(unpickle_error("\x80\x02h\x05."s), HasSubstr("memo key 5"));
  EXPECT_THAT(unpickle_error("\x80\x02s."s), HasSubstr("underflow"));
  EXPECT_THAT(unpickle_error("\x80\x02(}."s), HasSubstr("STOP with"));
  EXPECT_THAT(unpickle_error("\x80\x02]."s), HasSubstr("list, not a dict"));
  EXPECT_THAT(unpickle_error("\x80\x02X\xff\xff\xff\x7f"s), HasSubstr("truncated"));
  EXPECT_THAT(unpickle_error("\x80\x02\x8d\xff\xff\xff\xff\xff\xff\xff\xff."s), HasSubstr("truncated"));
  EXPECT_THAT(unpickle_error("\x80\x02\x8a\x09"s + std::string(9, '\0') + "."), HasSubstr("too large"));
  EXPECT_THAT(unpickle_error("\x80\x02\x63" "builtins\neval\n."s), HasSubstr("forbidden global 'builtins.eval'"));
  EXPECT_THAT(unpickle_error("\x80\x02\x63" "builtins\neval"s), HasSubstr("unterminated"));
  EXPECT_THAT(unpickle_error("\x80\x02\x8c\x02os\x8c\x06system\x93."s), HasSubstr("forbidden global 'os.system'"));
  EXPECT_THAT(unpickle_error("\x80\x02\xff."s), HasSubstr("0xff"));
  // BUILD on anything but a dict, REDUCE on a non-callable.
  EXPECT_THAT(unpickle_error("\x80\x02]Nb."s), HasSubstr("BUILD on a list"));
  EXPECT_THAT(unpickle_error("\x80\x02N)R."s), HasSubstr("REDUCE on a None"));
  // A dict that contains itself: the nesting cap stops the walk.
  EXPECT_THAT(unpickle_error("\x80\x02}q\x00X\x01\x00\x00\x00" "ah\x00s."s), HasSubstr("nested deeper"));
}

TEST(RestrictedUnpickler, SharedSubdictsCannotExplode) {
  // root = {"k": d0, "k": d1, ...} with d0 = {} and d(k+1) = {"a": dk, "b": dk}: 2^40 paths
  // through 41 shared dicts.
  const std::string key = std::string("X\x01\x00\x00\x00", 5);
  std::string p = "\x80\x02}" + key + "k}q" + std::string(1, '\0') + "s";
  for (int k = 0; k < 40; ++k) {
    p += key + "k}(" + key + "ah" + char(k) + key + "bh" + char(k) + "uq" + char(k + 1) + "s";
  }
  p += ".";
  RestrictedUnpicklerLimits limits;
  limits.max_depth = 64;
  limits.max_objects = 10000;
  const std::string message = error_of([&] {
    unpickle_state_dict({reinterpret_cast<const unsigned char*>(p.data()), p.size()}, "t.pkl", limits);
  });
  EXPECT_THAT(message, HasSubstr("more than 10000"));
}

TEST(RestrictedUnpickler, SkipsNonTensorValues) {
  // {"epoch": 3, "name": "x", "list": [None, 1.5]} holds no tensors: an empty state dict.
  using namespace std::string_literals;
  const std::string p =
      "\x80\x02}(X\x05\x00\x00\x00" "epochK\x03X\x04\x00\x00\x00nameX\x01\x00\x00\x00x"
      "X\x04\x00\x00\x00list](NG\x3f\xf8\x00\x00\x00\x00\x00\x00" "eu."s;
  const auto out = unpickle_state_dict({reinterpret_cast<const unsigned char*>(p.data()), p.size()}, "t.pkl");
  EXPECT_TRUE(out.empty());
}

// The zip CRC rejects flipped bytes in data.pkl, so the unpickler is fuzzed directly.
std::string data_pkl(const fs::path& archive) {
  int code = 0;
  zip_t* z = zip_open(archive.c_str(), ZIP_RDONLY, &code);
  EXPECT_NE(z, nullptr);
  if (!z) return {};
  std::string out;
  for (zip_int64_t i = 0; i < zip_get_num_entries(z, 0); ++i) {
    const std::string name = zip_get_name(z, zip_uint64_t(i), 0);
    if (!name.ends_with("/data.pkl")) continue;
    zip_stat_t st;
    zip_stat_index(z, zip_uint64_t(i), 0, &st);
    out.resize(st.size);
    zip_file_t* f = zip_fopen_index(z, zip_uint64_t(i), 0);
    EXPECT_EQ(zip_fread(f, out.data(), out.size()), zip_int64_t(out.size()));
    zip_fclose(f);
  }
  zip_discard(z);
  return out;
}

TEST(RestrictedUnpickler, TruncationsAndByteFlipsNeverCrash) {
  std::mt19937_64 rng(7);
  for (const char* file : {"state.pt", "state_p4.pt", "sparse_linear.pt"}) {
    const std::string original = data_pkl(kDir / file);
    ASSERT_FALSE(original.empty()) << file;
    auto attempt = [](const std::string& p) {
      try {
        unpickle_state_dict({reinterpret_cast<const unsigned char*>(p.data()), p.size()}, "t.pkl");
        return true;
      } catch (const Error&) {
        return false;
      }
    };
    EXPECT_TRUE(attempt(original)) << file;
    for (size_t n = 0; n < original.size(); ++n) EXPECT_FALSE(attempt(original.substr(0, n))) << file << " " << n;
    for (int round = 0; round < 3000; ++round) {
      std::string p = original;
      const int flips = 1 + int(rng() % 3);
      for (int k = 0; k < flips; ++k) p[rng() % p.size()] ^= char(1 + rng() % 255);
      attempt(p);
    }
  }
}

// Every record of a zip archive, in order.
std::vector<std::pair<std::string, std::string>> zip_records(const fs::path& archive) {
  int code = 0;
  zip_t* z = zip_open(archive.c_str(), ZIP_RDONLY, &code);
  EXPECT_NE(z, nullptr);
  std::vector<std::pair<std::string, std::string>> out;
  if (!z) return out;
  for (zip_int64_t i = 0; i < zip_get_num_entries(z, 0); ++i) {
    zip_stat_t st;
    zip_stat_index(z, zip_uint64_t(i), 0, &st);
    std::string data(st.size, '\0');
    zip_file_t* f = zip_fopen_index(z, zip_uint64_t(i), 0);
    EXPECT_EQ(zip_fread(f, data.data(), data.size()), zip_int64_t(data.size()));
    zip_fclose(f);
    out.emplace_back(zip_get_name(z, zip_uint64_t(i), 0), std::move(data));
  }
  zip_discard(z);
  return out;
}

void write_zip(const fs::path& archive, const std::vector<std::pair<std::string, std::string>>& records) {
  int code = 0;
  zip_t* z = zip_open(archive.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &code);
  ASSERT_NE(z, nullptr);
  for (const auto& [name, data] : records) {
    zip_source_t* src = zip_source_buffer(z, data.data(), data.size(), 0);
    const zip_int64_t index = zip_file_add(z, name.c_str(), src, ZIP_FL_OVERWRITE);
    ASSERT_GE(index, 0);
    zip_set_file_compression(z, zip_uint64_t(index), ZIP_CM_STORE, 0);
  }
  ASSERT_EQ(zip_close(z), 0);
}

// Flipped pickles inside a valid zip: views with hostile offsets, sizes and strides must
// be caught by the bounds checks, never read out of range.
TEST_F(CheckpointTest, HostilePicklesInValidZipsNeverReadOutOfRange) {
  std::mt19937_64 rng(99);
  const auto original = zip_records(kDir / "state.pt");
  write_zip(tmp_ / "rebuilt.pt", original);
  expect_matches(*open_torch_zip(tmp_ / "rebuilt.pt"), load_expected("state"));
  int ok = 0;
  for (int round = 0; round < 1500; ++round) {
    auto records = original;
    for (auto& [name, data] : records) {
      if (!name.ends_with("/data.pkl")) continue;
      const int flips = 1 + int(rng() % 2);
      for (int k = 0; k < flips; ++k) {
        // Mostly small integer arguments (sizes, strides, offsets, numels), sometimes any byte.
        data[rng() % data.size()] = rng() % 4 == 0 ? char(rng()) : char(rng() % 16);
      }
    }
    write_zip(tmp_ / "mutant.pt", records);
    ok += open_and_read_all(tmp_ / "mutant.pt");
  }
  RecordProperty("accepted", ok);
}

}  // namespace
}  // namespace m3
