'use strict';
// grpc-js server implementing grpc.testing.TestService per the official interop spec
// (grpc/grpc doc/interop-test-descriptions.md, "Server" section): EmptyCall, UnaryCall,
// StreamingOutputCall, StreamingInputCall, FullDuplexCall, HalfDuplexCall, with the
// Echo Metadata (x-grpc-test-echo-initial, x-grpc-test-echo-trailing-bin) and Echo Status
// (response_status) features and ResponseParameters.interval_us.
//
//   node interop_server.js [--bind HOST:PORT]      (default 127.0.0.1:0)
//
// Prints `READY <port>` once it serves; stops on SIGTERM/SIGINT, or when its parent exits.
const { grpc, loadTesting } = require('./load_protos');

const ECHO_INITIAL = 'x-grpc-test-echo-initial';
const ECHO_TRAILING = 'x-grpc-test-echo-trailing-bin';

function parseArgs(argv) {
  const args = { bind: '127.0.0.1:0' };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--bind') args.bind = argv[++i];
    else throw new Error(`unknown argument ${argv[i]}`);
  }
  return args;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Sends the echoed initial metadata now and returns the trailers to end the call with.
function echoMetadata(call) {
  const initial = call.metadata.get(ECHO_INITIAL);
  if (initial.length > 0) {
    const md = new grpc.Metadata();
    md.set(ECHO_INITIAL, initial[0]);
    call.sendMetadata(md);
  }
  const trailers = new grpc.Metadata();
  const trailing = call.metadata.get(ECHO_TRAILING);
  if (trailing.length > 0) trailers.set(ECHO_TRAILING, trailing[0]);
  return trailers;
}

// The status a request asks for (Echo Status), or null for OK.
function requestedStatus(request, trailers) {
  const st = request.response_status;
  if (st && st.code !== 0) return { code: st.code, details: st.message, metadata: trailers };
  return null;
}

function payload(size) {
  return { type: 'COMPRESSABLE', body: Buffer.alloc(size) };
}

function checkType(request) {
  if (request.response_type && request.response_type !== 'COMPRESSABLE') {
    return { code: grpc.status.INVALID_ARGUMENT, details: 'unsupported response_type' };
  }
  return null;
}

// Writes the responses of one StreamingOutputCallRequest, honouring interval_us.
async function writeResponses(call, request) {
  for (const params of request.response_parameters) {
    if (params.interval_us > 0) await sleep(params.interval_us / 1000);
    if (call.cancelled) return;
    call.write({ payload: payload(params.size) });
  }
}

const service = {
  EmptyCall(call, callback) {
    const trailers = echoMetadata(call);
    callback(null, {}, trailers);
  },

  UnaryCall(call, callback) {
    const trailers = echoMetadata(call);
    const request = call.request;
    const error = requestedStatus(request, trailers) || checkType(request);
    if (error) {
      callback(error, null, trailers);
      return;
    }
    callback(null, { payload: payload(request.response_size) }, trailers);
  },

  StreamingOutputCall(call) {
    const trailers = echoMetadata(call);
    const request = call.request;
    const error = requestedStatus(request, trailers) || checkType(request);
    if (error) {
      call.emit('error', error);
      return;
    }
    writeResponses(call, request).then(
      () => call.end(trailers),
      (err) => call.emit('error', { code: grpc.status.INTERNAL, details: String(err) }),
    );
  },

  StreamingInputCall(call, callback) {
    const trailers = echoMetadata(call);
    let total = 0;
    call.on('data', (request) => {
      total += request.payload ? request.payload.body.length : 0;
    });
    call.on('end', () => callback(null, { aggregated_payload_size: total }, trailers));
    call.on('error', () => {});
  },

  FullDuplexCall(call) {
    const trailers = echoMetadata(call);
    let chain = Promise.resolve();
    let finished = false;
    const fail = (error) => {
      if (finished) return;
      finished = true;
      call.emit('error', error);
    };
    call.on('data', (request) => {
      chain = chain.then(async () => {
        if (finished) return; // after an echoed status, further requests are not processed
        const error = requestedStatus(request, trailers) || checkType(request);
        if (error) {
          fail(error);
          return;
        }
        await writeResponses(call, request);
      });
    });
    call.on('end', () => {
      chain.then(
        () => {
          if (finished) return;
          finished = true;
          call.end(trailers);
        },
        (err) => fail({ code: grpc.status.INTERNAL, details: String(err) }),
      );
    });
    call.on('error', () => {});
  },

  HalfDuplexCall(call) {
    const trailers = echoMetadata(call);
    const requests = [];
    call.on('data', (request) => requests.push(request));
    call.on('end', async () => {
      for (const request of requests) {
        const error = requestedStatus(request, trailers);
        if (error) {
          call.emit('error', error);
          return;
        }
        await writeResponses(call, request);
      }
      call.end(trailers);
    });
    call.on('error', () => {});
  },
};

function main() {
  const args = parseArgs(process.argv.slice(2));
  const testing = loadTesting();
  const server = new grpc.Server();
  server.addService(testing.TestService.service, service);
  server.bindAsync(args.bind, grpc.ServerCredentials.createInsecure(), (err, port) => {
    if (err) {
      console.error(`interop_server: bind ${args.bind} failed: ${err.message}`);
      process.exit(2);
    }
    process.stdout.write(`READY ${port}\n`);
  });
  const stop = () => {
    server.forceShutdown();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  // A test run that dies without stopping us leaves no server behind: exit once orphaned.
  const parent = process.ppid;
  setInterval(() => {
    if (process.ppid !== parent) stop();
  }, 1000).unref();
}

main();
