// hop_probe: the floor of one relay hop on this machine (issue 14).
//
// A standalone measurement, not part of the daemon: it uses nothing but libc.
// One run measures, side by side and interleaved, request/response traffic on
// loopback TCP between a client and a server process:
//
//   direct   client -> server
//   copy     client -> relay -> server; the relay is an epoll loop that
//            reads into a user buffer in 256 KiB reads and writes it out
//            (a byte pump: the least any copying relay does)
//   splice   client -> relay -> server; the relay recv()s each 64-byte
//            header, send()s it on, and moves the payload socket -> pipe ->
//            socket with splice(2), never through user space
//   spin     the copy relay, but polling epoll with a zero timeout instead of
//            sleeping in it (one core busy; shows what the relay's wake-ups
//            cost in latency)
//   poll     the copy relay polling epoll (zero timeout) for up to 50 us after
//            its last event, then sleeping in it: spin only while busy
//   threads  no event loop: one thread per direction, blocking read() of up
//            to 256 KiB and write() (shows what epoll adds)
//
// A message is a 64-byte header plus a payload: a write carries the payload
// in the request and gets a bare 64-byte reply; a read sends a bare request
// and gets the payload in the reply. The client keeps QD messages in flight;
// client and server use blocking sockets (TCP_NODELAY), no event loop.
// Client, relay and server are separate processes, so wait4() gives each one's
// CPU time (user + system) over its whole life, which is divided by the
// number of messages answered.
//
//   hop_probe [--rounds N] [--seconds S] [--variants LIST] [--jobs LIST]
//
// Prints one line per measurement, then one markdown table per job with the
// median (min - max) over the rounds. Exits 0 when it ran; there are no thresholds.
// Children die with the parent (PR_SET_PDEATHSIG), are killed on SIGINT,
// SIGTERM and on a per-measurement timeout, and are always reaped.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr uint32_t kMagic = 0x48505242;  // "BRPH"
constexpr size_t kHeaderBytes = 64;
constexpr size_t kRelayReadBytes = 256 * 1024;

enum class Op : uint32_t { kWrite = 1, kRead = 2 };

// The wire header, host byte order (both ends are on this host).
struct Header {
  uint32_t magic;
  uint32_t op;
  uint32_t payload_bytes;  // bytes that follow this header, same direction
  uint32_t length;         // the I/O size the request asks for
  uint32_t tag;            // the client's slot, 0..QD-1
  uint8_t pad[44];
};
static_assert(sizeof(Header) == kHeaderBytes);

enum class Variant { kDirect, kCopy, kSplice, kSpin, kPoll, kThreads };
constexpr Variant kAllVariants[] = {Variant::kDirect, Variant::kCopy, Variant::kSplice,
                                    Variant::kSpin,   Variant::kPoll, Variant::kThreads};
// How long the poll variant keeps polling after its last event.
constexpr double kPollSeconds = 50e-6;

const char* VariantName(Variant v) {
  switch (v) {
    case Variant::kDirect:
      return "direct";
    case Variant::kCopy:
      return "copy";
    case Variant::kSplice:
      return "splice";
    case Variant::kSpin:
      return "spin";
    case Variant::kPoll:
      return "poll";
    case Variant::kThreads:
      return "threads";
  }
  return "?";
}

struct Job {
  std::string name;
  Op op;
  uint32_t bytes;
  int qd;
};

[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "hop_probe[%d]: %s: %s\n", getpid(), what, std::strerror(errno));
  _exit(2);
}

double NowSeconds() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// Blocking helpers for the two ends.
void WriteAll(int fd, const iovec* iov_in, int count) {
  iovec iov[2];
  std::copy(iov_in, iov_in + count, iov);
  int first = 0;
  while (first < count) {
    ssize_t n = writev(fd, iov + first, count - first);
    if (n < 0) {
      if (errno == EINTR) continue;
      Die("writev");
    }
    auto left = static_cast<size_t>(n);
    while (first < count && left >= iov[first].iov_len) left -= iov[first++].iov_len;
    if (first < count) {
      iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + left;
      iov[first].iov_len -= left;
    }
  }
}

