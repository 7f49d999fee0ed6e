// The control socket's listener: a UNIX socket (mode 0600 unless told
// otherwise, claimed as the other listeners claim theirs) where each
// connection sends framed requests and gets framed responses in the same
// order (one command at a time per connection; several connections run
// side by side). Nothing a client sends can stop the server: bad frames
// get error responses, a frame over the limit ends that connection after
// its error response, a client that goes away mid-frame or mid-command is
// forgotten. Every command is logged with its outcome.

import net from 'node:net';
import type { Logger } from 'pino';
import { ControlError, decodeValue, encodeFrame, FrameReader, parseRequest, requestId, type ControlResponse } from '../../protocol/control/codec.js';
import { listen } from '../listeners.js';
import { runCommand, type ControlContext } from './commands.js';

/** Requests one connection may have waiting behind the one running. */
const MAX_QUEUED = 64;

export class ControlSocket {
  private readonly server = net.createServer((socket) => this.accept(socket));
  private readonly sockets = new Set<net.Socket>();

  constructor(
    private readonly context: ControlContext,
    private readonly log: Logger,
  ) {}

  async listen(path: string, mode: number): Promise<void> {
    await listen(this.server, { kind: 'unix', path, mode });
    this.log.info({ control: path }, 'control socket listening');
  }

  /** Stops listening and ends every control connection. */
  close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  private accept(socket: net.Socket): void {
    this.sockets.add(socket);
    const reader = new FrameReader();
    const queue: Buffer[] = [];
    let running = false;
    const fail = (id: ControlResponse['id'], err: unknown): ControlResponse => {
      const e = err instanceof ControlError ? err : new ControlError('failed', (err as Error).message);
      return { id, ok: false, error: { code: e.code, message: e.message } };
    };
    const send = (response: ControlResponse): void => {
      if (socket.destroyed) return;
      let frame: Buffer;
      try {
        frame = encodeFrame(response);
      } catch (err) {
        frame = encodeFrame(fail(response.id, err));
      }
      socket.write(frame);
    };
    const next = async (): Promise<void> => {
      if (running) return;
      running = true;
      while (queue.length > 0 && !socket.destroyed) {
        const afterResponse: (() => void)[] = [];
        try {
          send(await this.handle(queue.shift()!, fail, afterResponse));
        } finally {
          for (const fn of afterResponse) fn();
        }
      }
      running = false;
    };
    socket.on('data', (chunk: Buffer) => {
      let frames: Buffer[];
      try {
        frames = reader.push(chunk);
      } catch (err) {
        this.log.warn({ err: (err as Error).message }, 'control connection closed: bad frame');
        socket.end(encodeFrame(fail(null, err)));
        socket.removeAllListeners('data');
        return;
      }
      if (queue.length + frames.length > MAX_QUEUED) {
        socket.end(encodeFrame(fail(null, new ControlError('too-large', `more than ${MAX_QUEUED} requests waiting: send fewer at once`))));
        socket.removeAllListeners('data');
        return;
      }
      queue.push(...frames);
      void next();
    });
    socket.on('error', () => socket.destroy());
    socket.on('close', () => {
      this.sockets.delete(socket);
      queue.length = 0;
      if (reader.partial > 0) this.log.debug({ bytes: reader.partial }, 'control client left mid-frame');
    });
  }

  private async handle(body: Buffer, fail: (id: ControlResponse['id'], err: unknown) => ControlResponse, afterResponse: (() => void)[]): Promise<ControlResponse> {
    let value: unknown;
    try {
      value = decodeValue(body);
      const request = parseRequest(value);
      const result = await runCommand(request.command, request.args, this.context, (fn) => afterResponse.push(fn));
      this.log.info({ command: request.command, args: request.args }, 'control command done');
      return { id: request.id, ok: true, result: result ?? null };
    } catch (err) {
      const response = fail(requestId(value), err);
      this.log.warn({ error: (response as { error: unknown }).error }, 'control command failed');
      return response;
    }
  }
}
