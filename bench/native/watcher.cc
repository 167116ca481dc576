// A cheap subscriber for bench/watch_latency.py --native: N streams (each on its own
// connection) to the core's WatchPoints, the bare relay's Subscribe or Mosquitto; records
// (source_time s, latency ms) per received point, on the realtime clock like the Python
// subscribers. Prints "ready N" once every stream is live; stops on SIGTERM or when stdin
// closes, then writes the pairs as native doubles (src, ms, src, ms, ...) to --out.
//
// watcher --kind core|bare|mqtt --target unix:/path|/path --ca F --cert F --key F
//         --out FILE [--streams N] [--server-name smxcore]

#include <mosquitto.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <absl/synchronization/mutex.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/proto_buffer_reader.h>

#include "common.h"
#include "smx/v1/point_service.grpc.pb.h"

namespace {

std::atomic<bool> g_stop{false};

void on_term(int) { g_stop.store(true); }

using bench::die;
using bench::now_ns;

struct Samples {
  std::vector<double> v;  // src, ms pairs
  Samples() { v.reserve(1 << 20); }
  void add(const google::protobuf::Timestamp& t, int64_t now) {
    int64_t src = t.seconds() * 1000000000 + t.nanos();
    v.push_back(double(src) / 1e9);
    v.push_back(double(now - src) / 1e6);
  }
};

void write_out(const std::string& path, const std::vector<const Samples*>& all) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) die("cannot write " + path);
  for (const Samples* s : all) {
    if (!s->v.empty() && std::fwrite(s->v.data(), sizeof(double), s->v.size(), f) != s->v.size())
      die("short write to " + path);
  }
  if (std::fclose(f) != 0) die("cannot write " + path);
}

void announce_ready(int n) {
  std::printf("ready %d\n", n);
  std::fflush(stdout);
}

// -- gRPC: one completion queue, polled by the main thread ----------------------------------

enum Op : uintptr_t { kStart = 0, kWrite = 1, kRead = 2, kFinish = 3 };

struct Stream {
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<smx::v1::PointService::Stub> core_stub;
  std::unique_ptr<grpc::GenericStub> bare_stub;
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::ClientAsyncReader<smx::v1::WatchPointsResponse>> core;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> bare;
  smx::v1::WatchPointsResponse core_msg;
  smx::v1::WritePointsRequest bare_msg;
  grpc::ByteBuffer buf;
  grpc::Status status;
  bool first = true;
  int pending = 0;  // operations in the queue
  Samples samples;

  void* tag(Op op) {
    ++pending;
    return reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(this) | op);
  }
  void read() {
    if (core)
      core->Read(&core_msg, tag(kRead));
    else
      bare->Read(&buf, tag(kRead));
  }
  void finish() {
    if (core)
      core->Finish(&status, tag(kFinish));
    else
      bare->Finish(&status, tag(kFinish));
  }
};