// False on a clean EOF before the first byte; dies on EOF mid-way.
bool ReadAll(int fd, void* buf, size_t bytes) {
  size_t got = 0;
  while (got < bytes) {
    ssize_t n = read(fd, static_cast<char*>(buf) + got, bytes - got);
    if (n < 0) {
      if (errno == EINTR) continue;
      Die("read");
    }
    if (n == 0) {
      if (got == 0) return false;
      errno = EPIPE;
      Die("EOF inside a message");
    }
    got += static_cast<size_t>(n);
  }
  return true;
}

void SetNoDelay(int fd) {
  int one = 1;
  if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) Die("TCP_NODELAY");
}

void SetNonBlocking(int fd) {
  if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) != 0) Die("O_NONBLOCK");
}

int Listen(uint16_t* port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) Die("socket");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) Die("bind");
  if (listen(fd, 4) != 0) Die("listen");
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) Die("getsockname");
  *port = ntohs(a.sin_port);
  return fd;
}

int Accept(int listen_fd) {
  int fd = accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
  if (fd < 0) Die("accept");
  close(listen_fd);
  SetNoDelay(fd);
  return fd;
}

int Connect(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) Die("socket");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) Die("connect");
  SetNoDelay(fd);
  return fd;
}

// ---- The server: answers each request, exits at the client's EOF. ----

void RunServer(int listen_fd, uint32_t max_bytes) {
  int fd = Accept(listen_fd);
  std::vector<char> buf(max_bytes, 'x');
  Header h;
  while (ReadAll(fd, &h, sizeof h)) {
    if (h.magic != kMagic || h.payload_bytes > max_bytes || h.length > max_bytes) {
      errno = EPROTO;
      Die("server: bad header");
    }
    if (h.payload_bytes > 0) ReadAll(fd, buf.data(), h.payload_bytes);
    Header r = h;
    r.payload_bytes = h.op == static_cast<uint32_t>(Op::kRead) ? h.length : 0;
    iovec iov[2] = {{&r, sizeof r}, {buf.data(), r.payload_bytes}};
    WriteAll(fd, iov, r.payload_bytes > 0 ? 2 : 1);
  }
  _exit(0);
}

// ---- The client: QD messages in flight for `seconds`, then drains. ----

struct ClientResult {
  uint64_t messages = 0;
  double seconds = 0;
  double latency_sum = 0;  // seconds, summed over messages
  double latency_p50 = 0;  // seconds: the median message; robust to a few
                           // long stalls when other work takes the CPU
};

void RunClient(uint16_t port, const Job& job, double seconds, int result_fd) {
  int fd = Connect(port);
  std::vector<char> buf(job.bytes, 'c');
  std::vector<double> sent_at(job.qd);
  auto send_one = [&](int tag) {
    Header h{};
    h.magic = kMagic;
    h.op = static_cast<uint32_t>(job.op);
    h.length = job.bytes;
    h.payload_bytes = job.op == Op::kWrite ? job.bytes : 0;
    h.tag = static_cast<uint32_t>(tag);
    iovec iov[2] = {{&h, sizeof h}, {buf.data(), h.payload_bytes}};
    sent_at[tag] = NowSeconds();
    WriteAll(fd, iov, h.payload_bytes > 0 ? 2 : 1);
  };
  ClientResult res;
  std::vector<float> latencies;
  latencies.reserve(1 << 20);
  double start = NowSeconds();
  double deadline = start + seconds;
  for (int i = 0; i < job.qd; ++i) send_one(i);
  int outstanding = job.qd;
  while (outstanding > 0) {
    Header r;
    if (!ReadAll(fd, &r, sizeof r)) {
      errno = EPIPE;
      Die("client: EOF");
    }
    if (r.magic != kMagic || r.tag >= static_cast<uint32_t>(job.qd) ||
        r.payload_bytes > job.bytes) {
      errno = EPROTO;
      Die("client: bad reply");
    }
    if (r.payload_bytes > 0) ReadAll(fd, buf.data(), r.payload_bytes);
    double now = NowSeconds();
    res.latency_sum += now - sent_at[r.tag];
    latencies.push_back(static_cast<float>(now - sent_at[r.tag]));
    ++res.messages;
    if (now < deadline) {
      send_one(static_cast<int>(r.tag));
    } else {
      --outstanding;
    }
  }
  res.seconds = NowSeconds() - start;
  auto mid = latencies.begin() + static_cast<std::ptrdiff_t>(latencies.size() / 2);
  std::nth_element(latencies.begin(), mid, latencies.end());
  res.latency_p50 = *mid;
  close(fd);
  if (write(result_fd, &res, sizeof res) != sizeof res) Die("client: result");
  _exit(0);
}

