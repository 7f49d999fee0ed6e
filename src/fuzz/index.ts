// vblk/fuzz: property-based NBD fuzzing for vblk and for any NBD server.
// Arbitraries for every message (arbitraries.ts), the disk and protocol
// model (model.ts), a checking client (session.ts, nbd-client.ts), the
// model-based suite (suite.ts) and the hostile-bytes property (hostile.ts).
// fuzz/README.md shows how to use them from another project.

export * from './arbitraries.js';
export { DiskModel, expectFor, errnoName, commandLabel, flagList, type Expectation, type Level, type RequestShape, type Terms } from './model.js';
export { RawClient, replyError, type OptionReply, type Reply } from './nbd-client.js';
export { Session, PLAIN_HANDSHAKE, describeHandshake, type HandshakeVariant, type Outcome } from './session.js';
export { runModelSuite, commandsArbitrary, probe, type Finding, type Probe, type SuiteOptions, type SuiteResult } from './suite.js';
export { hostileCase, runHostile, describeHostile, HOSTILE_STATES, type HostileCase, type HostileState } from './hostile.js';
export { parseNbdUri, formatNbdUri, type Endpoint, type Target } from '../client/uri.js';
export { Violation, isViolation } from './violation.js';
