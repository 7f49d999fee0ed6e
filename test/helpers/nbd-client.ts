// The raw NBD client lives in src/fuzz/ so that the fuzzers ship it too
// (vblk/fuzz); tests import it from here as before.

export { RawClient, replyError, type OptionReply, type Reply } from '../../src/fuzz/nbd-client.js';
