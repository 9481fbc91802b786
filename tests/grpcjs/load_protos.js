'use strict';
// Loads grpc.testing (the official interop protos) for the grpc-js helpers.
//
// The protos live in tests/interop/protos (grpc/testing/{test,messages,empty}.proto);
// WOVE_H2GRPC_INTEROP_PROTOS names another root with the same layout.
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT =
  process.env.WOVE_H2GRPC_INTEROP_PROTOS || path.join(__dirname, '..', 'interop', 'protos');

function loadTesting() {
  const definition = protoLoader.loadSync('grpc/testing/test.proto', {
    includeDirs: [PROTO_ROOT],
    keepCase: true, // field names as in the .proto (response_size, not responseSize)
    longs: Number,
    enums: String,
    defaults: true, // absent scalars read as 0 / '' / empty bytes, absent messages as null
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).grpc.testing;
}

module.exports = { grpc, loadTesting, PROTO_ROOT };