// ---- The relays. Each moves two directions between two nonblocking
// sockets; epoll is edge-triggered, so a direction runs until a syscall
// says EAGAIN (or a short read says the socket is drained, as libuv also
// assumes) and the next edge on either socket runs it again. ----

enum class Progress { kBlocked, kEof };

struct CopyDirection {
  int in = -1;
  int out = -1;
  std::vector<char> buf = std::vector<char>(kRelayReadBytes);
  size_t have = 0;
  size_t sent = 0;

  // Only then can a writable output move this direction on.
  bool WaitsOnOutput() const { return sent < have; }

  Progress Pump() {
    bool drained = false;  // a short read in this call: the socket was empty
    for (;;) {
      while (sent < have) {
        ssize_t n = write(out, buf.data() + sent, have - sent);
        if (n < 0) {
          if (errno == EAGAIN) return Progress::kBlocked;
          Die("relay: write");
        }
        sent += static_cast<size_t>(n);
      }
      if (drained) return Progress::kBlocked;
      ssize_t n = read(in, buf.data(), buf.size());
      if (n < 0) {
        if (errno == EAGAIN) return Progress::kBlocked;
        Die("relay: read");
      }
      if (n == 0) return Progress::kEof;
      have = static_cast<size_t>(n);
      sent = 0;
      drained = have < buf.size();
    }
  }
};

struct SpliceDirection {
  enum class State { kHeader, kSendHeader, kPayload };
  int in = -1;
  int out = -1;
  int pipe_r = -1;
  int pipe_w = -1;
  size_t pipe_capacity = 0;
  State state = State::kHeader;
  Header hdr{};
  size_t hdr_done = 0;    // header bytes received, then sent
  size_t to_receive = 0;  // payload bytes not yet spliced in from `in`
  size_t in_pipe = 0;     // payload bytes in the pipe, not yet spliced out

  // Only then can a writable output move this direction on.
  bool WaitsOnOutput() const {
    return state == State::kSendHeader || (state == State::kPayload && in_pipe > 0);
  }

  void Open(int in_fd, int out_fd) {
    in = in_fd;
    out = out_fd;
    int p[2];
    if (pipe2(p, O_CLOEXEC | O_NONBLOCK) != 0) Die("pipe2");
    pipe_r = p[0];
    pipe_w = p[1];
    // As large as this host allows (fs.pipe-max-size), so that one splice
    // can take a whole 1 MiB payload when the socket holds it.
    long want = 1 << 20;
    if (FILE* f = std::fopen("/proc/sys/fs/pipe-max-size", "r")) {
      if (std::fscanf(f, "%ld", &want) != 1) want = 1 << 20;
      std::fclose(f);
    }
    int got = fcntl(pipe_w, F_SETPIPE_SZ, static_cast<int>(want));
    if (got < 0) got = fcntl(pipe_w, F_GETPIPE_SZ);
    if (got < 0) Die("F_GETPIPE_SZ");
    pipe_capacity = static_cast<size_t>(got);
  }

