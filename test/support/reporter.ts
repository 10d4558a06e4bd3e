// reporter: mocha's spec reporter plus one plain closing line, `N passed, N failed`, which
// is what CI reads (mocha's own summary is not). Once the run has ended, a process kept alive by
// something a failed test left open (a socket to a frozen etcd held CI for 25 minutes) names what
// holds it and exits non-zero after RUN_END_GRACE_MS, instead of waiting for CI's timeout.
import Mocha from 'mocha';

/** How long the process may outlive the run's end: children and sockets closing, not a hang. */
const RUN_END_GRACE_MS = 60_000;

function exitIfStillAlive(failed: number): void {
  const timer = setTimeout(() => {
    const held = process.getActiveResourcesInfo().join(', ');
    process.stdout.write(`mocha: still running ${RUN_END_GRACE_MS} ms after the run ended, held by: ${held}\n`);
    const code = Math.min(Math.max(failed, 1), 255);
    process.on('exit', () => {
      process.exitCode = code; // after mocha's own exit handler, which would set the failure count (maybe 0)
    });
    process.exit(code);
  }, RUN_END_GRACE_MS);
  timer.unref(); // fires only when something else keeps the process alive
}

class CiSummaryReporter extends Mocha.reporters.Spec {
  constructor(runner: Mocha.Runner, options: Mocha.MochaOptions) {
    super(runner, options);
    let passed = 0,
      failed = 0,
      skipped = 0;
    runner.on(Mocha.Runner.constants.EVENT_TEST_PASS, () => {
      passed++;
    });
    runner.on(Mocha.Runner.constants.EVENT_TEST_FAIL, () => {
      failed++;
    });
    runner.on(Mocha.Runner.constants.EVENT_TEST_PENDING, () => {
      skipped++;
    });
    runner.once(Mocha.Runner.constants.EVENT_RUN_END, () => {
      process.stdout.write(`\n${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}\n`);
      exitIfStillAlive(failed);
    });
  }
}

export = CiSummaryReporter;
