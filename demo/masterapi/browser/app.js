// gRPC-Web and a WebSocket from a plain page, no libraries: what the demo page does.
// The messages of demo/masterapi/protos/demo.proto are (de)serialised by hand: the
// few fields used here are strings, bytes and int32s.
"use strict";

const SERVICE = "/demo.masterapi.v1.Items/";
const logLines = [];
function log(line) {
  logLines.push(line);
  document.getElementById("log").textContent = logLines.join("\n");
}

// --- protobuf, the little of it that is needed ---------------------------------------
function varint(n) {
  const out = [];
  while (n > 0x7f) { out.push((n & 0x7f) | 0x80); n >>>= 7; }
  out.push(n);
  return out;
}
function field(number, wire, bytes) { return [...varint((number << 3) | wire), ...bytes]; }
function stringField(number, text) {
  const bytes = new TextEncoder().encode(text);
  return field(number, 2, [...varint(bytes.length), ...bytes]);
}
function intField(number, value) { return field(number, 0, varint(value)); }
function readItem(bytes) {
  // Item { string id = 1; string name = 2; bytes payload = 3; }
  const item = { id: "", name: "", payload: 0 };
  let pos = 0;
  const next = () => { let n = 0, shift = 0, b; do { b = bytes[pos++]; n |= (b & 0x7f) << shift; shift += 7; } while (b & 0x80); return n; };
  while (pos < bytes.length) {
    const key = next();
    if ((key & 7) === 2) {
      const length = next();
      const value = bytes.slice(pos, pos + length);
      pos += length;
      if (key >> 3 === 1) item.id = new TextDecoder().decode(value);
      else if (key >> 3 === 2) item.name = new TextDecoder().decode(value);
      else if (key >> 3 === 3) item.payload = value.length;
    } else { next(); }
  }
  return item;
}

// --- gRPC-Web ----------------------------------------------------------------------------
function frame(message) {
  const out = new Uint8Array(5 + message.length);
  new DataView(out.buffer).setUint32(1, message.length);
  out.set(message, 5);
  return out;
}

// Calls a method; onMessage gets each message as it arrives; resolves to the status.
async function grpcWeb(method, request, onMessage) {
  const response = await fetch(SERVICE + method, {
    method: "POST",
    headers: { "content-type": "application/grpc-web+proto", "x-grpc-web": "1" },
    body: frame(new Uint8Array(request)),
  });
  const status = { code: response.headers.get("grpc-status"), message: response.headers.get("grpc-message") };
  const reader = response.body.getReader();
  let buffer = new Uint8Array(0);
  for (;;) {
    const { value, done } = await reader.read();
    if (value) {
      const joined = new Uint8Array(buffer.length + value.length);
      joined.set(buffer); joined.set(value, buffer.length); buffer = joined;
    }
    while (buffer.length >= 5) {
      const length = new DataView(buffer.buffer, buffer.byteOffset).getUint32(1);
      if (buffer.length < 5 + length) break;
      const flag = buffer[0], payload = buffer.slice(5, 5 + length);
      buffer = buffer.slice(5 + length);
      if (flag & 0x80) {  // the trailers frame: "name: value\r\n" lines
        for (const line of new TextDecoder().decode(payload).split("\r\n")) {
          const colon = line.indexOf(":");
          if (colon > 0) {
            const name = line.slice(0, colon).trim(), value = line.slice(colon + 1).trim();
            if (name === "grpc-status") status.code = value;
            if (name === "grpc-message") status.message = decodeURIComponent(value);
          }
        }
      } else {
        onMessage(payload);
      }
    }
    if (done) break;
  }
  return status;
}

// --- WebSocket ------------------------------------------------------------------------------
function echo(text) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`wss://${location.host}/api/ws/echo`);
    ws.onopen = () => ws.send(text);
    ws.onmessage = (event) => { resolve(event.data); ws.close(1000); };
    ws.onerror = () => reject(new Error("WebSocket error"));
  });
}

async function main() {
  const result = { protocol: performance.getEntriesByType("navigation")[0].nextHopProtocol };
  log(`page loaded over ${result.protocol}`);
  let unary = null;
  const unaryStatus = await grpcWeb("GetItem", [...stringField(1, "42"), ...intField(2, 5)],
    (m) => { unary = readItem(m); });
  result.unary = { status: unaryStatus.code, item: unary };
  log(`GetItem -> ${JSON.stringify(unary)} (grpc-status ${unaryStatus.code})`);
  const streamed = [];
  const streamStatus = await grpcWeb("WatchItems", intField(1, 3),
    (m) => { streamed.push(readItem(m).id); log(`WatchItems message ${streamed.length}`); });
  result.stream = { status: streamStatus.code, ids: streamed };
  // Behaviour { int32 fail_code = 2; string fail_message = 3; } in GetItemRequest's field 3.
  const behaviour = [...intField(2, 5), ...stringField(3, "no such item")];
  const missing = await grpcWeb("GetItem",
    [...stringField(1, "x"), ...field(3, 2, [...varint(behaviour.length), ...behaviour])],
    () => {});
  result.error = missing;
  log(`GetItem with a failure -> grpc-status ${missing.code}: ${missing.message}`);
  result.echo = await echo("hello over a WebSocket");
  log(`WebSocket echo -> ${result.echo}`);
  return result;
}

window.demoDone = main().then(
  (result) => { const el = document.getElementById("result"); el.textContent = JSON.stringify(result, null, 2); el.dataset.done = "ok"; return result; },
  (error) => { log(`failed: ${error}`); document.getElementById("result").dataset.done = "failed"; return { failed: String(error) }; },
);