  Progress Pump() {
    for (;;) {
      switch (state) {
        case State::kHeader: {
          ssize_t n = recv(in, reinterpret_cast<char*>(&hdr) + hdr_done, sizeof hdr - hdr_done, 0);
          if (n < 0) {
            if (errno == EAGAIN) return Progress::kBlocked;
            Die("relay: recv");
          }
          if (n == 0) return Progress::kEof;
          hdr_done += static_cast<size_t>(n);
          if (hdr_done < sizeof hdr) continue;
          if (hdr.magic != kMagic) {
            errno = EPROTO;
            Die("relay: bad header");
          }
          to_receive = hdr.payload_bytes;
          hdr_done = 0;
          state = State::kSendHeader;
          break;
        }
        case State::kSendHeader: {
          ssize_t n = send(out, reinterpret_cast<char*>(&hdr) + hdr_done, sizeof hdr - hdr_done,
                           to_receive > 0 ? MSG_MORE : 0);
          if (n < 0) {
            if (errno == EAGAIN) return Progress::kBlocked;
            Die("relay: send");
          }
          hdr_done += static_cast<size_t>(n);
          if (hdr_done < sizeof hdr) continue;
          hdr_done = 0;
          state = to_receive > 0 ? State::kPayload : State::kHeader;
          break;
        }
        case State::kPayload: {
          if (in_pipe > 0) {
            unsigned more = to_receive > 0 ? SPLICE_F_MORE : 0;
            ssize_t n = splice(pipe_r, nullptr, out, nullptr, in_pipe,
                               SPLICE_F_MOVE | SPLICE_F_NONBLOCK | more);
            if (n < 0) {
              if (errno == EAGAIN) return Progress::kBlocked;
              Die("relay: splice out");
            }
            in_pipe -= static_cast<size_t>(n);
            if (in_pipe == 0 && to_receive == 0) state = State::kHeader;
            break;
          }
          size_t want = std::min(to_receive, pipe_capacity);
          ssize_t n = splice(in, nullptr, pipe_w, nullptr, want, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
          if (n < 0) {
            if (errno == EAGAIN) return Progress::kBlocked;
            Die("relay: splice in");
          }
          if (n == 0) return Progress::kEof;
          to_receive -= static_cast<size_t>(n);
          in_pipe += static_cast<size_t>(n);
          break;
        }
      }
    }
  }
};

// spin_seconds: how long to poll with a zero timeout after the last event
// before sleeping in epoll_wait; 0 never polls, infinity never sleeps.
template <typename Direction>
void RelayLoop(Direction (&dirs)[2], int up, int down, double spin_seconds) {
  int ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) Die("epoll_create1");
  for (int fd : {up, down}) {
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.fd = fd;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) Die("epoll_ctl");
  }
  epoll_event evs[4];
  double last_event = NowSeconds();
  for (;;) {
    bool poll = spin_seconds > 0 && NowSeconds() - last_event < spin_seconds;
    int n = epoll_wait(ep, evs, 4, poll ? 0 : -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      Die("epoll_wait");
    }
    if (n > 0 && spin_seconds > 0) last_event = NowSeconds();
    // A readable socket feeds the direction it is the input of; a writable
    // one moves the direction it is the output of only if that direction
    // waits on output. epoll reports a socket's whole mask (EPOLLOUT stays
    // armed, and a socket with room is writable on every wake-up), so
    // without that check every wake-up would also run the idle direction:
    // a read that can only say EAGAIN.
    bool run[2] = {false, false};
    for (int i = 0; i < n; ++i) {
      for (int k = 0; k < 2; ++k) {
        bool in_ready = evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR);
        bool out_ready = evs[i].events & (EPOLLOUT | EPOLLHUP | EPOLLERR);
        if ((in_ready && dirs[k].in == evs[i].data.fd) ||
            (out_ready && dirs[k].out == evs[i].data.fd && dirs[k].WaitsOnOutput()))
          run[k] = true;
      }
    }
    for (int k = 0; k < 2; ++k) {
      if (run[k] && dirs[k].Pump() == Progress::kEof) _exit(0);  // closes both sockets
    }
  }
}

// One direction of the threads variant: blocking sockets, no epoll.
void BlockingPump(int in, int out) {
  std::vector<char> buf(kRelayReadBytes);
  for (;;) {
    ssize_t n = read(in, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      Die("relay: read");
    }
    if (n == 0) _exit(0);  // the end closed: so does the whole relay
    iovec iov = {buf.data(), static_cast<size_t>(n)};
    WriteAll(out, &iov, 1);
  }
}

