// Splitting text at a separator byte, for the kernel's tables and lists
// (/proc/self/cmdline, /proc/self/mountinfo). Pure.
#pragma once

#include <string_view>
#include <vector>

namespace xdisk {

// The pieces of `text` between occurrences of `sep`, in order. Two
// separators in a row give an empty piece; a separator at the very end
// gives none (a NUL-terminated list or a newline-terminated file has as many
// pieces as entries). The views point into `text`.
inline std::vector<std::string_view> SplitOn(std::string_view text, char sep) {
  std::vector<std::string_view> out;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find(sep, start);
    if (end == std::string_view::npos) end = text.size();
    out.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

}  // namespace xdisk
