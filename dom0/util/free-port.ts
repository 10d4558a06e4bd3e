// free-port: a TCP port on 127.0.0.1 that was free a moment ago (the demo and the benchmarks
// start a backup on it; a race with another process is possible and fails loudly at listen).
import * as net from 'node:net';

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}