void RunRelay(int listen_fd, uint16_t server_port, Variant v) {
  int up = Accept(listen_fd);
  int down = Connect(server_port);
  if (v == Variant::kThreads) {
    std::thread replies(BlockingPump, down, up);
    replies.detach();
    BlockingPump(up, down);
  }
  SetNonBlocking(up);
  SetNonBlocking(down);
  if (v == Variant::kSplice) {
    SpliceDirection dirs[2];
    dirs[0].Open(up, down);
    dirs[1].Open(down, up);
    RelayLoop(dirs, up, down, 0);
  } else {
    CopyDirection dirs[2];
    dirs[0].in = dirs[1].out = up;
    dirs[0].out = dirs[1].in = down;
    double spin_seconds = v == Variant::kSpin   ? std::numeric_limits<double>::infinity()
                          : v == Variant::kPoll ? kPollSeconds
                                                : 0;
    RelayLoop(dirs, up, down, spin_seconds);
  }
}

// ---- The parent: forks the three, reaps them, accounts CPU. ----

volatile sig_atomic_t g_children[3] = {0, 0, 0};

void KillChildren() {
  for (auto& pid : g_children) {
    if (pid > 0) kill(pid, SIGKILL);
  }
}

void OnFatalSignal(int sig) {
  KillChildren();
  // Reap what we can; the children are ours and PID 1 may not reap them.
  while (waitpid(-1, nullptr, 0) > 0) {
  }
  signal(sig, SIG_DFL);
  raise(sig);
}

void OnAlarm(int) { KillChildren(); }

pid_t Spawn(int slot, pid_t parent) {
  // Signals wait until the child is recorded: one arriving in between would
  // leave a live child KillChildren() does not know, and OnFatalSignal's
  // waitpid would wait for it for ever.
  sigset_t fatal, old;
  sigemptyset(&fatal);
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGALRM}) sigaddset(&fatal, sig);
  sigprocmask(SIG_BLOCK, &fatal, &old);
  pid_t pid = fork();
  if (pid < 0) Die("fork");
  if (pid == 0) {
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    signal(SIGALRM, SIG_DFL);
    sigprocmask(SIG_SETMASK, &old, nullptr);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(3);
    return 0;
  }
  g_children[slot] = pid;
  sigprocmask(SIG_SETMASK, &old, nullptr);
  return pid;
}

double CpuSeconds(const rusage& ru) {
  auto tv = [](const timeval& t) {
    return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) * 1e-6;
  };
  return tv(ru.ru_utime) + tv(ru.ru_stime);
}

double LoadAverage() {
  double load = -1;
  if (FILE* f = std::fopen("/proc/loadavg", "r")) {
    if (std::fscanf(f, "%lf", &load) != 1) load = -1;
    std::fclose(f);
  }
  return load;
}

struct Sample {
  double mib_s = 0;
  double msgs_s = 0;
  double latency_us = 0;  // mean
  double p50_us = 0;
  double cpu_us[3] = {0, 0, 0};  // per message: client, relay, server
  double relay_sys_share = 0;
  double load = 0;
};

enum Slot { kClient = 0, kRelay = 1, kServer = 2 };

bool RunOne(const Job& job, Variant v, double seconds, Sample* out) {
  pid_t self = getpid();
  uint16_t server_port = 0;
  uint16_t relay_port = 0;
  int server_listen = Listen(&server_port);
  int relay_listen = v == Variant::kDirect ? -1 : Listen(&relay_port);
  out->load = LoadAverage();

  if (Spawn(kServer, self) == 0) {
    if (relay_listen >= 0) close(relay_listen);
    RunServer(server_listen, job.bytes);
  }
  close(server_listen);
  if (v != Variant::kDirect && Spawn(kRelay, self) == 0) RunRelay(relay_listen, server_port, v);
  if (relay_listen >= 0) close(relay_listen);
  int result[2];  // the client's ClientResult
  if (pipe2(result, O_CLOEXEC) != 0) Die("pipe2");
  if (Spawn(kClient, self) == 0) {
    close(result[0]);
    RunClient(v == Variant::kDirect ? server_port : relay_port, job, seconds, result[1]);
  }
  close(result[1]);

  alarm(static_cast<unsigned>(seconds) + 30);
  ClientResult res;
  bool ok = read(result[0], &res, sizeof res) == sizeof res;
  close(result[0]);
  double cpu[3] = {0, 0, 0};
  double relay_sys = 0;
  for (int slot : {kClient, kRelay, kServer}) {
    pid_t pid = g_children[slot];
    if (pid <= 0) continue;
    int status = 0;
    rusage ru{};
    while (wait4(pid, &status, 0, &ru) < 0) {
      if (errno != EINTR) Die("wait4");
    }
    g_children[slot] = 0;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) ok = false;
    cpu[slot] = CpuSeconds(ru);
    if (slot == kRelay) {
      relay_sys =
          static_cast<double>(ru.ru_stime.tv_sec) + static_cast<double>(ru.ru_stime.tv_usec) * 1e-6;
    }
  }
  alarm(0);
  if (!ok || res.messages == 0) return false;
  auto m = static_cast<double>(res.messages);
  out->msgs_s = m / res.seconds;
  out->mib_s = out->msgs_s * job.bytes / (1024.0 * 1024.0);
  out->latency_us = res.latency_sum / m * 1e6;
  out->p50_us = res.latency_p50 * 1e6;
  for (int i = 0; i < 3; ++i) out->cpu_us[i] = cpu[i] / m * 1e6;
  out->relay_sys_share = cpu[kRelay] > 0 ? relay_sys / cpu[kRelay] : 0;
  return true;
}