int run_grpc(const std::string& kind, std::map<std::string, std::string>& opt, int n,
             const std::string& out) {
  grpc::CompletionQueue cq;
  std::vector<std::unique_ptr<Stream>> streams;
  smx::v1::WatchPointsRequest req;
  req.add_patterns("meter/w*");
  for (int i = 0; i < n; ++i) {
    auto s = std::make_unique<Stream>();
    s->channel = bench::tls_channel(opt);  // each stream its own connection
    if (kind == "core") {
      s->core_stub = smx::v1::PointService::NewStub(s->channel);
      s->core = s->core_stub->PrepareAsyncWatchPoints(&s->ctx, req, &cq);
      s->core->StartCall(s->tag(kStart));
    } else {
      s->bare_stub = std::make_unique<grpc::GenericStub>(s->channel);
      s->bare = s->bare_stub->PrepareCall(&s->ctx, "/bench.Bare/Subscribe", &cq);
      s->bare->StartCall(s->tag(kStart));
    }
    streams.push_back(std::move(s));
  }
  int ready = 0;
  bool cancelled = false;
  int64_t connect_deadline = now_ns() + int64_t(30) * 1000000000;
  for (;;) {
    if (g_stop.load() && !cancelled) {
      cancelled = true;
      for (auto& s : streams) s->ctx.TryCancel();
    }
    if (cancelled) {
      int pending = 0;
      for (auto& s : streams) pending += s->pending;
      if (pending == 0) break;
    } else if (ready < n && now_ns() > connect_deadline) {
      die("streams not live after 30 s (" + std::to_string(ready) + " of " + std::to_string(n) + ")");
    }
    void* raw;
    bool ok;
    auto deadline = std::chrono::system_clock::now() + std::chrono::milliseconds(50);
    auto st = cq.AsyncNext(&raw, &ok, deadline);
    if (st == grpc::CompletionQueue::TIMEOUT) continue;
    if (st == grpc::CompletionQueue::SHUTDOWN) break;
    auto op = Op(reinterpret_cast<uintptr_t>(raw) & 3);
    auto* s = reinterpret_cast<Stream*>(reinterpret_cast<uintptr_t>(raw) & ~uintptr_t(3));
    --s->pending;
    if (cancelled) continue;
    if (op == kFinish) {
      die(kind + " stream ended: " + std::to_string(s->status.error_code()) + " " +
          s->status.error_message());
    }
    if (!ok) {
      s->finish();  // the stream broke: report its status
      continue;
    }
    if (op == kStart) {
      if (s->bare) {
        grpc::Slice empty("", 0);
        grpc::ByteBuffer request(&empty, 1);
        s->bare->WriteLast(request, grpc::WriteOptions(), s->tag(kWrite));
      } else {
        s->read();
      }
      continue;
    }
    if (op == kWrite) {
      s->read();
      continue;
    }
    // kRead
    int64_t now = now_ns();
    if (s->first) {  // the snapshot (core) or the "subscribed" marker (bare)
      s->first = false;
      if (++ready == n) announce_ready(n);
    } else if (s->core) {
      for (const auto& p : s->core_msg.points()) s->samples.add(p.source_time(), now);
    } else {
      grpc::ProtoBufferReader reader(&s->buf);
      if (!s->bare_msg.ParseFromZeroCopyStream(&reader)) die("bare: unparsable message");
      for (const auto& p : s->bare_msg.samples()) s->samples.add(p.source_time(), now);
    }
    s->read();
  }
  std::vector<const Samples*> all;
  for (auto& s : streams) all.push_back(&s->samples);
  write_out(out, all);
  cq.Shutdown();
  void* raw;
  bool ok;
  while (cq.Next(&raw, &ok)) {
  }
  return 0;
}

// -- MQTT: one libmosquitto network thread per client ---------------------------------------

struct MqttClient {
  struct mosquitto* m = nullptr;
  Samples samples;
  smx::v1::WritePointsRequest msg;
};

std::atomic<int> g_subscribed{0};
std::atomic<bool> g_mqtt_failed{false};
std::string g_mqtt_error;

void mqtt_on_connect(struct mosquitto* m, void*, int rc) {
  if (rc != 0) {
    g_mqtt_error = std::string("CONNACK refused: ") + mosquitto_connack_string(rc);
    g_mqtt_failed.store(true);
    return;
  }
  int err = mosquitto_subscribe(m, nullptr, "meter/w", 1);
  if (err != MOSQ_ERR_SUCCESS) {
    g_mqtt_error = std::string("subscribe: ") + mosquitto_strerror(err);
    g_mqtt_failed.store(true);
  }
}

void mqtt_on_subscribe(struct mosquitto*, void*, int, int, const int*) { ++g_subscribed; }

void mqtt_on_disconnect(struct mosquitto*, void*, int rc) {
  if (!g_stop.load()) {
    g_mqtt_error = std::string("disconnected: ") + mosquitto_strerror(rc);
    g_mqtt_failed.store(true);
  }
}

