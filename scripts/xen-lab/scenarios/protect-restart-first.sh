#!/bin/bash
# protect-restart-first: the protect-restart scenario (scenarios/protect-restart.sh) with the
# kill inside the first checkpoint, while the domU is suspended and nothing is committed: the
# backup does not fail over, and the restarted protect's first save resumes the domU and
# protects it again.
# xenlab-bound: 1200
export PROTECT_KILL_FIRST=1 LAB_SCENARIO_NAME=protect-restart-first
. /lab/scenarios/protect-restart.sh
