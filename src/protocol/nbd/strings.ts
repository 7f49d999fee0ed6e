// NBD strings (names, descriptions, messages) may not exceed 4096 bytes.

import { MAX_STRING } from './constants.js';

/** UTF-8 bytes of `text`, cut at a character boundary to fit the limit. */
export function limitedString(text: string): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  if (bytes.length <= MAX_STRING) return bytes;
  return Buffer.from(bytes.subarray(0, MAX_STRING).toString('utf8').replace(/\uFFFD+$/, ''), 'utf8');
}
