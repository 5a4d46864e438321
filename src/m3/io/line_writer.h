// Writes result lines to a file or to standard output ("-"); a write failure (disk
// full, closed pipe) is an m3::Error naming the destination.
#pragma once

#include <fstream>
#include <string>
#include <string_view>

namespace m3 {

class LineWriter {
 public:
  explicit LineWriter(const std::string& path);
  void write(const std::string& line);
  void write_raw(std::string_view text);  // as is, no newline added
  void flush();
  void close();  // flushes and checks; also called by the destructor (errors then ignored)
  ~LineWriter();

 private:
  std::string path_;
  std::ofstream file_;
  std::ostream* out_;
  bool closed_ = false;
};

}  // namespace m3
