// save-to-xl: drives libxenguest's checkpointed (Remus) save of a Xen domain through our
// bindings and callbacks straight into a local `xl migrate-receive -r -e`, as `xl remus`
// does for testing on one host. It proves the Xen part end to end in the lab (callbacks
// on the save thread, suspend/resume, the stream bytes the stock receiver accepts, and
// failover when the stream ends); the Xen adapter builds its replication on the same
// loop. Usage (dom0): node dist/dom0/hypervisor/xen/save-to-xl.js DOMAIN INTERVAL_MS CHECKPOINTS
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { requirePart } from '../../native';
import {
  LIBXL_REC_CHECKPOINT_END,
  LIBXL_REC_LIBXC_CONTEXT,
  RECEIVER_BANNER,
  libxlEmptyRecord,
  libxlStreamHeader,
  xlSavefileHeader,
} from './xl-stream';

interface XenSaveAddon {
  xenDomainInfo(d: string | number): { domid: number };
  xenDomainConfigJson(domid: number): string;
  xenSuspendAsync(domid: number, timeoutMs: number): Promise<void>;
  xenResume(domid: number): void;
  xenSaveCheckpointed(
    domid: number,
    fd: number,
    dispatch: (kind: string, done: (rc: number) => void) => void,
  ): Promise<{ rc: number; errno: number; message: string }>;
  makePipe(): [number, number];
}

const log = (s: string): void => {
  console.error(`${(performance.now() / 1000).toFixed(3)} save-to-xl: ${s}`);
};

async function main(name: string, intervalMs: number, checkpoints: number): Promise<number> {
  const x = requirePart('xen') as unknown as XenSaveAddon;
  const { domid } = x.xenDomainInfo(name);
  const json = x.xenDomainConfigJson(domid);
  const [rfd, wfd] = x.makePipe();
  const rx = spawn('xl', ['migrate-receive', '-r', '-e'], { stdio: [rfd, 'pipe', 'inherit'] });
  fs.closeSync(rfd);
  const banner = await new Promise<string>((resolve, reject) => {
    let got = '';
    rx.stdout!.on('data', (d: Buffer) => {
      got += d.toString('latin1');
      if (got.length >= RECEIVER_BANNER.length) resolve(got);
    });
    rx.once('exit', (c) => reject(new Error(`xl migrate-receive exited ${c} before its banner`)));
  });
  if (!banner.startsWith(RECEIVER_BANNER)) throw new Error(`unexpected receiver banner ${JSON.stringify(banner)}`);
  fs.writeSync(
    wfd,
    Buffer.concat([xlSavefileHeader(json), libxlStreamHeader(), libxlEmptyRecord(LIBXL_REC_LIBXC_CONTEXT)]),
  );
  log(`domain ${name} (id ${domid}): config ${json.length} bytes, receiver ready`);
  let n = 0,
    t0 = 0;
  const pauses: number[] = [];
  const started = performance.now();
  const r = await x.xenSaveCheckpointed(domid, wfd, (kind, done) => {
    try {
      if (kind === 'suspend') {
        t0 = performance.now();
        x.xenSuspendAsync(domid, 10000).then(
          () => done(1),
          (e: Error) => {
            log(`suspend failed: ${e.message}`);
            done(0);
          },
        );
        return;
      }
      if (kind === 'postcopy') {
        x.xenResume(domid);
        pauses.push(performance.now() - t0);
        done(1);
        return;
      }
      // checkpoint: libxc wrote the pages and its CHECKPOINT record; end the libxl checkpoint.
      fs.writeSync(wfd, libxlEmptyRecord(LIBXL_REC_CHECKPOINT_END));
      n++;
      log(`checkpoint ${n} pause ${pauses[pauses.length - 1]?.toFixed(1)} ms`);
      if (n >= checkpoints) {
        done(0);
        return;
      }
      setTimeout(() => done(1), intervalMs);
    } catch (e) {
      log(`${kind} failed: ${(e as Error).message}`);
      done(0);
    }
  });
  const later = pauses.slice(1).sort((a, b) => a - b);
  log(
    `xc_domain_save: ${r.message} (rc ${r.rc}) after ${n} checkpoints ` +
      `in ${((performance.now() - started) / 1000).toFixed(1)} s; pause p50 ` +
      `${later[Math.floor(later.length / 2)]?.toFixed(1)} ms (checkpoints 2..${n})`,
  );
  console.log(`SAVE-TO-XL checkpoints=${n} rc=${r.rc} pause_p50_ms=${later[Math.floor(later.length / 2)]?.toFixed(1)}`);
  // Keep the stream open: the scenario destroys the primary, then closes us (EOF = failover).
  await new Promise<void>((resolve) => process.once('SIGTERM', () => resolve()));
  fs.closeSync(wfd);
  rx.stdout!.resume(); // keep draining: xl must not die of SIGPIPE while it fails over
  await new Promise((resolve) => {
    rx.once('exit', resolve);
    setTimeout(resolve, 60000);
  });
  rx.unref();
  return r.rc === 0 && n >= checkpoints ? 0 : 1;
}

const [name, interval, count] = process.argv.slice(2);
main(name, Number(interval ?? 100), Number(count ?? 10)).then(
  (c) => {
    process.exitCode = c;
  },
  (e: Error) => {
    log(`error: ${e.message}`);
    process.exitCode = 2;
  },
);
