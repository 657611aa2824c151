/// <reference lib="dom" />
import { readFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { SignJWT } from 'jose';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestGuard, type TestGuard } from './helpers/guard.js';
import { startUpstream, type Upstream } from './helpers/upstream.js';

// A real Chromium (Debian's, never a downloaded one) connects through ws-guard the way a web app would.
const SECRET = 'browser-test-secret-long-enough-for-hs256-0123456789';
const CLIENT_JS = readFileSync(new URL('./fixtures/browser/client.js', import.meta.url), 'utf8');

function mint(ttlSeconds: number): Promise<string> {
  return new SignJWT({ sub: 'browser-user' })
    .setProtectedHeader({ alg: 'HS256' })
    .setExpirationTime(Math.floor(Date.now() / 1000) + ttlSeconds)
    .sign(new TextEncoder().encode(SECRET));
}

const PAGE = `<!doctype html><title>ws-guard test</title>
<script type="module">import { connect } from '/client.js'; window.connect = connect;</script>`;

/** Serves the test page, the client module and a token endpoint, like the web app in front of ws-guard. */
async function pageServer(): Promise<{ origin: string; close(): Promise<void> }> {
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    if (url.pathname === '/client.js') {
      res.writeHead(200, { 'Content-Type': 'text/javascript' }).end(CLIENT_JS);
    } else if (url.pathname === '/token') {
      res.writeHead(200, { 'Content-Type': 'text/plain' }).end(await mint(Number(url.searchParams.get('ttl') ?? '60')));
    } else {
      res.writeHead(200, { 'Content-Type': 'text/html' }).end(PAGE);
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    origin: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

/** test/fixtures/browser/client.js, as the page sees it. */
type Connect = (url: string, options: {
  getToken: () => Promise<string>;
  protocols?: string[];
  onOpen?: (socket: WebSocket) => void;
  onMessage?: (data: string, socket: WebSocket) => void;
  onClose?: (event: CloseEvent) => void;
}) => { stop(): void };

let upstream: Upstream;
let guard: TestGuard;
let allowed: Awaited<ReturnType<typeof pageServer>>;
let foreign: Awaited<ReturnType<typeof pageServer>>;
let browser: Browser;

beforeAll(async () => {
  upstream = await startUpstream();
  allowed = await pageServer();
  foreign = await pageServer();
  guard = await startTestGuard({
    upstream: upstream.url,
    origins: [allowed.origin],
    auth: { jwt: { secret: SECRET, algorithms: ['HS256'], requiredClaims: ['sub'] } },
  });
  browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

afterAll(async () => {
  await browser?.close();
  await guard?.close();
  await allowed?.close();
  await foreign?.close();
  await upstream?.stop();
});

async function pageAt(origin: string): Promise<Page> {
  const page = await browser.newPage();
  await page.goto(`${origin}/`);
  await page.waitForFunction(() => 'connect' in window);
  return page;
}

/** In the page: connect with a token from /token, send messages, collect what happens. */
function exchange(page: Page, wsUrl: string, protocols: string[], messages: string[]) {
  return page.evaluate(
    async ({ wsUrl, protocols, messages }) => {
      const { connect } = window as unknown as { connect: Connect };
      return new Promise<{ protocol: string; echoes: string[]; closeCode: number | null; error: boolean }>((resolve) => {
        const echoes: string[] = [];
        let protocol = '';
        let error = false;
        const client = connect(wsUrl, {
          getToken: () => fetch('/token?ttl=60').then((r) => r.text()),
          protocols,
          onOpen: (socket: WebSocket) => {
            protocol = socket.protocol;
            for (const m of messages) socket.send(m);
          },
          onMessage: (data: string) => {
            echoes.push(data);
            if (echoes.length === messages.length) {
              client.stop();
              resolve({ protocol, echoes, closeCode: null, error });
            }
          },
          onClose: (event: CloseEvent) => {
            if (event.code !== 1000) resolve({ protocol, echoes, closeCode: event.code, error });
          },
        });
      });
    },
    { wsUrl, protocols, messages },
  );
}

describe('Chromium through ws-guard', () => {
  it('exchanges messages with the token in Sec-WebSocket-Protocol; the upstream picks no protocol', async () => {
    const page = await pageAt(allowed.origin);
    const result = await exchange(page, `${guard.wsUrl}/ws/echo`, [], ['one', 'two', 'three']);
    expect(result).toEqual({ protocol: 'bearer', echoes: ['one', 'two', 'three'], closeCode: null, error: false });
    await page.close();
  });

  it('exchanges messages when the upstream picks one of the page\'s own protocols', async () => {
    const page = await pageAt(allowed.origin);
    const result = await exchange(page, `${guard.wsUrl}/ws/echo?proto=chat`, ['chat'], ['hello']);
    expect(result).toEqual({ protocol: 'chat', echoes: ['hello'], closeCode: null, error: false });
    await page.close();
  });

  it('fails from a page on a disallowed origin', async () => {
    const page = await pageAt(foreign.origin);
    const result = await exchange(page, `${guard.wsUrl}/ws/echo`, [], ['never']);
    // A refused handshake surfaces in a browser as close code 1006 and nothing else.
    expect(result).toMatchObject({ echoes: [], closeCode: 1006 });
    expect(guard.logs.some((l) => l.code === 'ORIGIN_DENIED')).toBe(true);
    await page.close();
  });

  it('sees close 4001 when its token expires and reconnects with a fresh one', async () => {
    const page = await pageAt(allowed.origin);
    const result = await page.evaluate(async (wsUrl) => {
      const { connect } = window as unknown as { connect: Connect };
      return new Promise<{ closes: number[]; echo: string }>((resolve) => {
        const closes: number[] = [];
        let ttl = 2;
        const client = connect(wsUrl, {
          getToken: () => fetch(`/token?ttl=${ttl}`).then((r) => r.text()),
          onOpen: (socket: WebSocket) => {
            if (closes.length > 0) socket.send('after refresh');
            ttl = 60;
          },
          onMessage: (data: string) => {
            client.stop();
            resolve({ closes, echo: data });
          },
          onClose: (event: CloseEvent) => closes.push(event.code),
        });
      });
    }, `${guard.wsUrl}/ws/echo`);
    expect(result).toEqual({ closes: [4001], echo: 'after refresh' });
    await page.close();
  });
});
