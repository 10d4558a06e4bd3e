// until-stopped: how a long-running command (protect, backup) waits for its end and always
// runs its stop path exactly once. Three ways in:
//   - SIGINT / SIGTERM (the operator, systemd, `--seconds`);
//   - the service ends by itself (`ended` resolves: the backup took over and fenced this
//     copy) — the stop path runs and the exit status is EXIT_FENCED;
//   - nothing is left to run (Node's 'beforeExit'): signal listeners do not keep the event
//     loop alive, so a service whose last handle closed would otherwise end the process
//     silently with its promise pending and skip the stop path (the Xen lab saw exactly
//     that: a fenced `protect` gone before SIGTERM, its sch_plug/IFB left behind).
// Errors of the stop path are logged, never thrown: the process ends either way. A second
// signal while stopping meets no listener: its default action ends the process at once.

/** Exit status of a protect process whose domain was taken over by its backup. */
export const EXIT_FENCED = 3;

export interface UntilStoppedOptions {
  /** Resolves (with a reason for the log) when the service has ended by itself. */
  ended?: Promise<string>;
  log: (line: string) => void;
}

export function untilStopped(onStop: () => Promise<void>, opts: UntilStoppedOptions): Promise<void> {
  return new Promise((resolve) => {
    let stopping = false;
    const stop = (why: string): void => {
      if (stopping) return;
      stopping = true;
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      process.off('beforeExit', onIdle);
      if (why) opts.log(why);
      const keepAlive = setInterval(() => {}, 2 ** 30); // the stop path may wait on unref'd timers
      onStop()
        .catch((e: Error) => opts.log(`stopping: ${e.message}`))
        .finally(() => {
          clearInterval(keepAlive);
          resolve();
        });
    };
    const onSignal = (): void => stop('');
    const onIdle = (): void => stop('nothing left to run: stopping');
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    process.on('beforeExit', onIdle);
    opts.ended?.then((why) => {
      process.exitCode = EXIT_FENCED;
      stop(why);
    });
  });
}
