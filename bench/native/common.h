// What the native benchmark clients (watcher.cc, writer.cc) share: errors, clocks, options,
// and a gRPC channel or MQTT socket path built the way the Python benchmark builds them.
#pragma once

#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>

#include <grpcpp/grpcpp.h>

namespace bench {

inline const char* g_program = "native";

[[noreturn]] inline void die(const std::string& msg) {
  std::fprintf(stderr, "%s: %s\n", g_program, msg.c_str());
  std::fflush(stderr);
  _exit(1);
}

// Realtime clock: latencies compare it with source_time set by another process.
inline int64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

inline std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) die("cannot read " + path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// "--key value" pairs over `defaults`; every name in `required` must be given.
inline std::map<std::string, std::string> parse_options(
    int argc, char** argv, std::map<std::string, std::string> defaults,
    std::initializer_list<const char*> required) {
  for (int i = 1; i < argc; i += 2) {
    if (i + 1 >= argc || std::strncmp(argv[i], "--", 2) != 0)
      die(std::string("bad argument: ") + argv[i]);
    defaults[argv[i]] = argv[i + 1];
  }
  for (const char* k : required)
    if (!defaults.count(k)) die(std::string("missing ") + k);
  return defaults;
}

// A channel of its own connection, with the client certificate, verifying the core's name.
inline std::shared_ptr<grpc::Channel> tls_channel(std::map<std::string, std::string>& opt) {
  grpc::SslCredentialsOptions tls;
  tls.pem_root_certs = read_file(opt["--ca"]);
  tls.pem_cert_chain = read_file(opt["--cert"]);
  tls.pem_private_key = read_file(opt["--key"]);
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride(opt["--server-name"]);
  args.SetString(GRPC_ARG_DEFAULT_AUTHORITY, opt["--server-name"]);
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // each channel its own connection
  args.SetMaxReceiveMessageSize(64 << 20);
  return grpc::CreateCustomChannel(opt["--target"], grpc::SslCredentials(tls), args);
}

// libmosquitto takes a Unix socket as a host path: the target without its "unix:" prefix.
inline std::string socket_path(std::string target) {
  for (const char* prefix : {"unix://", "unix:"})
    if (target.rfind(prefix, 0) == 0) return target.substr(std::strlen(prefix));
  return target;
}

}  // namespace bench
