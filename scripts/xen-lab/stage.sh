# stage.sh: packs the project under test into one tar for dom0 (host side; sourced after
# lib.sh, not run). Only the runtime files, as `npm install` left them: bin/, dist/,
# package.json, the addon .node and the runtime node_modules/ (dependencies, transitively;
# not the build-only node-addon-api). One file because many small files over 9p are slow
# under emulation; dom0's init unpacks it to /opt/remusdb. Not part of the image cache key.

xl_stage_project() { # xl_stage_project PROJECT_DIR WORK_DIR OUT_TAR (WORK_DIR is removed)
  local src=$1 dst=$2 tar=$3 addon=native-xc/build/Release/remusdb_native.node d
  for d in bin dist package.json "$addon"; do
    [ -e "$src/$d" ] || xl_die "$src/$d is missing: build the project first (npm install)"
  done
  mkdir -p "$dst/native-xc/build/Release" "$dst/node_modules"
  cp -a "$src/bin" "$src/dist" "$src/package.json" "$dst/"
  cp -a "$src/$addon" "$dst/$addon"
  (cd "$src" && node -e '
    const fs = require("fs"), path = require("path"), seen = new Set();
    const visit = (dir) => {
      const deps = JSON.parse(fs.readFileSync(path.join(dir, "package.json"), "utf8")).dependencies || {};
      for (const name of Object.keys(deps)) {
        if (name === "node-addon-api" || seen.has(name)) continue;
        seen.add(name);
        visit(path.join("node_modules", name));
      }
    };
    visit(".");
    console.log([...seen].join("\n"));') | while read -r m; do
      [ -n "$m" ] || continue
      mkdir -p "$dst/node_modules/$(dirname "$m")"
      cp -a "$src/node_modules/$m" "$dst/node_modules/$m"
    done
  [ "${PIPESTATUS[0]}" = 0 ] || xl_die "could not list the project's runtime dependencies"
  tar -cf "$tar" -C "$dst" . && rm -rf "$dst"
}
