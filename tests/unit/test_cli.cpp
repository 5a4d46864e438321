// The m3embed binary end to end: outputs in input order, and a clear error with a
// non-zero exit status for every kind of bad input or broken model file.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <regex>

#include "test_support.h"

namespace m3 {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// Two JSON lines with the same keys and shape whose numbers agree within `tolerance`.
// Batches are formed from what is queued when a replica asks, so the same text may share a
// GEMM with different neighbours from run to run, which moves the last bits of a float.
void expect_same_numbers(const std::string& a, const std::string& b, double tolerance = 1e-5) {
  static const std::regex number(R"(-?[0-9][0-9.eE+-]*)");
  EXPECT_EQ(std::regex_replace(a, number, "#"), std::regex_replace(b, number, "#"));
  std::sregex_iterator ia(a.begin(), a.end(), number), ib(b.begin(), b.end(), number), end;
  for (; ia != end && ib != end; ++ia, ++ib) {
    ASSERT_NEAR(std::stod(ia->str()), std::stod(ib->str()), tolerance) << ia->str() << " vs " << ib->str();
  }
}

std::string quoted(const std::filesystem::path& p) { return "'" + p.string() + "'"; }

std::vector<std::string> lines_of(const std::filesystem::path& file) {
  std::vector<std::string> lines;
  std::istringstream in(test::read_file(file));
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

class CliTest : public ::testing::Test {
 protected:
  std::filesystem::path model_ = test::fixtures() / "tiny-st";
  test::TempDir tmp_;

  test::CliResult encode(const std::filesystem::path& model, const std::string& input_text,
                         const std::string& extra = "--dense --sparse --colbert", const std::string& name = "in.txt") {
    test::write_file(tmp_ / name, input_text);
    return test::run_cli("encode -q --model " + quoted(model) + " --input " + quoted(tmp_ / name) + " --output " +
                         quoted(tmp_ / "out.jsonl") + " " + extra);
  }
  std::filesystem::path broken_copy() {
    const auto dir = tmp_ / "model";
    test::copy_model(model_, dir);
    return dir;
  }
};

TEST_F(CliTest, EncodesTextLinesInInputOrder) {
  const auto r = encode(model_, "first text\n\nthird, after an empty line\n一段中文\n");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto lines = lines_of(tmp_ / "out.jsonl");
  ASSERT_EQ(lines.size(), 4u);
  simdjson::dom::parser parser;
  for (const auto& line : lines) {
    const auto doc = parser.parse(line).value();
    EXPECT_EQ(doc["dense_vecs"].get_array().size(), 64u);
    EXPECT_TRUE(doc["lexical_weights"].is_object());
    EXPECT_TRUE(doc["colbert_vecs"].is_array());
  }
  // The empty line is the empty text: <s></s>, so one ColBERT vector.
  EXPECT_EQ(parser.parse(lines[1]).value()["colbert_vecs"].get_array().size(), 1u);

  // The same texts reversed give the same lines reversed.
  const auto again = encode(model_, "一段中文\nthird, after an empty line\n\nfirst text\n");
  ASSERT_EQ(again.exit_code, 0) << again.output;
  const auto reversed = lines_of(tmp_ / "out.jsonl");
  ASSERT_EQ(reversed.size(), 4u);
  for (size_t i = 0; i < 4; ++i) expect_same_numbers(reversed[i], lines[3 - i]);
}

TEST_F(CliTest, JsonlInputAndDenseOnlyByDefault) {
  const auto r = encode(model_, "{\"text\": \"hello\"}\n{\"text\": \"\\u4e16\\u754c\", \"id\": 7}\n", "", "in.jsonl");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto lines = lines_of(tmp_ / "out.jsonl");
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_THAT(lines[0], HasSubstr("\"dense_vecs\""));
  EXPECT_THAT(lines[0], Not(HasSubstr("lexical_weights")));
}

TEST_F(CliTest, NonUtf8LineIsRejectedWithItsLineNumber) {
  const auto r = encode(model_, "fine\nbroken \xff\xfe here\n");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr(":2: line is not valid UTF-8"));
}

TEST_F(CliTest, MalformedJsonlIsRejectedWithItsLineNumber) {
  for (const std::string& bad : {"{\"text\": \"ok\"}\n{\"text\": \n", "{\"text\": 5}\n", "{\"body\": \"x\"}\n", "[1]\n"}) {
    const auto r = encode(model_, bad, "", "in.jsonl");
    EXPECT_EQ(r.exit_code, 1) << bad;
    EXPECT_THAT(r.output, HasSubstr("in.jsonl:")) << bad;
  }
}

TEST_F(CliTest, MissingConfigJson) {
  const auto dir = broken_copy();
  std::filesystem::remove(dir / "config.json");
  const auto r = encode(dir, "hello\n");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("config.json"));
}

