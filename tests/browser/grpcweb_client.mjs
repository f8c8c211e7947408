// A gRPC-Web client from the JavaScript ecosystem against the gateway:
// @connectrpc/connect's gRPC-Web transport, run under Node.
//
//   node grpcweb_client.mjs BASE_URL FLAVOUR HTTP_VERSION
//
// FLAVOUR "binary": connect-node's createGrpcWebTransport (HTTP/1.1 or HTTP/2).
// FLAVOUR "text": connect-web's createGrpcWebTransport over fetch (HTTP/1.1), its
// requests and responses carried as application/grpc-web-text (base64): connect
// speaks the binary flavour only, so a fetch wrapper does the base64 both ways,
// padding each request and decoding the response stream as it arrives.
// The CA of the gateway's certificate comes from NODE_EXTRA_CA_CERTS.
// Prints one JSON object with what each call returned.
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport as nodeTransport } from "@connectrpc/connect-node";
import { createGrpcWebTransport as webTransport } from "@connectrpc/connect-web";
import {
  BehaviourSchema,
  GetItemRequestSchema,
  ItemSchema,
  Items,
  WatchItemsRequestSchema,
} from "./demo_pb.mjs";

const [baseUrl, flavour, httpVersion] = process.argv.slice(2);

function b64decoder() {
  // Base64 padded per chunk: decode whole 4-character quanta, a padded one included.
  let pending = "";
  return (text) => {
    pending += text.replace(/\s+/g, "");
    const usable = pending.length - (pending.length % 4);
    const whole = pending.slice(0, usable);
    pending = pending.slice(usable);
    const parts = [];
    for (let start = 0; start < whole.length; ) {
      const pad = whole.indexOf("=", start);
      const end = pad < 0 ? whole.length : (Math.floor(pad / 4) + 1) * 4;
      parts.push(Buffer.from(whole.slice(start, end), "base64"));
      start = end;
    }
    return Buffer.concat(parts);
  };
}

async function textFetch(input, init) {
  const headers = new Headers(init.headers);
  headers.set("content-type", "application/grpc-web-text");
  headers.set("accept", "application/grpc-web-text");
  const body = Buffer.from(await new Response(init.body).arrayBuffer()).toString("base64");
  const response = await fetch(input, { ...init, headers, body, duplex: undefined });
  const type = response.headers.get("content-type") || "";
  if (!type.startsWith("application/grpc-web-text")) {
    return response;
  }
  const decode = b64decoder();
  const text = new TextDecoder();
  const decoded = response.body.pipeThrough(new TransformStream({
    transform(chunk, controller) {
      const bytes = decode(text.decode(chunk, { stream: true }));
      if (bytes.length) controller.enqueue(new Uint8Array(bytes));
    },
  }));
  const outHeaders = new Headers(response.headers);
  outHeaders.set("content-type", type.replace("grpc-web-text", "grpc-web"));
  return new Response(decoded, { status: response.status, headers: outHeaders });
}

const transport = flavour === "text"
  ? webTransport({ baseUrl, fetch: textFetch, useBinaryFormat: true })
  : nodeTransport({ baseUrl, httpVersion, useBinaryFormat: true });
const client = createClient(Items, transport);

function failure(err) {
  const e = ConnectError.from(err);
  const details = e.findDetails(ItemSchema).map((item) => item.name);
  return { code: e.code, codeName: Code[e.code], message: e.rawMessage, details };
}

const out = {};
const item = await client.getItem(
  create(GetItemRequestSchema, { id: "7", payloadSize: 3 }),
  { headers: { "x-echo-who": "node" }, onHeader: (h) => { out.echoHeader = h.get("x-echo-who"); },
    onTrailer: (t) => { out.echoTrailer = t.get("x-trailer-who"); } },
);
out.unary = { id: item.id, name: item.name, payload: item.payload.length };

out.stream = [];
for await (const watched of client.watchItems(
  create(WatchItemsRequestSchema, { count: 3, payloadSize: 2 }),
)) {
  out.stream.push(watched.id);
}

try {
  await client.getItem(create(GetItemRequestSchema, {
    id: "x",
    behaviour: create(BehaviourSchema, { failCode: 5, failMessage: "no such item", failDetail: "d1" }),
  }));
  out.error = null;
} catch (err) {
  out.error = failure(err);
}

try {
  await client.getItem(
    create(GetItemRequestSchema, { id: "s", behaviour: create(BehaviourSchema, { delayMs: 5000 }) }),
    { timeoutMs: 300 },
  );
  out.deadline = null;
} catch (err) {
  out.deadline = failure(err);
}

const abort = new AbortController();
try {
  const calls = client.watchItems(
    create(WatchItemsRequestSchema, { count: 2, behaviour: create(BehaviourSchema, { delayMs: 4000 }) }),
    { signal: abort.signal },
  );
  setTimeout(() => abort.abort(), 300);
  for await (const _ of calls) { /* the first item comes after the abort */ }
  out.cancel = null;
} catch (err) {
  out.cancel = failure(err);
}

console.log(JSON.stringify(out));
