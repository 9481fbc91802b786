'use strict';
// grpc-js client running the official interop cases (grpc/grpc
// doc/interop-test-descriptions.md, "Client" section) against a TestService.
//
//   node interop_client.js HOST:PORT CASE...      (CASE "all" = every case below)
//
// Prints one JSON line per case: {"case": ..., "ok": true|false, "error": null|"..."}.
// Each case is bounded by CASE_TIMEOUT_MS. Exit code 0 when every case passed, 1 if any
// failed, 2 on a usage error.
const { grpc, loadTesting } = require('./load_protos');

const CASE_TIMEOUT_MS = Number(process.env.WOVE_H2GRPC_GRPCJS_CASE_TIMEOUT_MS || 15000);
const ECHO_INITIAL = 'x-grpc-test-echo-initial';
const ECHO_TRAILING = 'x-grpc-test-echo-trailing-bin';
const INITIAL_VALUE = 'test_initial_metadata_value';
const TRAILING_VALUE = Buffer.from([0xab, 0xab, 0xab]);
const SPECIAL_MESSAGE = '\t\ntest with whitespace\r\nand Unicode BMP ☺ and non-BMP 😈\t\n';
// Not an official case's: a status message with spaces at both ends, which HTTP/2 does not
// allow unencoded at the ends of a field value (RFC 9113 section 8.2.1).
const EDGE_SPACES_MESSAGE = '  leading and trailing spaces  ';
const SIZES = [
  [27182, 31415],
  [8, 9],
  [1828, 2653],
  [45904, 58979],
];

class CaseFailure extends Error {}

function check(condition, message) {
  if (!condition) throw new CaseFailure(message);
}

function payload(size) {
  return { type: 'COMPRESSABLE', body: Buffer.alloc(size) };
}

function allZero(buf) {
  for (let i = 0; i < buf.length; i++) if (buf[i] !== 0) return false;
  return true;
}

function checkBody(response, size, what) {
  check(response && response.payload, `${what}: response has no payload`);
  const body = response.payload.body;
  check(body.length === size, `${what}: payload body is ${body.length} bytes, expected ${size}`);
  check(allZero(body), `${what}: payload body is not all zeros`);
}

function describe(err) {
  if (err && typeof err.code === 'number') {
    return `status ${err.code} (${grpc.status[err.code]}): ${JSON.stringify(err.details)}`;
  }
  return String(err);
}

function unary(client, method, request, metadata) {
  // Resolves {error, response, initial, status}: the outcome with both metadata sets.
  return new Promise((resolve) => {
    const out = { error: null, response: null, initial: null, status: null };
    let pending = 2;
    const done = () => {
      pending -= 1;
      if (pending === 0) resolve(out);
    };
    const call = client[method](request, metadata || new grpc.Metadata(), (err, response) => {
      out.error = err;
      out.response = response;
      done();
    });
    call.on('metadata', (md) => {
      out.initial = md;
    });
    call.on('status', (status) => {
      out.status = status;
      done();
    });
  });
}

// A streaming call's end: {error, status, responses, initial}. `onData(response, call)` may
// write, end or cancel.
function collect(call, onData) {
  return new Promise((resolve) => {
    const out = { error: null, status: null, responses: [], initial: null };
    let ended = false;
    // Done at the status; after an OK status, also after 'end' (every message delivered).
    const maybeDone = () => {
      if (out.status && (out.status.code !== grpc.status.OK || ended)) resolve(out);
    };
    call.on('metadata', (md) => {
      out.initial = md;
    });
    call.on('data', (response) => {
      out.responses.push(response);
      if (onData) onData(response, call);
    });
    call.on('error', (err) => {
      out.error = err;
    });
    call.on('end', () => {
      ended = true;
      maybeDone();
    });
    call.on('status', (status) => {
      out.status = status;
      maybeDone();
    });
  });
}

function expectOk(out, what) {
  check(!out.error, `${what}: failed with ${describe(out.error)}`);
}

function expectCode(out, code, what) {
  check(out.error, `${what}: succeeded, expected ${grpc.status[code]}`);
  check(
    out.error.code === code,
    `${what}: ended with ${describe(out.error)}, expected ${grpc.status[code]}`,
  );
}

