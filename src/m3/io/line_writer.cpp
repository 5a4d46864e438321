#include "m3/io/line_writer.h"

#include <iostream>

#include "m3/core/error.h"

namespace m3 {

LineWriter::LineWriter(const std::string& path) : path_(path), out_(&std::cout) {
  if (path != "-") {
    file_.open(path, std::ios::binary | std::ios::trunc);
    if (!file_) fail("{}: cannot open output file for writing", path);
    out_ = &file_;
  }
}

void LineWriter::write(const std::string& line) {
  out_->write(line.data(), static_cast<std::streamsize>(line.size()));
  out_->put('\n');
  if (!*out_) fail("{}: write failed", path_ == "-" ? "<stdout>" : path_);
}

void LineWriter::write_raw(std::string_view text) {
  out_->write(text.data(), static_cast<std::streamsize>(text.size()));
  if (!*out_) fail("{}: write failed", path_ == "-" ? "<stdout>" : path_);
}

void LineWriter::flush() {
  out_->flush();
  if (!*out_) fail("{}: write failed", path_ == "-" ? "<stdout>" : path_);
}

void LineWriter::close() {
  if (closed_) return;
  closed_ = true;
  out_->flush();
  if (file_.is_open()) file_.close();
  if (!*out_ || (path_ != "-" && file_.fail())) fail("{}: write failed", path_ == "-" ? "<stdout>" : path_);
}

LineWriter::~LineWriter() {
  try {
    close();
  } catch (const Error&) {
  }
}

}  // namespace m3
