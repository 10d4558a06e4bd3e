#!/bin/bash
# protect-restart-alone: the protect-restart scenario (scenarios/protect-restart.sh) where the
# backup's host dies with protect: killed while the domU is suspended for a checkpoint, the
# restarted protect finds nobody to answer; after its hold (3 heartbeat timeouts) the domU
# runs again, unprotected, from where it stopped.
# xenlab-bound: 1200
export PROTECT_BACKUP_GONE=1 LAB_SCENARIO_NAME=protect-restart-alone
. /lab/scenarios/protect-restart.sh
