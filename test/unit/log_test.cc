// Log line escaping: what a peer sends cannot forge or garble a log line.
#include "daemon/base/log.h"

#include <catch2/catch.hpp>
#include <string>

using xdisk::EscapeLogText;

TEST_CASE("plain ASCII and valid UTF-8 pass unchanged", "[log]") {
  CHECK(EscapeLogText("link 127.0.0.1:987: span 'S1' from 'host/dev'") ==
        "link 127.0.0.1:987: span 'S1' from 'host/dev'");
  CHECK(EscapeLogText("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x92\xbe") ==
        "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x92\xbe");
  CHECK(EscapeLogText("") == "");
}

TEST_CASE("a newline cannot start a forged line", "[log]") {
  CHECK(EscapeLogText("h/d\nxdisk-fuse: error: FAKE") == "h/d\\x0axdisk-fuse: error: FAKE");
  CHECK(EscapeLogText("a\rb\tc\x1b[2J\x7f") == "a\\x0db\\x09c\\x1b[2J\\x7f");
  CHECK(EscapeLogText(std::string("nul\0x", 5)) == "nul\\x00x");
}

TEST_CASE("bytes that are not UTF-8 and C1 controls are escaped byte by byte", "[log]") {
  CHECK(EscapeLogText("\xff\xfe") == "\\xff\\xfe");
  CHECK(EscapeLogText("caf\xe9") == "caf\\xe9");  // Latin-1
  CHECK(EscapeLogText("\xc2\x9b"
                      "2J") == "\\xc2\\x9b2J");               // U+009B, CSI
  CHECK(EscapeLogText("\xc0\xaf") == "\\xc0\\xaf");           // overlong '/'
  CHECK(EscapeLogText("\xed\xa0\x80") == "\\xed\\xa0\\x80");  // a surrogate
  CHECK(EscapeLogText("end\xe2\x82") == "end\\xe2\\x82");     // cut short
}

TEST_CASE("a backslash is doubled, so every escape stands for one byte", "[log]") {
  CHECK(EscapeLogText("a\\x0ab") == "a\\\\x0ab");
}
