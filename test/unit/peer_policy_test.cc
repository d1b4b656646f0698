// Default-deny peer policy in the manner of DragonFly's remote/ directory.
#include "daemon/link/peer_policy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <string>

using namespace xdisk;

namespace {
std::string MakeKeysDir() {
  char tmpl[] = "/tmp/xdisk-policy-XXXXXX";
  std::string dir = mkdtemp(tmpl);
  std::string cmd = "mkdir -p " + dir + "/remote";
  REQUIRE(system(cmd.c_str()) == 0);
  return dir;
}
void Touch(const std::string& p) { std::ofstream(p).put('\n'); }
}  // namespace

TEST_CASE("peer policy: .pub asks for encryption and wins over .none, nothing refuses",
          "[peer_policy]") {
  std::string dir = MakeKeysDir();
  PeerPolicy policy(dir);
  std::string why;
  CHECK(policy.Check("192.0.2.7", &why) == PeerPolicy::Decision::kRefused);
  CHECK_THAT(why, Catch::Contains("192.0.2.7.none"));
  Touch(dir + "/remote/192.0.2.7.none");
  CHECK(policy.Check("192.0.2.7", &why) == PeerPolicy::Decision::kPlaintext);
  Touch(dir + "/remote/192.0.2.7.pub");
  CHECK(policy.Check("192.0.2.7", &why) == PeerPolicy::Decision::kEncrypted);
  CHECK_THAT(why, Catch::Contains("encrypt"));
  CHECK(policy.Check("../etc", &why) == PeerPolicy::Decision::kRefused);
  CHECK(policy.Check("", &why) == PeerPolicy::Decision::kRefused);
  std::string cmd = "rm -rf " + dir;
  REQUIRE(system(cmd.c_str()) == 0);
}

TEST_CASE("IPv4-mapped IPv6 addresses are looked up in IPv4 form", "[peer_policy]") {
  sockaddr_in6 s6{};
  s6.sin6_family = AF_INET6;
  inet_pton(AF_INET6, "::ffff:10.1.2.3", &s6.sin6_addr);
  s6.sin6_port = htons(987);
  CHECK(NumericHost(reinterpret_cast<sockaddr*>(&s6)) == "10.1.2.3");
  CHECK(SockaddrToString(reinterpret_cast<sockaddr*>(&s6)) == "10.1.2.3:987");
  inet_pton(AF_INET6, "::1", &s6.sin6_addr);
  CHECK(SockaddrToString(reinterpret_cast<sockaddr*>(&s6)) == "[::1]:987");
}