// ---- Options and the report. ----

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> parts;
  std::stringstream in(s);
  for (std::string p; std::getline(in, p, ',');) {
    if (!p.empty()) parts.push_back(p);
  }
  return parts;
}

[[noreturn]] void Usage(int code) {
  std::fprintf(code == 0 ? stdout : stderr,
               "usage: hop_probe [--rounds N] [--seconds S] [--variants LIST] [--jobs LIST]\n"
               "  --rounds N      rounds, each runs every job on every variant (default 3)\n"
               "  --seconds S     seconds per measurement (default 3)\n"
               "  --variants LIST of direct,copy,splice,spin,poll,threads (default all six)\n"
               "  --jobs LIST     of write-1M-qd8,read-1M-qd8,write-4k-qd1,read-4k-qd1\n"
               "                  (default all four)\n");
  std::exit(code);
}

// The values of one column over the rounds, printed as "median (min - max)".
struct Range {
  std::vector<double> values;
  void Add(double x) { values.push_back(x); }
  std::string Format(const char* fmt) const {
    std::vector<double> v = values;
    std::sort(v.begin(), v.end());
    // The median of an even count is the lower middle value: one measured.
    auto one = [&](double x) {
      char text[32];
      std::snprintf(text, sizeof text, fmt, x);
      return std::string(text);
    };
    std::string median = one(v[(v.size() - 1) / 2]);
    if (v.size() == 1) return median;
    return median + " (" + one(v.front()) + " - " + one(v.back()) + ")";
  }
};

}  // namespace

