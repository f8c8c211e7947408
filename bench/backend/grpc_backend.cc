// The benchmark's gRPC backend: fast enough that the rows measure the proxies, not it.
//
// One process serves, on a cleartext (h2c) port and optionally a TLS port:
//   - bench.echo.Echo/Unary   echoes the request message;
//   - bench.echo.Echo/Stream  sends `count` messages of `size` payload bytes;
//   - eventbroker.v1.EventBroker/Publish and /PublishBatch, through the generic
//     callback API: it reads the wire format of the gateway's broker contract
//     (PublishRequest{CloudEvent event = 1} / PublishBatchRequest{repeated CloudEvent
//     events = 1}, CloudEvent{string id = 1}) and answers PublishResponse{string id = 1}
//     / PublishBatchResponse{repeated string ids = 1} with the events' ids.  Both
//     responses have the same encoding, so one routine serves both methods.
//
// Usage: grpc_backend --port N [--tls-port M --cert PEM --key PEM]
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>

#include "echo.grpc.pb.h"

namespace {

// Bounds on what one Stream call may ask for, so a bad request cannot exhaust memory.
constexpr int kMaxStreamCount = 1 << 20;
constexpr int kMaxStreamSize = 1 << 20;

using bench::echo::EchoMessage;
using bench::echo::StreamRequest;

class StreamWriter : public grpc::ServerWriteReactor<EchoMessage> {
 public:
  StreamWriter(int count, int size) : remaining_(count) {
    message_.set_payload(std::string(static_cast<size_t>(size), 'x'));
    Next();
  }
  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "write failed"));
      return;
    }
    Next();
  }
  void OnDone() override { delete this; }

 private:
  void Next() {
    if (remaining_-- > 0) {
      StartWrite(&message_);
    } else {
      Finish(grpc::Status::OK);
    }
  }
  int remaining_;
  EchoMessage message_;
};

class EchoService final : public bench::echo::Echo::CallbackService {
  grpc::ServerUnaryReactor* Unary(grpc::CallbackServerContext* context,
                                  const EchoMessage* request, EchoMessage* response) override {
    response->set_payload(request->payload());
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerWriteReactor<EchoMessage>* Stream(grpc::CallbackServerContext* /*context*/,
                                                const StreamRequest* request) override {
    if (request->count() < 0 || request->count() > kMaxStreamCount || request->size() < 0 ||
        request->size() > kMaxStreamSize) {
      class Refusal : public grpc::ServerWriteReactor<EchoMessage> {
       public:
        Refusal() { Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "count/size")); }
        void OnDone() override { delete this; }
      };
      return new Refusal;
    }
    return new StreamWriter(request->count(), request->size());
  }
};

// --- the broker: protobuf wire format, read by hand -------------------------------

bool ReadVarint(const std::string& data, size_t* pos, uint64_t* value) {
  *value = 0;
  for (int shift = 0; shift < 64 && *pos < data.size(); shift += 7) {
    uint8_t byte = static_cast<uint8_t>(data[(*pos)++]);
    *value |= static_cast<uint64_t>(byte & 0x7f) << shift;
    if ((byte & 0x80) == 0) return true;
  }
  return false;
}

// Calls `visit(field_number, bytes)` for each length-delimited field; skips the others.
template <typename Visit>
bool ForEachLengthDelimited(const std::string& data, Visit visit) {
  size_t pos = 0;
  while (pos < data.size()) {
    uint64_t tag = 0, length = 0, ignored = 0;
    if (!ReadVarint(data, &pos, &tag)) return false;
    switch (tag & 7) {
      case 0:
        if (!ReadVarint(data, &pos, &ignored)) return false;
        break;
      case 1:
        pos += 8;
        break;
      case 5:
        pos += 4;
        break;
      case 2:
        if (!ReadVarint(data, &pos, &length) || length > data.size() - pos) return false;
        visit(tag >> 3, data.substr(pos, length));
        pos += length;
        break;
      default:
        return false;
    }
    if (pos > data.size()) return false;
  }
  return true;
}

void AppendVarint(std::string* out, uint64_t value) {
  while (value >= 0x80) {
    out->push_back(static_cast<char>((value & 0x7f) | 0x80));
    value >>= 7;
  }
  out->push_back(static_cast<char>(value));
}

// PublishRequest / PublishBatchRequest bytes -> PublishResponse / PublishBatchResponse bytes.
bool AcceptEvents(const std::string& request, std::string* response) {
  bool ok = true;
  bool parsed = ForEachLengthDelimited(request, [&](uint64_t field, const std::string& event) {
    if (field != 1) return;
    std::string id;
    ok = ok && ForEachLengthDelimited(event, [&](uint64_t event_field, const std::string& value) {
      if (event_field == 1) id = value;
    });
    response->push_back(0x0a);  // field 1, length-delimited
    AppendVarint(response, id.size());
    response->append(id);
  });
  return parsed && ok;
}

class PublishReactor : public grpc::ServerGenericBidiReactor {
 public:
  PublishReactor() { StartRead(&request_); }
  void OnReadDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no request message"));
      return;
    }
    std::vector<grpc::Slice> slices;
    std::string request, response;
    if (!request_.Dump(&slices).ok()) {
      Finish(grpc::Status(grpc::StatusCode::INTERNAL, "unreadable request"));
      return;
    }
    for (const grpc::Slice& slice : slices) {
      request.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
    }
    if (!AcceptEvents(request, &response)) {
      Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "malformed request"));
      return;
    }
    grpc::Slice slice(response);
    response_ = grpc::ByteBuffer(&slice, 1);
    StartWriteAndFinish(&response_, grpc::WriteOptions(), grpc::Status::OK);
  }
  void OnDone() override { delete this; }

 private:
  grpc::ByteBuffer request_;
  grpc::ByteBuffer response_;
};

class BrokerService final : public grpc::CallbackGenericService {
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* context) override {
    const std::string& method = context->method();
    if (method == "/eventbroker.v1.EventBroker/Publish" ||
        method == "/eventbroker.v1.EventBroker/PublishBatch") {
      return new PublishReactor;
    }
    return grpc::CallbackGenericService::CreateReactor(context);  // UNIMPLEMENTED
  }
};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    std::cerr << "grpc_backend: cannot read " << path << "\n";
    std::exit(2);
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

}  // namespace

int main(int argc, char** argv) {
  std::string port, tls_port, cert, key;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    if (flag == "--port") port = argv[i + 1];
    else if (flag == "--tls-port") tls_port = argv[i + 1];
    else if (flag == "--cert") cert = argv[i + 1];
    else if (flag == "--key") key = argv[i + 1];
    else {
      std::cerr << "grpc_backend: unknown flag " << flag << "\n";
      return 2;
    }
  }
  if (port.empty()) {
    std::cerr << "usage: grpc_backend --port N [--tls-port M --cert PEM --key PEM]\n";
    return 2;
  }
  EchoService echo;
  BrokerService broker;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:" + port, grpc::InsecureServerCredentials());
  if (!tls_port.empty()) {
    grpc::SslServerCredentialsOptions options;
    options.pem_key_cert_pairs.push_back({ReadFile(key), ReadFile(cert)});
    builder.AddListeningPort("127.0.0.1:" + tls_port, grpc::SslServerCredentials(options));
  }
  builder.RegisterService(&echo);
  builder.RegisterCallbackGenericService(&broker);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server) {
    std::cerr << "grpc_backend: cannot listen on 127.0.0.1:" << port << "\n";
    return 1;
  }
  std::cout << "grpc_backend listening on 127.0.0.1:" << port << std::endl;
  server->Wait();
  return 0;
}