void mqtt_on_message(struct mosquitto*, void* obj, const struct mosquitto_message* msg) {
  int64_t now = now_ns();
  auto* c = static_cast<MqttClient*>(obj);
  if (!c->msg.ParseFromArray(msg->payload, msg->payloadlen)) return;
  for (const auto& p : c->msg.samples()) c->samples.add(p.source_time(), now);
}

int run_mqtt(const std::string& socket, const std::string& ca, const std::string& cert,
             const std::string& key, int n, const std::string& out) {
  mosquitto_lib_init();
  std::vector<std::unique_ptr<MqttClient>> clients;
  for (int i = 0; i < n; ++i) {
    auto c = std::make_unique<MqttClient>();
    std::string id = "nsub-" + std::to_string(getpid()) + "-" + std::to_string(i);
    c->m = mosquitto_new(id.c_str(), true, c.get());
    if (!c->m) die("mosquitto_new failed");
    int err = mosquitto_tls_set(c->m, ca.c_str(), nullptr, cert.c_str(), key.c_str(), nullptr);
    if (err != MOSQ_ERR_SUCCESS) die(std::string("TLS setup: ") + mosquitto_strerror(err));
    mosquitto_tls_insecure_set(c->m, true);  // a socket path is no host name; the chain is verified
    mosquitto_connect_callback_set(c->m, mqtt_on_connect);
    mosquitto_subscribe_callback_set(c->m, mqtt_on_subscribe);
    mosquitto_disconnect_callback_set(c->m, mqtt_on_disconnect);
    mosquitto_message_callback_set(c->m, mqtt_on_message);
    err = mosquitto_connect(c->m, socket.c_str(), 0, 60);  // port 0: host is a Unix socket path
    if (err != MOSQ_ERR_SUCCESS)
      die("connect to " + socket + ": " + mosquitto_strerror(err));
    err = mosquitto_loop_start(c->m);
    if (err != MOSQ_ERR_SUCCESS) die(std::string("loop_start: ") + mosquitto_strerror(err));
    clients.push_back(std::move(c));
  }
  int64_t deadline = now_ns() + int64_t(30) * 1000000000;
  bool announced = false;
  while (!g_stop.load()) {
    if (g_mqtt_failed.load()) die("mqtt: " + g_mqtt_error);
    if (!announced && g_subscribed.load() >= n) {
      announced = true;
      announce_ready(n);
    }
    if (!announced && now_ns() > deadline) die("mqtt: no SUBACK after 30 s");
    usleep(20000);
  }
  for (auto& c : clients) mosquitto_disconnect(c->m);
  for (auto& c : clients) mosquitto_loop_stop(c->m, false);
  std::vector<const Samples*> all;
  for (auto& c : clients) all.push_back(&c->samples);
  write_out(out, all);
  for (auto& c : clients) mosquitto_destroy(c->m);
  mosquitto_lib_cleanup();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  bench::g_program = "watcher";
  auto opt = bench::parse_options(argc, argv, {{"--streams", "1"}, {"--server-name", "smxcore"}},
                                  {"--kind", "--target", "--ca", "--cert", "--key", "--out"});
  const std::string kind = opt["--kind"];
  int n = std::atoi(opt["--streams"].c_str());
  if (n < 1) die("--streams must be at least 1");

  struct sigaction sa {};
  sa.sa_handler = on_term;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  std::thread([] {  // stop when the parent closes stdin (or dies)
    char b[256];
    while (read(0, b, sizeof b) > 0) {
    }
    g_stop.store(true);
  }).detach();

  // Debian's abseil is built with its Mutex deadlock detector on: a few us per message.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  if (kind == "core" || kind == "bare") return run_grpc(kind, opt, n, opt["--out"]);
  if (kind == "mqtt")
    return run_mqtt(bench::socket_path(opt["--target"]), opt["--ca"], opt["--cert"], opt["--key"],
                    n, opt["--out"]);
  die("unknown --kind " + kind + " (core, bare or mqtt)");
}