function checkEchoedMetadata(out, what) {
  check(out.initial, `${what}: no initial metadata`);
  const initial = out.initial.get(ECHO_INITIAL);
  check(
    initial.length === 1 && initial[0] === INITIAL_VALUE,
    `${what}: initial ${ECHO_INITIAL} is ${JSON.stringify(initial)}`,
  );
  check(out.status, `${what}: no status`);
  const trailing = out.status.metadata.get(ECHO_TRAILING);
  check(
    trailing.length === 1 && Buffer.isBuffer(trailing[0]) && trailing[0].equals(TRAILING_VALUE),
    `${what}: trailing ${ECHO_TRAILING} is ${JSON.stringify(trailing)}`,
  );
}

const CASES = {
  async empty_unary(client) {
    const out = await unary(client, 'EmptyCall', {});
    expectOk(out, 'EmptyCall');
    check(out.response !== null && out.response !== undefined, 'EmptyCall: null response');
  },

  async large_unary(client) {
    const out = await unary(client, 'UnaryCall', {
      response_size: 314159,
      payload: payload(271828),
    });
    expectOk(out, 'UnaryCall');
    checkBody(out.response, 314159, 'UnaryCall');
  },

  async client_streaming(client) {
    let result;
    const done = new Promise((resolve) => {
      const call = client.StreamingInputCall((err, response) => resolve({ err, response }));
      for (const [size] of SIZES) call.write({ payload: payload(size) });
      call.end();
    });
    result = await done;
    check(!result.err, `StreamingInputCall: failed with ${describe(result.err)}`);
    const total = result.response.aggregated_payload_size;
    check(total === 74922, `aggregated_payload_size is ${total}, expected 74922`);
  },

  async server_streaming(client) {
    const call = client.StreamingOutputCall({
      response_parameters: SIZES.map(([, size]) => ({ size })),
    });
    const out = await collect(call);
    expectOk(out, 'StreamingOutputCall');
    check(out.responses.length === 4, `${out.responses.length} responses, expected 4`);
    out.responses.forEach((r, i) => checkBody(r, SIZES[i][1], `response ${i}`));
  },

  async ping_pong(client) {
    const call = client.FullDuplexCall();
    let index = 0;
    const send = () => {
      const [requestSize, responseSize] = SIZES[index];
      call.write({ response_parameters: [{ size: responseSize }], payload: payload(requestSize) });
    };
    const errors = [];
    const outPromise = collect(call, (response) => {
      try {
        checkBody(response, SIZES[index][1], `response ${index}`);
      } catch (e) {
        errors.push(e.message);
      }
      index += 1;
      if (index < SIZES.length) send();
      else call.end();
    });
    send();
    const out = await outPromise;
    expectOk(out, 'FullDuplexCall');
    check(errors.length === 0, errors.join('; '));
    check(out.responses.length === 4, `${out.responses.length} responses, expected 4`);
  },

  async empty_stream(client) {
    const call = client.FullDuplexCall();
    const outPromise = collect(call);
    call.end();
    const out = await outPromise;
    expectOk(out, 'FullDuplexCall');
    check(out.responses.length === 0, `${out.responses.length} responses, expected 0`);
  },

  async cancel_after_begin(client) {
    const result = new Promise((resolve) => {
      const call = client.StreamingInputCall((err, response) => resolve({ err, response }));
      call.cancel();
    });
    const { err } = await result;
    expectCode({ error: err }, grpc.status.CANCELLED, 'StreamingInputCall');
  },

  async cancel_after_first_response(client) {
    const call = client.FullDuplexCall();
    const outPromise = collect(call, (response, c) => c.cancel());
    call.write({ response_parameters: [{ size: 31415 }], payload: payload(27182) });
    const out = await outPromise;
    check(out.responses.length === 1, `${out.responses.length} responses before the cancel`);
    checkBody(out.responses[0], 31415, 'response 0');
    expectCode(out, grpc.status.CANCELLED, 'FullDuplexCall');
  },

  async timeout_on_sleeping_server(client) {
    const call = client.FullDuplexCall({ deadline: Date.now() + 1 });
    const outPromise = collect(call);
    call.write({ payload: payload(27182) });
    const out = await outPromise;
    expectCode(out, grpc.status.DEADLINE_EXCEEDED, 'FullDuplexCall');
  },

  async custom_metadata(client) {
    const metadata = () => {
      const md = new grpc.Metadata();
      md.set(ECHO_INITIAL, INITIAL_VALUE);
      md.set(ECHO_TRAILING, TRAILING_VALUE);
      return md;
    };
    const u = await unary(
      client,
      'UnaryCall',
      { response_size: 314159, payload: payload(271828) },
      metadata(),
    );
    expectOk(u, 'UnaryCall');
    checkBody(u.response, 314159, 'UnaryCall');
    checkEchoedMetadata(u, 'UnaryCall');

    const call = client.FullDuplexCall(metadata());
    const outPromise = collect(call);
    call.write({ response_parameters: [{ size: 314159 }], payload: payload(271828) });
    call.end();
    const out = await outPromise;
    expectOk(out, 'FullDuplexCall');
    check(out.responses.length === 1, `FullDuplexCall: ${out.responses.length} responses`);
    checkBody(out.responses[0], 314159, 'FullDuplexCall');
    checkEchoedMetadata(out, 'FullDuplexCall');
  },

  async status_code_and_message(client) {
    await echoStatus(client, 'test status message', true);
  },

  async special_status_message(client) {
    await echoStatus(client, SPECIAL_MESSAGE, false);
  },

  // Extra (not in the interop spec): spaces at both ends of the status message survive.
  async edge_spaces_status_message(client) {
    await echoStatus(client, EDGE_SPACES_MESSAGE, false);
  },

  async unimplemented_method(client) {
    const out = await unary(client, 'UnimplementedCall', {});
    expectCode(out, grpc.status.UNIMPLEMENTED, 'TestService/UnimplementedCall');
  },

  async unimplemented_service(client, testing, address) {
    const other = new testing.UnimplementedService(address, grpc.credentials.createInsecure());
    try {
      const out = await unary(other, 'UnimplementedCall', {});
      expectCode(out, grpc.status.UNIMPLEMENTED, 'UnimplementedService/UnimplementedCall');
    } finally {
      other.close();
    }
  },
};

