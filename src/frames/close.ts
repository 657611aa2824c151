import { randomFillSync } from 'node:crypto';

/**
 * Builds a close frame (RFC 6455 §5.5.1) to insert at a frame boundary. Frames toward the upstream are
 * masked with a fresh key, as every client frame must be (§5.3).
 */
export function closeFrame(code: number, reason: string, masked: boolean): Buffer {
  // §5.5: a control frame carries at most 125 bytes: 2 for the code, 123 for the reason.
  let text = Buffer.from(reason, 'utf8');
  if (text.length > 123) {
    // Cut before a UTF-8 continuation byte so the reason stays valid UTF-8 (§5.5.1).
    let end = 123;
    while (end > 0 && (text[end]! & 0xc0) === 0x80) end--;
    text = text.subarray(0, end);
  }
  const length = 2 + text.length;
  const headerLength = masked ? 6 : 2;
  const frame = Buffer.allocUnsafe(headerLength + length);
  frame[0] = 0x88;
  frame[1] = (masked ? 0x80 : 0) | length;
  const payload = frame.subarray(headerLength);
  payload.writeUInt16BE(code, 0);
  text.copy(payload, 2);
  if (masked) {
    const key = frame.subarray(2, 6);
    randomFillSync(key);
    for (let i = 0; i < length; i++) payload[i]! ^= key[i & 3]!;
  }
  return frame;
}