TEST_F(CliTest, TruncatedSafetensors) {
  const auto dir = broken_copy();
  const auto data = test::read_file(dir / "model.safetensors");
  for (size_t keep : {size_t{4}, size_t{100}, data.size() / 2, data.size() - 1}) {
    test::write_file(dir / "model.safetensors", data.substr(0, keep));
    const auto r = encode(dir, "hello\n");
    EXPECT_EQ(r.exit_code, 1) << keep;
    EXPECT_THAT(r.output, HasSubstr("model.safetensors")) << keep;
  }
}

TEST_F(CliTest, CorruptPytorchBin) {
  const auto dir = tmp_ / "bin";
  test::copy_model(test::fixtures() / "tiny-bin", dir);
  auto data = test::read_file(dir / "pytorch_model.bin");
  test::write_file(dir / "pytorch_model.bin", data.substr(0, data.size() / 3));
  auto r = encode(dir, "hello\n");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("pytorch_model.bin"));
  test::write_file(dir / "pytorch_model.bin", std::string(1000, 'x'));
  r = encode(dir, "hello\n");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("pytorch_model.bin"));
}

TEST_F(CliTest, PickleWithForbiddenGlobalIsRefusedAndNotRun) {
  const auto dir = broken_copy();
  std::filesystem::copy_file(test::fixtures() / "checkpoints" / "evil.pt", dir / "sparse_linear.pt",
                             std::filesystem::copy_options::overwrite_existing);
  const auto r = encode(dir, "hello\n");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("sparse_linear.pt"));
  EXPECT_THAT(r.output, HasSubstr("system"));  // the global it names
  EXPECT_FALSE(std::filesystem::exists("m3embed_pwned"));  // what the payload would have created
}

TEST_F(CliTest, MissingHeadFilesOnlyBlockTheirOutputs) {
  const auto dir = broken_copy();
  std::filesystem::remove(dir / "sparse_linear.pt");
  std::filesystem::remove(dir / "colbert_linear.pt");
  auto r = encode(dir, "hello\n", "--dense");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  r = encode(dir, "hello\n", "--sparse");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("sparse_linear.pt"));
  r = encode(dir, "hello\n", "--colbert");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("colbert_linear.pt"));
}

TEST_F(CliTest, TruncationIsReportedOrRefused) {
  const std::string long_text(600, 'a');
  std::string words;
  for (int i = 0; i < 300; ++i) words += "word ";
  auto r = encode(model_, words + "\n", "--max-length 32");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("1 of 1 texts were longer than 32 tokens"));
  r = encode(model_, words + "\n", "--max-length 32 --no-truncate");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("--no-truncate"));
  r = encode(model_, "short\n", "--max-length 100000");  // more than the model's 128 positions
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("using 128"));
}

TEST_F(CliTest, MemoryLimitIsPlannedOrRefused) {
  auto r = encode(model_, "hello\n", "--memory-limit 100KiB");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("memory limit 100.00 KiB is too small: one 128-token sequence needs"));
  r = encode(model_, "hello\n", "--memory-limit 12XB");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("unknown unit"));
  r = encode(model_, "hello\nworld\n", "--memory-limit 8MiB --replicas 2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("2 x"));
  const auto limited = lines_of(tmp_ / "out.jsonl");
  r = encode(model_, "hello\nworld\n", "");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto unlimited = lines_of(tmp_ / "out.jsonl");
  ASSERT_EQ(unlimited.size(), limited.size());
  for (size_t i = 0; i < limited.size(); ++i) expect_same_numbers(unlimited[i], limited[i]);
}

