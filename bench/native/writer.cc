// A cheap writer for bench/watch_latency.py --native: writes on a fixed schedule to the core's
// WritePoints, the bare relay's Publish or Mosquitto (QoS 1), each write with source_time = now,
// keeping at most --max-in-flight writes open, like the Python writer. On 2 cores the Python
// writer's own CPU (~250 us per gRPC call) competes with the server it measures. With
// `--streamed 1` (core only) the writes are requests on one StreamWritePoints stream instead of
// unary calls, answered in order; a thread of its own reads the answers.
//
// writer --kind core|bare|mqtt --target unix:/path|/path --ca F --cert F --key F
//        --seconds S [--period-us 1000] [--points 1] [--max-in-flight 64] [--server-name smxcore]
//        [--streamed 0|1]
//
// Connects and writes once before the clock starts, then prints
// "done WRITES LATE FIRST": writes made, writes started more than one period behind
// schedule, and the realtime clock (seconds) at the start of the schedule.

#include <mosquitto.h>
#include <time.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <absl/synchronization/mutex.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/support/byte_buffer.h>

#include "common.h"
#include "smx/v1/point_service.grpc.pb.h"

namespace {

using bench::die;

int64_t mono_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

void sleep_ns(int64_t ns) {
  if (ns <= 0) return;
  timespec ts{time_t(ns / 1000000000), long(ns % 1000000000)};
  nanosleep(&ts, nullptr);
}

smx::v1::WritePointsRequest request(int count, int points) {
  smx::v1::WritePointsRequest req;
  int64_t now = bench::now_ns();
  for (int i = 0; i < points; ++i) {
    auto* s = req.add_samples();
    s->set_name("meter/w" + std::to_string(i));
    s->mutable_value()->set_double_value(count);
    s->mutable_source_time()->set_seconds(now / 1000000000);
    s->mutable_source_time()->set_nanos(int32_t(now % 1000000000));
  }
  return req;
}

// The schedule of the Python writer (_Schedule): one write per period for `seconds`.
struct Schedule {
  int64_t period, start, next, end;
  long writes = 0, late = 0;
  double first;
  Schedule(double seconds, int64_t period_ns)
      : period(period_ns), start(mono_ns()), next(start), end(start + int64_t(seconds * 1e9)),
        first(double(bench::now_ns()) / 1e9) {}
  bool more() const { return next < end; }
  // Counts the write due now; returns how long to wait before making it (0 when behind).
  int64_t take() {
    int64_t delay = next - mono_ns();
    if (delay < -period) ++late;
    ++writes;
    next += period;
    return delay > 0 ? delay : 0;
  }
  void report() const { std::printf("done %ld %ld %.6f\n", writes, late, first); }
};

// -- gRPC: one completion queue, unary calls kept open up to --max-in-flight --------------------

struct Call {
  std::unique_ptr<grpc::ClientContext> ctx;
  std::unique_ptr<grpc::ClientAsyncResponseReader<smx::v1::WritePointsResponse>> core;
  std::unique_ptr<grpc::GenericClientAsyncResponseReader> bare;
  smx::v1::WritePointsResponse core_reply;
  grpc::ByteBuffer bare_reply;
  grpc::Status status;
};

int run_grpc(std::map<std::string, std::string>& opt, double seconds, int64_t period, int points,
             int max_in_flight) {
  const bool core = opt["--kind"] == "core";
  auto channel = bench::tls_channel(opt);
  auto stub = smx::v1::PointService::NewStub(channel);
  grpc::GenericStub generic(channel);
  grpc::CompletionQueue cq;
  std::vector<Call> calls(max_in_flight);
  std::vector<Call*> idle;
  for (auto& c : calls) idle.push_back(&c);
  std::mutex mu;
  std::condition_variable freed;
  // Answers are taken by a thread of their own, so that the schedule sleeps on the clock (a
  // completion queue's deadline is coarser than the 1 ms period).
  std::thread answers([&] {
    void* tag;
    bool ok;
    while (cq.Next(&tag, &ok)) {
      auto* c = static_cast<Call*>(tag);
      if (!ok || !c->status.ok())
        die("write failed: " + std::to_string(c->status.error_code()) + " " +
            c->status.error_message());
      std::lock_guard<std::mutex> lock(mu);
      idle.push_back(c);
      freed.notify_one();
    }
  });
  auto send = [&](int count) {
    Call* c;
    {
      std::unique_lock<std::mutex> lock(mu);
      if (!freed.wait_for(lock, std::chrono::seconds(30), [&] { return !idle.empty(); }))
        die("no write answered for 30 s");
      c = idle.back();
      idle.pop_back();
    }
    c->ctx = std::make_unique<grpc::ClientContext>();
    auto req = request(count, points);
    if (core) {
      c->core = stub->PrepareAsyncWritePoints(c->ctx.get(), req, &cq);
      c->core->StartCall();
      c->core->Finish(&c->core_reply, &c->status, c);
    } else {
      std::string bytes = req.SerializeAsString();
      grpc::Slice slice(bytes);
      grpc::ByteBuffer in(&slice, 1);
      c->bare = generic.PrepareUnaryCall(c->ctx.get(), "/bench.Bare/Publish", in, &cq);
      c->bare->StartCall();
      c->bare->Finish(&c->bare_reply, &c->status, c);
    }
  };
  auto settle = [&] {  // every open write answered
    std::unique_lock<std::mutex> lock(mu);
    if (!freed.wait_for(lock, std::chrono::seconds(30), [&] { return idle.size() == calls.size(); }))
      die("writes not answered after 30 s");
  };
  send(0);  // connect, and see the write accepted, before the clock starts
  settle();
  Schedule plan(seconds, period);
  while (plan.more()) {
    sleep_ns(plan.take());
    send(int(plan.writes));
  }
  settle();
  plan.report();
  cq.Shutdown();
  answers.join();
  return 0;
}

// -- gRPC, streamed: one StreamWritePoints stream, up to --max-in-flight requests unanswered -----

int run_streamed(std::map<std::string, std::string>& opt, double seconds, int64_t period,
                 int points, int max_in_flight) {
  auto channel = bench::tls_channel(opt);
  auto stub = smx::v1::PointService::NewStub(channel);
  grpc::ClientContext ctx;
  auto stream = stub->StreamWritePoints(&ctx);
  std::mutex mu;
  std::condition_variable freed;
  int in_flight = 0;
  bool ended = false;
  // One thread reads while the schedule writes (gRPC allows one reader and one writer at once).
  std::thread answers([&] {
    smx::v1::WritePointsResponse reply;
    while (stream->Read(&reply)) {
      std::lock_guard<std::mutex> lock(mu);
      --in_flight;
      freed.notify_one();
    }
    std::lock_guard<std::mutex> lock(mu);
    ended = true;
    freed.notify_one();
  });
  auto fail = [&](const std::string& what) {
    grpc::Status status = stream->Finish();  // the status the core ended the stream with
    die(what + ": " + std::to_string(status.error_code()) + " " + status.error_message());
  };
  // Waits until at most `limit` writes are unanswered.
  auto wait_below = [&](int limit, const char* what) {
    std::unique_lock<std::mutex> lock(mu);
    if (!freed.wait_for(lock, std::chrono::seconds(30),
                        [&] { return in_flight < limit || ended; }))
      die(std::string("no write answered for 30 s ") + what);
    if (in_flight >= limit) {
      lock.unlock();
      answers.join();
      fail("stream ended");
    }
  };
  auto send = [&](int count) {
    wait_below(max_in_flight, "(in flight)");
    {
      std::lock_guard<std::mutex> lock(mu);
      ++in_flight;
    }
    if (!stream->Write(request(count, points))) {
      answers.join();
      fail("write refused");
    }
  };
  send(0);  // connect, and see the write accepted, before the clock starts
  wait_below(1, "(first write)");
  Schedule plan(seconds, period);
  while (plan.more()) {
    sleep_ns(plan.take());
    send(int(plan.writes));
  }
  wait_below(1, "(settling)");
  stream->WritesDone();
  answers.join();
  grpc::Status status = stream->Finish();
  if (!status.ok())
    die("stream ended: " + std::to_string(status.error_code()) + " " + status.error_message());
  plan.report();
  return 0;
}

// -- MQTT: QoS 1 publishes, libmosquitto's network thread counting acknowledgements ------------

std::atomic<int> g_in_flight{0};
std::atomic<bool> g_connected{false};
std::atomic<int> g_connack{-1};

void on_connect(struct mosquitto*, void*, int rc) {
  g_connack.store(rc);
  g_connected.store(rc == 0);
}
void on_publish(struct mosquitto*, void*, int) { --g_in_flight; }

int run_mqtt(std::map<std::string, std::string>& opt, double seconds, int64_t period, int points,
             int max_in_flight) {
  mosquitto_lib_init();
  std::string id = "nwriter-" + std::to_string(getpid());
  struct mosquitto* m = mosquitto_new(id.c_str(), true, nullptr);
  if (!m) die("mosquitto_new failed");
  int err = mosquitto_tls_set(m, opt["--ca"].c_str(), nullptr, opt["--cert"].c_str(),
                              opt["--key"].c_str(), nullptr);
  if (err != MOSQ_ERR_SUCCESS) die(std::string("TLS setup: ") + mosquitto_strerror(err));
  mosquitto_tls_insecure_set(m, true);  // a socket path is no host name; the chain is verified
  mosquitto_max_inflight_messages_set(m, unsigned(max_in_flight));
  mosquitto_connect_callback_set(m, on_connect);
  mosquitto_publish_callback_set(m, on_publish);
  std::string socket = bench::socket_path(opt["--target"]);
  err = mosquitto_connect(m, socket.c_str(), 0, 60);
  if (err != MOSQ_ERR_SUCCESS) die("connect to " + socket + ": " + mosquitto_strerror(err));
  if ((err = mosquitto_loop_start(m)) != MOSQ_ERR_SUCCESS)
    die(std::string("loop_start: ") + mosquitto_strerror(err));
  for (int64_t deadline = mono_ns() + int64_t(15) * 1000000000; g_connack.load() < 0;) {
    if (mono_ns() > deadline) die("no CONNACK after 15 s");
    usleep(1000);
  }
  if (!g_connected.load()) die(std::string("CONNACK refused: ") + mosquitto_connack_string(g_connack));
  auto publish = [&](int count) {
    std::string bytes = request(count, points).SerializeAsString();
    ++g_in_flight;
    int rc = mosquitto_publish(m, nullptr, "meter/w", int(bytes.size()), bytes.data(), 1, false);
    if (rc != MOSQ_ERR_SUCCESS) die(std::string("publish: ") + mosquitto_strerror(rc));
  };
  auto wait_below = [&](int limit, double seconds) {
    for (int64_t deadline = mono_ns() + int64_t(seconds * 1e9); g_in_flight.load() >= limit;) {
      if (mono_ns() > deadline) die("the broker stopped acknowledging");
      usleep(100);
    }
  };
  publish(0);  // before the clock starts, like the gRPC writers' first call
  wait_below(1, 10);
  Schedule plan(seconds, period);
  while (plan.more()) {
    sleep_ns(plan.take());
    wait_below(max_in_flight, 10);
    publish(int(plan.writes));
  }
  wait_below(1, 5);
  plan.report();
  mosquitto_disconnect(m);
  mosquitto_loop_stop(m, false);
  mosquitto_destroy(m);
  mosquitto_lib_cleanup();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  bench::g_program = "writer";
  auto opt = bench::parse_options(
      argc, argv,
      {{"--server-name", "smxcore"}, {"--period-us", "1000"}, {"--points", "1"},
       {"--max-in-flight", "64"}, {"--streamed", "0"}},
      {"--kind", "--target", "--ca", "--cert", "--key", "--seconds"});
  double seconds = std::atof(opt["--seconds"].c_str());
  int64_t period = int64_t(std::atol(opt["--period-us"].c_str())) * 1000;
  int points = std::atoi(opt["--points"].c_str());
  int max_in_flight = std::atoi(opt["--max-in-flight"].c_str());
  if (seconds <= 0 || period <= 0 || points < 1 || max_in_flight < 1)
    die("--seconds, --period-us, --points and --max-in-flight must be positive");
  // Debian's abseil is built with its Mutex deadlock detector on: a few us per call.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  const std::string kind = opt["--kind"];
  if (opt["--streamed"] == "1") {
    if (kind != "core") die("--streamed 1 is for --kind core (StreamWritePoints)");
    return run_streamed(opt, seconds, period, points, max_in_flight);
  }
  if (kind == "core" || kind == "bare") return run_grpc(opt, seconds, period, points, max_in_flight);
  if (kind == "mqtt") return run_mqtt(opt, seconds, period, points, max_in_flight);
  die("unknown --kind " + kind + " (core, bare or mqtt)");
}
