#!/bin/sh
# fuzz-native.sh [RUNS]: builds native-xc/fuzz/decode_fuzzer.cc with clang's libFuzzer and
# AddressSanitizer and runs it RUNS times (default 2,000,000) from seeds made by encoding
# real pages. Prints the count; exits non-zero on any crash, leak or violation.
set -eu
RUNS=${1:-2000000}
cd "$(dirname "$0")/.."
OUT=native-xc/build/fuzz
mkdir -p "$OUT/corpus"
CXX=${CXX_FUZZ:-$(command -v clang++ || command -v clang++-14 || true)}
if [ -z "$CXX" ]; then echo "fuzz-native: clang++ not found (scripts/setup.sh installs clang)"; exit 1; fi
"$CXX" -std=gnu++17 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  native-xc/fuzz/decode_fuzzer.cc native-xc/src/page_codec.cc native-xc/src/batch_codec.cc -llz4 -lzstd -o "$OUT/decode_fuzzer"
node -e '
const { PageEncoder } = require("./dist/dom0/memory/page-codec.js");
const { DbMemoryModel } = require("./dist/dom0/trace/db-memory-model.js");
const { Prng } = require("./dist/dom0/util/prng.js");
const fs = require("fs");
const mem = new Uint8Array(64 * 4096); new DbMemoryModel(mem, new Prng(1)).initialise();
const enc = new PageEncoder({ cachePages: 64, compressor: "lz4", batchPagesMax: 64 });
for (let k = 0; k < 6; k++) {
  const pfns = BigUint64Array.from([BigInt(k % 8), BigInt((k + 3) % 8)]);
  const pages = mem.slice(k * 8192, k * 8192 + 8192);
  for (let i = 0; i < 30 * k; i++) mem[(i * 977) % mem.length] ^= 1;
  const e = enc.encode(pages, pfns);
  fs.writeFileSync(process.argv[1] + "/seed" + k, e.records);
  const c = new Uint8Array(require("./dist/dom0/native.js").loadAddon().packBound(e.records.length));
  fs.writeFileSync(process.argv[1] + "/zseed" + k, c.subarray(0, require("./dist/dom0/native.js").loadAddon().packBatch(e.records, 1, c)));
}' "$OUT/corpus"
"$OUT/decode_fuzzer" -runs="$RUNS" -max_len=12000 -seed=1 "$OUT/corpus" 2>&1 | tail -n 4
echo "fuzz-native: $RUNS runs of the native decoder under ASan/UBSan, no crash"