TEST_F(CliTest, BadModelArgument) {
  auto r = encode(tmp_ / "no-such-dir", "hello\n");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("no such directory"));
  r = test::run_cli("encode --input x --bogus-flag");
  EXPECT_NE(r.exit_code, 0);
}

// OpenMP told to spin without end while it waits makes idle teams hold the cores: m3embed
// says so, and still computes.
TEST_F(CliTest, WarnsWhenOpenMpIsToldToSpin) {
  const auto quiet = encode(model_, "hello\n", "--dense");
  ASSERT_EQ(quiet.exit_code, 0) << quiet.output;
  EXPECT_EQ(quiet.output.find("OMP_WAIT_POLICY"), std::string::npos) << quiet.output;
  ::setenv("OMP_WAIT_POLICY", "active", 1);
  const auto spinning = encode(model_, "hello\n", "--dense");
  ::unsetenv("OMP_WAIT_POLICY");
  ASSERT_EQ(spinning.exit_code, 0) << spinning.output;
  EXPECT_NE(spinning.output.find("OMP_WAIT_POLICY=ACTIVE: idle OpenMP threads will spin"), std::string::npos)
      << spinning.output;
}

TEST_F(CliTest, ScoreAndTokenize) {
  test::write_file(tmp_ / "pairs.jsonl",
                   "{\"query\": \"what is a cat\", \"passage\": \"a cat is an animal\"}\n[\"q\", \"p\"]\n");
  auto r = test::run_cli("score -q --model " + quoted(model_) + " --input " + quoted(tmp_ / "pairs.jsonl") +
                         " --output " + quoted(tmp_ / "scores.jsonl") + " --weights 0.4,0.2,0.4");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto lines = lines_of(tmp_ / "scores.jsonl");
  ASSERT_EQ(lines.size(), 2u);
  for (const char* key : {"\"dense\"", "\"sparse\"", "\"colbert\"", "\"sparse+dense\"", "\"colbert+sparse+dense\""}) {
    EXPECT_THAT(lines[0], HasSubstr(key));
  }
  r = test::run_cli("score --model " + quoted(model_) + " --input " + quoted(tmp_ / "pairs.jsonl") +
                    " --weights 1,x,1");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("--weights"));

  test::write_file(tmp_ / "t.txt", "\n");
  r = test::run_cli("tokenize --pieces --model " + quoted(model_) + " --input " + quoted(tmp_ / "t.txt"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("{\"input_ids\":[0,2],\"tokens\":[\"<s>\",\"</s>\"]}"));
}

TEST_F(CliTest, UnreachableHubFallsBackOnlyWhenAsked) {
  const std::string env = "HF_ENDPOINT=http://127.0.0.1:9 HF_HUB_CACHE=" + quoted(tmp_ / "cache") + " ";
  test::write_file(tmp_ / "in.txt", "hello\n");
  const std::string args = "encode -q --model acme/not-cached --input " + quoted(tmp_ / "in.txt") + " --output " +
                           quoted(tmp_ / "out.jsonl");
  const std::string binary = std::string("'") + M3_BINARY + "' ";
  auto run = [&](const std::string& extra) {
    test::CliResult result;
    FILE* pipe = popen((env + binary + args + extra + " 2>&1").c_str(), "r");
    char buffer[4096];
    size_t n;
    while ((n = fread(buffer, 1, sizeof buffer, pipe)) > 0) result.output.append(buffer, n);
    const int status = pclose(pipe);
    result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return result;
  };
  auto r = run("");
  EXPECT_EQ(r.exit_code, 3) << r.output;
  r = run(" --fallback-model " + quoted(model_));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("RANDOM weights"));
  EXPECT_EQ(lines_of(tmp_ / "out.jsonl").size(), 1u);
}

}  // namespace
}  // namespace m3
