// A stand-in Hubble server for benchmarks: answers observer.Observer/GetFlows with pre-serialized
// GetFlowsResponse messages read from a file, as fast as gRPC's C++ core can write them, so that a
// benchmark measures the client (the auditor), not the server.
//
// Stage: benchmark tooling only (built by `make bench` into bench/out/, never by `make test`).
// Input: --file PATH, a sequence of records "uint32 little-endian length, message bytes" (written by
// bench/standin.py from the project's Python demo code); --listen HOST:PORT (port 0: ephemeral).
// Output: prints "listening on HOST:PORT" once bound; every GetFlows call gets every message in file
// order, then stays open like a follow stream until the client cancels. The request is read and not
// interpreted (no filters, no field mask: the file already holds what should be sent). Other methods
// answer UNIMPLEMENTED. Stops on SIGTERM/SIGINT.
//
// Messages are handed to gRPC as static slices over one buffer (no copy, no protobuf code at all): a
// generic callback service, so nothing is generated from the .proto files.
//
// Error policy: an unreadable or truncated file, or a failure to bind, prints "error: ..." on stderr and
// exits 2.

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>

#include <csignal>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace {

const char kGetFlows[] = "/observer.Observer/GetFlows";

struct Messages {
  std::string buffer;               // the whole file; slices point into it
  std::vector<grpc::Slice> slices;  // one per message
};

bool Load(const std::string& path, Messages* out, std::string* error) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    *error = path + ": cannot open";
    return false;
  }
  out->buffer.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  const std::string& b = out->buffer;
  size_t pos = 0;
  while (pos < b.size()) {
    if (pos + 4 > b.size()) {
      *error = path + ": truncated length at byte " + std::to_string(pos);
      return false;
    }
    const auto* p = reinterpret_cast<const unsigned char*>(b.data() + pos);
    const uint32_t len = p[0] | (p[1] << 8) | (p[2] << 16) | (uint32_t(p[3]) << 24);
    pos += 4;
    if (pos + len > b.size()) {
      *error = path + ": truncated message at byte " + std::to_string(pos);
      return false;
    }
    out->slices.emplace_back(b.data() + pos, len, grpc::Slice::STATIC_SLICE);
    pos += len;
  }
  return true;
}

// One GetFlows call: read the request, write every message, then wait for the client to cancel.
class Streamer : public grpc::ServerGenericBidiReactor {
 public:
  explicit Streamer(const Messages* messages) : messages_(messages) { StartRead(&request_); }

  void OnReadDone(bool ok) override {
    if (!ok) {
      FinishOnce(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no request"));
      return;
    }
    Next();
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      FinishOnce(grpc::Status::CANCELLED);
      return;
    }
    Next();
  }

  void OnCancel() override {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_ = true;
    if (idle_) FinishLocked(grpc::Status::CANCELLED);
  }

  void OnDone() override { delete this; }

 private:
  void Next() {
    if (next_ < messages_->slices.size()) {
      response_ = grpc::ByteBuffer(&messages_->slices[next_++], 1);
      StartWrite(&response_);
      return;
    }
    std::lock_guard<std::mutex> lock(mu_);  // everything sent: a follow stream stays open
    idle_ = true;
    if (cancelled_) FinishLocked(grpc::Status::CANCELLED);
  }

  void FinishOnce(const grpc::Status& status) {
    std::lock_guard<std::mutex> lock(mu_);
    FinishLocked(status);
  }

  void FinishLocked(const grpc::Status& status) {
    if (finished_) return;
    finished_ = true;
    Finish(status);
  }

  const Messages* messages_;
  grpc::ByteBuffer request_;
  grpc::ByteBuffer response_;
  size_t next_ = 0;
  std::mutex mu_;
  bool idle_ = false;
  bool cancelled_ = false;
  bool finished_ = false;
};

class Unimplemented : public grpc::ServerGenericBidiReactor {
 public:
  Unimplemented() { Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "stand-in: GetFlows only")); }
  void OnDone() override { delete this; }
};

class Observer : public grpc::CallbackGenericService {
 public:
  explicit Observer(const Messages* messages) : messages_(messages) {}
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* context) override {
    if (context->method() == kGetFlows) return new Streamer(messages_);
    return new Unimplemented();
  }

 private:
  const Messages* messages_;
};

int Usage() {
  std::cerr << "usage: standin --file PATH [--listen HOST:PORT]" << std::endl;
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string file, listen = "127.0.0.1:0";
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--file" && i + 1 < argc) {
      file = argv[++i];
    } else if (arg == "--listen" && i + 1 < argc) {
      listen = argv[++i];
    } else {
      return Usage();
    }
  }
  if (file.empty()) return Usage();
  Messages messages;
  std::string error;
  if (!Load(file, &messages, &error)) {
    std::cerr << "error: " << error << std::endl;
    return 2;
  }
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);  // before gRPC starts its threads: they inherit it

  Observer service(&messages);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &port);
  builder.RegisterCallbackGenericService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    std::cerr << "error: cannot listen on " << listen << std::endl;
    return 2;
  }
  std::cout << "listening on " << listen.substr(0, listen.rfind(':')) << ":" << port << " ("
            << messages.slices.size() << " messages)" << std::endl;
  int received = 0;
  sigwait(&signals, &received);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  return 0;
}