int main(int argc, char** argv) {
  int rounds = 3;
  double seconds = 3;
  std::vector<Variant> variants(std::begin(kAllVariants), std::end(kAllVariants));
  const std::vector<Job> all_jobs = {
      {"write-1M-qd8", Op::kWrite, 1 << 20, 8},
      {"read-1M-qd8", Op::kRead, 1 << 20, 8},
      {"write-4k-qd1", Op::kWrite, 4096, 1},
      {"read-4k-qd1", Op::kRead, 4096, 1},
  };
  std::vector<Job> jobs = all_jobs;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-h" || a == "--help") Usage(0);
    if (i + 1 >= argc) Usage(1);
    std::string val = argv[++i];
    if (a == "--rounds") {
      rounds = std::atoi(val.c_str());
    } else if (a == "--seconds") {
      seconds = std::atof(val.c_str());
    } else if (a == "--variants") {
      variants.clear();
      for (const auto& name : Split(val)) {
        bool found = false;
        for (Variant v : kAllVariants) {
          if (name == VariantName(v)) {
            variants.push_back(v);
            found = true;
          }
        }
        if (!found) Usage(1);
      }
    } else if (a == "--jobs") {
      jobs.clear();
      for (const auto& name : Split(val)) {
        auto it = std::find_if(all_jobs.begin(), all_jobs.end(),
                               [&](const Job& j) { return j.name == name; });
        if (it == all_jobs.end()) Usage(1);
        jobs.push_back(*it);
      }
    } else {
      Usage(1);
    }
  }
  if (rounds < 1 || seconds <= 0 || variants.empty() || jobs.empty()) Usage(1);

  signal(SIGINT, OnFatalSignal);
  signal(SIGTERM, OnFatalSignal);
  signal(SIGHUP, OnFatalSignal);
  signal(SIGALRM, OnAlarm);
  signal(SIGPIPE, SIG_IGN);  // inherited: a dead peer shows as EPIPE

  std::printf("# hop_probe: %d round(s), %.1f s per measurement, loopback TCP\n", rounds, seconds);
  std::printf("# CPU: user + system per message (us); relay sys: system share of relay CPU\n");
  std::printf("# lat: mean; p50: the median message's latency\n");
  std::printf("%-5s %-13s %-7s %9s %9s %9s %9s %9s %9s %9s %6s %5s\n", "round", "job", "variant",
              "MiB/s", "msgs/s", "lat us", "p50 us", "cli cpu", "rly cpu", "srv cpu", "rly%sy",
              "load");
  // samples[job][variant][round]
  std::map<std::string, std::map<Variant, std::vector<Sample>>> samples;
  for (int r = 1; r <= rounds; ++r) {
    for (const Job& job : jobs) {
      for (Variant v : variants) {
        Sample s;
        if (!RunOne(job, v, seconds, &s)) {
          std::fprintf(stderr, "hop_probe: %s %s failed (round %d)\n", job.name.c_str(),
                       VariantName(v), r);
          return 1;
        }
        samples[job.name][v].push_back(s);
        std::printf("%-5d %-13s %-7s %9.1f %9.0f %9.1f %9.1f %9.1f %9.1f %9.1f %5.0f%% %5.2f\n", r,
                    job.name.c_str(), VariantName(v), s.mib_s, s.msgs_s, s.latency_us, s.p50_us,
                    s.cpu_us[kClient], s.cpu_us[kRelay], s.cpu_us[kServer], 100 * s.relay_sys_share,
                    s.load);
        std::fflush(stdout);
      }
    }
  }

  // Ranges over the rounds; ratios and added latency against direct of the
  // same round.
  Range load;
  for (auto& [name, by_variant] : samples) {
    for (auto& [v, list] : by_variant) {
      for (auto& s : list) load.Add(s.load);
    }
  }
  std::printf("\n## Median (min - max) over %d round(s); load average %s\n", rounds,
              load.Format("%.2f").c_str());
  for (const Job& job : jobs) {
    auto& by_variant = samples[job.name];
    bool have_direct = by_variant.count(Variant::kDirect) > 0;
    std::printf("\n### %s\n\n", job.name.c_str());
    std::printf(
        "| variant | MiB/s | mean lat us | p50 lat us | relay CPU us/msg |"
        " client + server CPU us/msg | total CPU us/msg | vs direct | lat +us | p50 +us |\n");
    std::printf("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for (Variant v : variants) {
      Range mib, lat, p50, relay, ends, total, ratio, added, added_p50;
      const auto& list = by_variant[v];
      for (size_t i = 0; i < list.size(); ++i) {
        const Sample& s = list[i];
        mib.Add(s.mib_s);
        lat.Add(s.latency_us);
        p50.Add(s.p50_us);
        relay.Add(s.cpu_us[kRelay]);
        ends.Add(s.cpu_us[kClient] + s.cpu_us[kServer]);
        total.Add(s.cpu_us[kClient] + s.cpu_us[kRelay] + s.cpu_us[kServer]);
        if (have_direct && v != Variant::kDirect) {
          const Sample& d = by_variant[Variant::kDirect][i];
          ratio.Add(s.mib_s / d.mib_s);
          added.Add(s.latency_us - d.latency_us);
          added_p50.Add(s.p50_us - d.p50_us);
        }
      }
      bool relative = have_direct && v != Variant::kDirect;
      std::printf(
          "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", VariantName(v),
          mib.Format("%.0f").c_str(), lat.Format("%.1f").c_str(), p50.Format("%.1f").c_str(),
          v == Variant::kDirect ? "-" : relay.Format("%.1f").c_str(), ends.Format("%.1f").c_str(),
          total.Format("%.1f").c_str(), relative ? ratio.Format("%.2fx").c_str() : "-",
          relative ? added.Format("%+.1f").c_str() : "-",
          relative ? added_p50.Format("%+.1f").c_str() : "-");
    }
  }
  return 0;
}