async function echoStatus(client, message, alsoDuplex) {
  const status = { code: 2, message };
  const u = await unary(client, 'UnaryCall', { response_status: status });
  expectCode(u, 2, 'UnaryCall');
  check(
    u.error.details === message,
    `UnaryCall: details ${JSON.stringify(u.error.details)}, expected ${JSON.stringify(message)}`,
  );
  if (!alsoDuplex) return;
  const call = client.FullDuplexCall();
  const outPromise = collect(call);
  call.write({ response_status: status });
  call.end();
  const out = await outPromise;
  expectCode(out, 2, 'FullDuplexCall');
  check(
    out.error.details === message,
    `FullDuplexCall: details ${JSON.stringify(out.error.details)}, expected ${JSON.stringify(message)}`,
  );
}

function withTimeout(promise, ms) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new CaseFailure(`timed out after ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function main() {
  const [address, ...names] = process.argv.slice(2);
  if (!address || names.length === 0) {
    console.error(`usage: node interop_client.js HOST:PORT CASE... (${Object.keys(CASES)})`);
    process.exit(2);
  }
  const selected = names.includes('all') ? Object.keys(CASES) : names;
  const unknown = selected.filter((n) => !(n in CASES));
  if (unknown.length) {
    console.error(`unknown case(s): ${unknown.join(', ')}; known: ${Object.keys(CASES)}`);
    process.exit(2);
  }
  const testing = loadTesting();
  let failed = 0;
  for (const name of selected) {
    // A channel per case: one case's broken connection cannot fail the next.
    const client = new testing.TestService(address, grpc.credentials.createInsecure());
    let error = null;
    try {
      await withTimeout(CASES[name](client, testing, address), CASE_TIMEOUT_MS);
    } catch (e) {
      error = e instanceof CaseFailure ? e.message : String((e && e.stack) || e);
    } finally {
      client.close();
    }
    if (error) failed += 1;
    process.stdout.write(`${JSON.stringify({ case: name, ok: error === null, error })}\n`);
  }
  process.exit(failed ? 1 : 0);
}

main();
